"""Reading Megatron-LM torch_dist checkpoints: offline into ``{global key: full tensor}`` with no
process group and no model (:func:`read_checkpoint`), or into a live model at any layout
(:func:`load_megatron_checkpoint`)."""

from __future__ import annotations

import argparse
import os
from typing import Tuple

import torch

from megatron_gatednorm.checkpoint.arch import Arch, arch_from_args
from megatron_gatednorm.checkpoint.common_state import read_common, read_metadata
from megatron_gatednorm.checkpoint.errors import CheckpointError
from megatron_gatednorm.checkpoint.layout import Tensors
from megatron_gatednorm.checkpoint.paths import check_format, iteration_dir


def _is_model_key(key: str) -> bool:
    return not (key.startswith(("optimizer", "rng_state")) or "_extra_state" in key)


def read_checkpoint(load_dir) -> Tuple[Arch, argparse.Namespace, Tensors]:
    """Offline read of a torch_dist checkpoint: ``(arch, args, {global key: full tensor})``."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint import load as dcp_load
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    path, _ = iteration_dir(load_dir)
    check_format(path)
    metadata = read_metadata(path)
    common = read_common(path, metadata)
    arch = arch_from_args(common["args"], where=str(path))
    tensors = {
        key: torch.empty(md.size, dtype=md.properties.dtype)
        for key, md in metadata.state_dict_metadata.items()
        if isinstance(md, TensorStorageMetadata) and _is_model_key(key)
    }
    if not tensors:
        raise CheckpointError(f"{path}: the checkpoint holds no model tensors")
    storage = {os.path.basename(getattr(v, "relative_path", "")) for v in (metadata.storage_data or {}).values()}
    missing = sorted(f for f in storage if f and not (path / f).is_file())
    if missing:
        raise CheckpointError(f"{path}: shard file(s) missing: {', '.join(missing)}")
    try:
        dcp_load(tensors, storage_reader=FileSystemReader(str(path)), no_dist=True)
    except (Exception, CheckpointException) as e:  # noqa: BLE001 - truncated/corrupt shards raise assorted errors
        msg = str(e).strip().splitlines()
        raise CheckpointError(
            f"{path}: a tensor shard failed to read ({type(e).__name__}: {msg[-1] if msg else ''})"
        ) from None
    return arch, common["args"], tensors


def load_megatron_checkpoint(model, load_dir) -> None:
    """Load a Megatron-LM torch_dist checkpoint into a live model (any layout)."""
    from megatron.core import dist_checkpointing

    path, _ = iteration_dir(load_dir)
    check_format(path)
    state = dist_checkpointing.load(dict(model=model.sharded_state_dict()), str(path))
    model.load_state_dict(state["model"])
