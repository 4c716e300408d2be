"""Reading Megatron-LM torch_dist checkpoints: offline into ``{global key: full tensor}`` with no
process group and no model (:func:`read_checkpoint`), or into a live model at any layout
(:func:`load_megatron_checkpoint`).

An iteration folder the project wrote carries an integrity manifest (:mod:`.manifest`): both
readers check it first (``verify=False`` skips that); one without (written by Megatron-LM
itself) is read as before."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Dict, Set, Tuple

import torch

from megatron_gatednorm.checkpoint.arch import Arch, arch_from_args
from megatron_gatednorm.checkpoint.common_state import read_common, read_metadata
from megatron_gatednorm.checkpoint.errors import CheckpointError
from megatron_gatednorm.checkpoint.layout import Tensors
from megatron_gatednorm.checkpoint.manifest import verify_manifest
from megatron_gatednorm.checkpoint.paths import check_format, iteration_dir


def _is_model_key(key: str) -> bool:
    return not (key.startswith(("optimizer", "rng_state")) or "_extra_state" in key)


def verify_iteration(path: Path) -> bool:
    """Check an iteration folder against its manifest (False: it has none). The checkpoint
    files at its top level (``.metadata``, ``*.distcp``, ``common.pt``, ``metadata.json``) must be
    listed in it."""
    used = [p.name for p in Path(path).iterdir()
            if p.is_file() and (p.suffix == ".distcp" or p.name in (".metadata", "common.pt", "metadata.json"))]
    return verify_manifest(path, used)


def _files_of_keys(metadata) -> Dict[str, Set[str]]:
    """``{storage file: {tensor key whose chunks it holds}}``."""
    out: Dict[str, Set[str]] = {}
    for index, info in (metadata.storage_data or {}).items():
        name = os.path.basename(getattr(info, "relative_path", "") or "")
        if name:
            out.setdefault(name, set()).add(index.fqn)
    return out


def _failing_shards(path: Path, metadata, tensors: Tensors) -> list:
    """The shard files whose tensors fail to load on their own (after a load of all failed)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint import load as dcp_load
    from torch.distributed.checkpoint.api import CheckpointException

    bad = []
    for name, keys in sorted(_files_of_keys(metadata).items()):
        subset = {k: torch.empty_like(tensors[k]) for k in keys if k in tensors}
        if not subset:
            continue
        try:
            dcp_load(subset, storage_reader=FileSystemReader(str(path)), no_dist=True)
        except (Exception, CheckpointException):  # noqa: BLE001 - the same assorted errors
            bad.append(name)
    return bad


def read_checkpoint(load_dir, verify: bool = True) -> Tuple[Arch, argparse.Namespace, Tensors]:
    """Offline read of a torch_dist checkpoint: ``(arch, args, {global key: full tensor})``.
    With ``verify`` the files are first checked against the folder's manifest, if it has one."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint import load as dcp_load
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    path, _ = iteration_dir(load_dir)
    check_format(path)
    if verify:
        verify_iteration(path)
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
    storage = set(_files_of_keys(metadata))
    missing = sorted(f for f in storage if f and not (path / f).is_file())
    if missing:
        raise CheckpointError(f"{path}: shard file(s) missing: {', '.join(missing)}")
    try:
        dcp_load(tensors, storage_reader=FileSystemReader(str(path)), no_dist=True)
    except (Exception, CheckpointException) as e:  # noqa: BLE001 - truncated/corrupt shards raise assorted errors
        msg = str(e).strip().splitlines()
        shards = _failing_shards(path, metadata, tensors)
        named = f" ({', '.join(shards)})" if shards else ""
        raise CheckpointError(
            f"{path}: a tensor shard{named} failed to read ({type(e).__name__}: {msg[-1] if msg else ''})"
        ) from None
    return arch, common["args"], tensors


def load_megatron_checkpoint(model, load_dir, verify: bool = True) -> None:
    """Load a Megatron-LM torch_dist checkpoint into a live model (any layout); with ``verify``
    the files are first checked against the folder's manifest, if it has one — by rank 0 alone
    when torch.distributed is initialised (every rank reads the same shared folder; hashing it
    once per rank would read it world-size times), which tells the others the outcome."""
    import torch.distributed as dist
    from megatron.core import dist_checkpointing

    path, _ = iteration_dir(load_dir)
    check_format(path)
    if verify:
        _verify_on_rank0(path, dist if dist.is_available() and dist.is_initialized() else None)
    state = dist_checkpointing.load(dict(model=model.sharded_state_dict()), str(path))
    model.load_state_dict(state["model"])


def _verify_on_rank0(path: Path, dist) -> None:
    """:func:`verify_iteration` on rank 0 (on the only process without ``dist``); every rank raises
    the same :class:`CheckpointError` if it failed."""
    if dist is None:
        verify_iteration(path)
        return
    problem = [None]
    if dist.get_rank() == 0:
        try:
            verify_iteration(path)
        except CheckpointError as e:
            problem[0] = str(e)
    dist.broadcast_object_list(problem, src=0)
    if problem[0] is not None:
        raise CheckpointError(problem[0])
