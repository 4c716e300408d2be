"""Megatron-LM checkpoints (torch_dist) from and into models built with the plugin's specs.

Layout, as ``megatron.training`` writes and ``--load`` reads it::

    <dir>/latest_checkpointed_iteration.txt      # "<iteration>"
    <dir>/iter_0000100/                          # dist_checkpointing (torch_dist)
        common.pt                                # args (argparse.Namespace), iteration, checkpoint_version
        metadata.json, .metadata, __*_*.distcp   # model tensors under their global ShardedTensor keys

Model tensors are layout-independent (stacked over layers, un-sharded over TP/EP), so a
checkpoint saved at one TP/PP/EP layout loads at any other. The small trainer adds its own
per-rank optimizer/data state under ``iter_*/small_trainer/`` (layout-specific).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

TRACKER = "latest_checkpointed_iteration.txt"
CHECKPOINT_VERSION = 3.0


def iteration_dir(root, iteration: int) -> Path:
    return Path(root) / f"iter_{iteration:07d}"


def latest_iteration(root) -> Optional[int]:
    """The iteration in ``root``'s tracker file, or None when there is no checkpoint."""
    tracker = Path(root) / TRACKER
    if not tracker.exists():
        return None
    text = tracker.read_text().strip()
    if text == "release":
        return 0
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"invalid checkpoint tracker {tracker}: {text!r} is not an iteration number") from None


def save_model(root, iteration: int, model, args: argparse.Namespace) -> Path:
    """Write ``model`` into ``iter_<iteration>/`` (all ranks call this). The checkpoint is not
    visible to ``--load`` until :func:`commit` updates the tracker."""
    from megatron.core import dist_checkpointing

    path = iteration_dir(root, iteration)
    if dist.get_rank() == 0:
        path.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    state = dict(
        args=args, iteration=iteration, checkpoint_version=CHECKPOINT_VERSION,
        model=model.sharded_state_dict(),
    )
    dist_checkpointing.save(state, str(path))
    return path


def commit(root, iteration: int) -> None:
    """Point the tracker at ``iteration`` once every rank has finished writing (atomic rename)."""
    dist.barrier()
    if dist.get_rank() == 0:
        tmp = Path(root) / (TRACKER + ".tmp")
        tmp.write_text(str(iteration))
        os.replace(tmp, Path(root) / TRACKER)
    dist.barrier()


def save_checkpoint(root, iteration: int, model, args: argparse.Namespace) -> Path:
    """:func:`save_model` then :func:`commit`."""
    path = save_model(root, iteration, model, args)
    commit(root, iteration)
    return path


def load_args(path) -> argparse.Namespace:
    """The ``args`` saved in a checkpoint iteration folder (no process group needed)."""
    common = Path(path) / "common.pt"
    if not common.exists():
        raise ValueError(f"invalid Megatron checkpoint {path}: no common.pt (not a torch_dist checkpoint?)")
    state = torch.load(common, map_location="cpu", weights_only=False)
    if "args" not in state:
        raise ValueError(f"invalid Megatron checkpoint {path}: common.pt holds no 'args'")
    return state["args"]


def load_model(path, model) -> None:
    """Load a checkpoint iteration folder's model tensors into ``model`` (any layout)."""
    from megatron.core import dist_checkpointing

    state = dist_checkpointing.load(dict(model=model.sharded_state_dict()), str(path))
    model.load_state_dict(state["model"])
