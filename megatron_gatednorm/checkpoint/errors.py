"""The one exception of the checkpoint package."""


class CheckpointError(ValueError):
    """A checkpoint or HF folder that cannot be converted; the message names file and problem."""
