"""Where a Megatron-LM checkpoint's parts live: the tracker file and the iteration folders."""

from __future__ import annotations

from pathlib import Path
from typing import Tuple

from megatron_gatednorm.checkpoint.errors import CheckpointError

TRACKER = "latest_checkpointed_iteration.txt"
CHECKPOINT_VERSION = 3.0


def iteration_path(root, iteration: int) -> Path:
    return Path(root) / f"iter_{iteration:07d}"


def iteration_dir(load_dir) -> Tuple[Path, int]:
    """``(iter_XXXXXXX dir, iteration)`` of a Megatron-LM save dir (or an iteration dir itself)."""
    root = Path(load_dir)
    if not root.is_dir():
        raise CheckpointError(f"{root}: no such checkpoint directory")
    tracker = root / TRACKER
    if tracker.is_file():
        text = tracker.read_text().strip()
        if text == "release":
            return root / "release", 0
        try:
            iteration = int(text)
        except ValueError:
            raise CheckpointError(f"{tracker}: expected an iteration number or 'release', got {text!r}") from None
        path = iteration_path(root, iteration)
        if not path.is_dir():
            raise CheckpointError(f"{tracker} names iteration {iteration} but {path} does not exist")
        return path, iteration
    if (root / "common.pt").is_file() or (root / ".metadata").is_file():
        return root, -1
    raise CheckpointError(f"{root}: not a Megatron checkpoint (no {TRACKER}, common.pt or .metadata)")


def check_format(path: Path) -> None:
    if any(path.glob("mp_rank_*")):
        raise CheckpointError(
            f"{path}: legacy per-rank torch checkpoint (mp_rank_*/); only torch_dist is supported: "
            "re-save it with Megatron-LM --ckpt-format torch_dist (--ckpt-convert-format torch_dist)"
        )
    if not (path / ".metadata").is_file():
        raise CheckpointError(f"{path}: missing .metadata; expected a torch_dist checkpoint")

