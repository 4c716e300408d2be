"""The one exception of the checkpoint package, and how its messages list names."""

from typing import Iterable


class CheckpointError(ValueError):
    """A checkpoint or HF folder that cannot be converted; the message names file and problem."""


def capped_listing(names: Iterable[str], limit: int = 8) -> str:
    """``a, b, c and N more``: at most ``limit`` names in one message."""
    names = list(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
