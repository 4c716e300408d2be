"""Writing Megatron-LM torch_dist checkpoints: from a live model on every rank
(:func:`save_model` + :func:`commit`), or offline from global tensors (:func:`write_checkpoint`)."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import torch.distributed as dist

from megatron_gatednorm.checkpoint.layout import Tensors
from megatron_gatednorm.checkpoint.manifest import write_manifest
from megatron_gatednorm.checkpoint.paths import CHECKPOINT_VERSION, TRACKER, iteration_path
from megatron_gatednorm.cpu_shim import cuda_calls_on_cpu

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
    """Point the tracker at ``iteration`` once every rank has finished writing (atomic rename).
    Before the tracker moves, rank 0 records every file of the iteration folder (size + sha256)
    in its integrity manifest (:mod:`.manifest`), which the readers check."""
    dist.barrier()
    if dist.get_rank() == 0:
        write_manifest(iteration_path(root, iteration), "megatron-checkpoint")
        tmp = Path(root) / (TRACKER + ".tmp")
        tmp.write_text(str(iteration))
        os.replace(tmp, Path(root) / TRACKER)
    dist.barrier()


def save_checkpoint(root, iteration: int, model, args: argparse.Namespace) -> Path:
    """:func:`save_model` then :func:`commit`."""
    path = save_model(root, iteration, model, args)
    commit(root, iteration)
    return path


@contextlib.contextmanager
def _process_group() -> Iterator[None]:
    """A 1-process gloo group if none exists (dist_checkpointing.save needs one)."""
    if dist.is_initialized():
        yield
        return
    store_dir = tempfile.mkdtemp(prefix="mgn-store-")
    dist.init_process_group("gloo", store=dist.FileStore(os.path.join(store_dir, "store"), 1), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()
        shutil.rmtree(store_dir, ignore_errors=True)


def write_checkpoint(tensors: Tensors, args: argparse.Namespace, out_dir: Path, iteration: int = 0) -> None:
    """Write global tensors (dist-ckpt keys) as a Megatron-LM torch_dist checkpoint into the
    existing empty folder ``out_dir``, from this single process (with the iteration folder's
    integrity manifest, as :func:`commit` writes it)."""
    from megatron.core.dist_checkpointing import ShardedTensor

    sharded = {
        key: ShardedTensor.from_rank_offsets(key, t.contiguous(), replica_id=0)
        for key, t in sorted(tensors.items())
    }
    sharded.update(_linear_extra_states(tensors, hybrid=bool(getattr(args, "hybrid_layer_pattern", None))))
    with _process_group(), cuda_calls_on_cpu():
        save_sharded(out_dir, iteration, sharded, args)
        commit(out_dir, iteration)


_LINEAR = re.compile(
    r"^(decoder\.layers\.(?:(\d+)\.)?.*(?:linear_qkv|linear_proj|linear_fc1|linear_fc2|in_proj|out_proj))\.weight(?:\.query)?$"
)


def _linear_extra_states(tensors: Tensors, hybrid: bool = False) -> dict:
    """The ``_extra_state`` objects Megatron's local linear layers checkpoint (``None`` for
    the local spec), one per stacked layer/expert, e.g. ``decoder.layers.mlp.linear_fc1.
    _extra_state/shard_1_2``; loading into a model fails if they are missing. A ``HybridModel``
    (``hybrid``) also checkpoints its output layer's (megatron-core 0.19.2, tied embeddings; ``GPTModel`` does not)."""
    from megatron.core.dist_checkpointing import ShardedObject

    out = {}
    if hybrid:
        obj = ShardedObject("output_layer._extra_state", None, (1,), (0,), replica_id=0)
        out[obj.unique_key] = obj
    for key, t in tensors.items():
        m = _LINEAR.match(key)
        if not m:
            continue
        stacked = (0 if m.group(2) is not None else 1) + (1 if ".experts.experts." in key else 0)
        shape = tuple(t.shape[:stacked]) or (1,)
        name = f"{m.group(1)}._extra_state"
        for offset in itertools.product(*(range(n) for n in shape)):
            obj = ShardedObject(name, None, shape, offset, replica_id=0)
            out[obj.unique_key] = obj
    return out
