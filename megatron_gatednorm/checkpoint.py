"""Megatron-LM checkpoints (torch_dist) from and into models built with the plugin's specs.

Layout, as ``megatron.training`` writes and ``--load`` reads it::

    <dir>/latest_checkpointed_iteration.txt      # "<iteration>"
    <dir>/iter_0000100/                          # dist_checkpointing (torch_dist)
        common.pt                                # args (argparse.Namespace), iteration, checkpoint_version
        metadata.json, .metadata, __*_*.distcp   # model tensors under their global ShardedTensor keys

(megatron-core >= 0.19 writes no ``common.pt``: the same dict is the ``common_state`` object in
the torch_dist files.)

Model tensors are layout-independent (stacked over layers, un-sharded over TP/EP), so a
checkpoint saved at one TP/PP/EP layout loads at any other. The small trainer adds its own
per-rank optimizer/data state under ``iter_*/small_trainer/`` (layout-specific). This module
writes checkpoints from live models; reading them (offline, or into a live model) and the
``args`` ⇄ architecture mapping live in :mod:`megatron_gatednorm.convert.megatron_io`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
import torch.distributed as dist

TRACKER = "latest_checkpointed_iteration.txt"
CHECKPOINT_VERSION = 3.0


def iteration_path(root, iteration: int) -> Path:
    return Path(root) / f"iter_{iteration:07d}"


def save_sharded(root, iteration: int, sharded: dict, args: argparse.Namespace) -> Path:
    """Write a model's sharded state dict (``ShardedTensor``/``ShardedObject`` values) into
    ``iter_<iteration>/`` with Megatron-LM's common state (all ranks call this). The checkpoint is
    not visible to ``--load`` until :func:`commit` updates the tracker."""
    from megatron.core import dist_checkpointing

    path = iteration_path(root, iteration)
    if dist.get_rank() == 0:
        path.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    state = dict(args=args, iteration=iteration, checkpoint_version=CHECKPOINT_VERSION, model=sharded)
    dist_checkpointing.save(state, str(path))
    return path


def save_model(root, iteration: int, model, args: argparse.Namespace) -> Path:
    """:func:`save_sharded` of a live model."""
    return save_sharded(root, iteration, model.sharded_state_dict(), args)


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
