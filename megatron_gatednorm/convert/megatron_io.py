"""Megatron-LM checkpoints on disk: the saved ``args`` ⇄ (ModelShape, NormConfig), and
torch_dist tensors read/written offline on CPU.

Layout (what Megatron-LM writes and ``--load`` reads)::

    <dir>/latest_checkpointed_iteration.txt      # "0"
    <dir>/iter_0000000/common.pt                 # args (argparse.Namespace), iteration, checkpoint_version
    <dir>/iter_0000000/.metadata, __*_*.distcp   # torch_dist tensors under their ShardedTensor keys
    <dir>/iter_0000000/metadata.json

(megatron-core >= 0.19 writes no common.pt: the same dict is the ``common_state`` object inside
the torch_dist files; both are read, and :func:`write_checkpoint` writes whichever the installed
megatron-core writes.)

torch_dist tensors are stored once at their global (unsharded) shape, so reading needs no
process group and no model (``torch.distributed.checkpoint`` with the file's metadata), and a
checkpoint written from one process loads at any TP/PP/EP. Decoder tensors of homogeneous
models are stacked over layers (``decoder.layers.X [L, ...]``), otherwise stored per layer
(``decoder.layers.{i}.X``); routed experts are stacked over experts
(``...mlp.experts.experts.linear_fc1.weight [(L,) E, ...]``) whatever the in-memory layout
(SequentialMLP, TEGroupedMLP, GroupedMLP); Gated DeltaNet's ``in_proj.weight`` is stored in six
parts (``.query .key .value .z .beta .alpha``) and its ``conv1d.weight`` in three. :func:`unstack`
/ :func:`stack` convert between that and the per-layer, per-expert, unsplit names of
:mod:`megatron_gatednorm.convert.mapping`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import pickle
import re
import shutil
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

import torch

from megatron_gatednorm.args import norm_config_dests, norm_config_from_args
from megatron_gatednorm.checkpoint import TRACKER, commit, iteration_path, save_sharded
from megatron_gatednorm.config import NormConfig
from megatron_gatednorm.cpu_shim import cuda_calls_on_cpu
from megatron_gatednorm.model_shape import (
    MEGATRON_FLAGS,
    ModelShape,
    check_supported,
    extras_from_flags,
    flags_from_extras,
    flags_from_shape,
    megatron_defaults,
    missing_required,
    shape_from_flags,
)

Tensors = Dict[str, torch.Tensor]


class CheckpointError(ValueError):
    """A checkpoint or HF folder that cannot be converted; the message names file and problem."""


_EXTRA = {row.arch: row for row in MEGATRON_FLAGS if row.arch}


@dataclass(frozen=True)
class Arch:
    """Everything the converters need to rebuild a model: Megatron's fields beyond ModelShape
    (defaults: Megatron-LM's, from :data:`~megatron_gatednorm.model_shape.MEGATRON_FLAGS`)."""

    shape: ModelShape
    norm_config: NormConfig
    norm_epsilon: float = _EXTRA["norm_epsilon"].default
    zero_centered_gamma: bool = _EXTRA["zero_centered_gamma"].default
    rotary_base: float = float(_EXTRA["rotary_base"].default)
    rotary_percent: float = _EXTRA["rotary_percent"].default
    moe_router_pre_softmax: bool = _EXTRA["moe_router_pre_softmax"].default
    dtype: torch.dtype = torch.float32

    def replace(self, **changes) -> "Arch":
        return dataclasses.replace(self, **changes)

    def extras(self) -> dict:
        """``{field: value}`` of the fields beyond the shape that Megatron flags set."""
        return {name: getattr(self, name) for name in _EXTRA}

    def transformer_config_overrides(self) -> dict:
        """``model.transformer_config`` overrides reproducing these fields."""
        overrides = {row.config: getattr(self, name) for name, row in _EXTRA.items() if row.config}
        return dict(overrides, params_dtype=self.dtype)


# -- args ---------------------------------------------------------------------------------

def megatron_args(
    arch: Arch,
    tensor_model_parallel_size: int = 1,
    pipeline_model_parallel_size: int = 1,
    expert_model_parallel_size: int = 1,
    vocab_size: Optional[int] = None,
    tokenizer_type: Optional[str] = None,
    **extra,
) -> argparse.Namespace:
    """The ``args`` Namespace Megatron-LM saves in ``common.pt`` for this model (Megatron's arg
    names plus the plugin flags' dests), at the given parallel layout."""
    s = arch.shape
    ns = megatron_defaults()  # every flag of the table, by dest
    ns.update(flags_from_shape(s))
    ns.update(flags_from_extras(arch.extras()))  # 0.19's names and the older ones
    ns.update(
        vocab_size=vocab_size or s.vocab_size,
        padded_vocab_size=s.vocab_size,
        # as Megatron-LM's validate_args leaves them
        num_query_groups=s.query_groups,
        kv_channels=s.head_dim,
        moe_ffn_hidden_size=(s.moe_ffn_hidden_size or s.ffn_hidden_size) if s.num_experts else None,
        use_rotary_position_embeddings=s.position_embedding_type == "rope",
        seq_length=s.max_position_embeddings,
        # megatron.training compares tokenizer_type (with a vocab file) when loading without --finetune
        tokenizer_type=tokenizer_type,
        moe_grouped_gemm=False,
        transformer_impl="local",
        tensor_model_parallel_size=tensor_model_parallel_size,
        pipeline_model_parallel_size=pipeline_model_parallel_size,
        expert_model_parallel_size=expert_model_parallel_size,
        ckpt_format="torch_dist",
        use_dist_ckpt=True,
        params_dtype=arch.dtype,
        bf16=arch.dtype == torch.bfloat16,
        fp16=arch.dtype == torch.float16,
    )
    ns.update(norm_config_dests(arch.norm_config))
    ns.update(extra)
    return argparse.Namespace(**ns)


def arch_from_args(args, where: str = "common.pt") -> Arch:
    """Rebuild the architecture from a saved ``args`` Namespace (vocab = padded_vocab_size).
    Absent args take Megatron-LM's defaults; values the plugin does not support are refused
    (:func:`~megatron_gatednorm.model_shape.check_supported`)."""
    values = vars(args)
    missing = missing_required(values) + (["padded_vocab_size"] if values.get("padded_vocab_size") is None else [])
    if missing:
        raise CheckpointError(f"{where}: args has no {missing[0]!r}; expected a Megatron-LM checkpoint's args")
    try:
        check_supported(values)
        shape = shape_from_flags(values, vocab_size=int(values["padded_vocab_size"]))
        nc = norm_config_from_args(args)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: {e}") from None
    extras = extras_from_flags(values)
    dtype = getattr(args, "params_dtype", None)
    if not isinstance(dtype, torch.dtype):
        dtype = torch.bfloat16 if getattr(args, "bf16", False) else torch.float16 if getattr(args, "fp16", False) else torch.float32
    return Arch(
        shape=shape,
        norm_config=nc,
        norm_epsilon=float(extras["norm_epsilon"]),
        zero_centered_gamma=bool(extras["zero_centered_gamma"]),
        rotary_base=float(extras["rotary_base"]),
        rotary_percent=float(extras["rotary_percent"]),
        moe_router_pre_softmax=bool(extras["moe_router_pre_softmax"]),
        dtype=dtype,
    )


# -- locating and reading -----------------------------------------------------------------

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


def _check_format(path: Path) -> None:
    if any(path.glob("mp_rank_*")):
        raise CheckpointError(
            f"{path}: legacy per-rank torch checkpoint (mp_rank_*/); only torch_dist is supported: "
            "re-save it with Megatron-LM --ckpt-format torch_dist (--ckpt-convert-format torch_dist)"
        )
    if not (path / ".metadata").is_file():
        raise CheckpointError(f"{path}: missing .metadata; expected a torch_dist checkpoint")


class _Unknown:
    """Stand-in for a class in saved ``args`` that this environment's megatron-core lacks
    (e.g. an enum added in a newer release): the converters never read those fields."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<{type(self).__module__}.{type(self).__name__} from a newer release: {self.args}>"


class _LenientUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except (AttributeError, ImportError):
            return type(name, (_Unknown,), {"__module__": module})


_lenient_pickle = types.ModuleType("mgn_lenient_pickle")
_lenient_pickle.Unpickler = _LenientUnpickler
_lenient_pickle.load = lambda f, **kw: _LenientUnpickler(f, **kw).load()


def _load_pickled(f):
    """``torch.load`` of saved args that tolerates classes missing here (other megatron-core)."""
    return torch.load(f, map_location="cpu", weights_only=False, pickle_module=_lenient_pickle)


# megatron-core >= 0.19 stores the common (non-sharded) state, ``args`` included, as this one
# ShardedObject inside the torch_dist files; older releases wrote it to ``common.pt``
_COMMON_STATE_KEY = "common_state/shard_0_1"


def _metadata(path: Path):
    """The torch_dist ``.metadata`` of an iteration dir (one read)."""
    from torch.distributed.checkpoint import FileSystemReader

    try:
        return FileSystemReader(str(path)).read_metadata()
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path / '.metadata'}: cannot be read ({type(e).__name__}: {e})") from None


def _read_common_state_object(path: Path, metadata):
    import io

    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint import load as dcp_load
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    class _RawBytes(DefaultLoadPlanner):  # keep the bytes: DCP's own torch.load is not lenient
        def load_bytes(self, read_item, value):
            raw[read_item.dest_index.fqn] = value.read()

    if _COMMON_STATE_KEY not in metadata.state_dict_metadata:
        raise CheckpointError(
            f"{path}: no common.pt and no {_COMMON_STATE_KEY!r} in the torch_dist files "
            "(they hold the model's args); expected a checkpoint saved by Megatron-LM"
        )
    raw = {}
    try:
        dcp_load({_COMMON_STATE_KEY: io.BytesIO()}, storage_reader=FileSystemReader(str(path)),
                 planner=_RawBytes(), no_dist=True)
        loaded = _load_pickled(io.BytesIO(raw[_COMMON_STATE_KEY]))
    except Exception as e:  # noqa: BLE001 - truncated/corrupt files raise assorted errors
        raise CheckpointError(f"{path}: the common state cannot be read ({type(e).__name__}: {e})") from None
    return loaded[0] if isinstance(loaded, (list, tuple)) else loaded


def read_common(path: Path, metadata=None) -> dict:
    """The common state (``args``, ``iteration``, ...) of a torch_dist iteration dir, from
    ``common.pt`` (megatron-core <= 0.18, and :func:`write_checkpoint` there) or the torch_dist
    files (``metadata``: their already read ``.metadata``, if the caller has it)."""
    where = path / "common.pt"
    if where.is_file():
        try:
            common = _load_pickled(where)
        except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
            raise CheckpointError(f"{where}: cannot be read ({type(e).__name__}: {e})") from None
    else:
        where = path / f"{_COMMON_STATE_KEY} in .metadata"
        common = _read_common_state_object(path, metadata if metadata is not None else _metadata(path))
    if not isinstance(common, dict) or "args" not in common:
        raise CheckpointError(f"{where}: no 'args'; expected a checkpoint saved by Megatron-LM")
    return common


def _is_model_key(key: str) -> bool:
    return not (key.startswith(("optimizer", "rng_state")) or "_extra_state" in key)


def read_checkpoint(load_dir) -> Tuple[Arch, argparse.Namespace, Tensors]:
    """Offline read of a torch_dist checkpoint: ``(arch, args, {global key: full tensor})``."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint import load as dcp_load
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    path, _ = iteration_dir(load_dir)
    _check_format(path)
    metadata = _metadata(path)
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


# -- per-layer / per-expert names ---------------------------------------------------------

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")


def unstack(tensors: Tensors, arch: Arch) -> Tensors:
    """Global dist-ckpt tensors → per-layer/per-expert names ``decoder.layers.{i}.…``,
    ``….mlp.experts.{e}.linear_fc1.weight``."""
    out: Tensors = {}
    L = arch.shape.num_layers
    for key, t in tensors.items():
        per_layer = []
        if key.startswith("decoder.layers.") and not _LAYER.match(key):
            if t.shape[0] != L:
                raise CheckpointError(f"tensor {key}: stacked over {t.shape[0]} layers, args say num_layers={L}")
            rest = key[len("decoder.layers."):]
            per_layer = [(f"decoder.layers.{i}.{rest}", t[i]) for i in range(L)]
        else:
            per_layer = [(key, t)]
        for name, tensor in per_layer:
            m = re.match(r"^(decoder\.layers\.\d+\.mlp\.experts\.)experts\.(.+)$", name)
            if m:
                for e in range(tensor.shape[0]):
                    out[f"{m.group(1)}{e}.{m.group(2)}"] = tensor[e]
            else:
                out[name] = tensor
    return _join_gated_delta_net_parts(out)


# Megatron's split of Gated DeltaNet tensors in dist checkpoints (GatedDeltaNet.sharded_state_dict)
_GDN_PARTS = {
    "self_attention.in_proj.weight": ("query", "key", "value", "z", "beta", "alpha"),
    "self_attention.conv1d.weight": ("query", "key", "value"),
    "self_attention.conv1d.bias": ("query", "key", "value"),
}
_GDN_PART = re.compile(r"^(decoder\.layers\.\d+\.(self_attention\.(?:in_proj|conv1d)\.(?:weight|bias)))\.(\w+)$")


def _gdn_part_rows(shape: ModelShape) -> Dict[str, int]:
    qk = shape.linear_key_head_dim * shape.linear_num_key_heads
    v = shape.linear_value_head_dim * shape.linear_num_value_heads
    heads = shape.linear_num_value_heads
    return dict(query=qk, key=qk, value=v, z=v, beta=heads, alpha=heads)


def _join_gated_delta_net_parts(tensors: Tensors) -> Tensors:
    out: Tensors = {}
    parts: Dict[Tuple[str, str], Dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        m = _GDN_PART.match(key)
        if m and m.group(2) in _GDN_PARTS:
            parts.setdefault((m.group(1), m.group(2)), {})[m.group(3)] = t
        else:
            out[key] = t
    for (key, suffix), by_part in parts.items():
        order = _GDN_PARTS[suffix]
        if sorted(by_part) != sorted(order):
            raise CheckpointError(f"tensor {key}: parts {sorted(by_part)}, expected {list(order)}")
        out[key] = torch.cat([by_part[name] for name in order], dim=0)
    return out


def _split_gated_delta_net_parts(tensors: Tensors, shape: ModelShape) -> Tensors:
    out: Tensors = {}
    rows = _gdn_part_rows(shape)
    for key, t in tensors.items():
        m = _LAYER.match(key)
        order = _GDN_PARTS.get(m.group(2)) if m else None
        if order is None:
            out[key] = t
            continue
        sizes = [rows[name] for name in order]
        if sum(sizes) != t.shape[0]:
            raise CheckpointError(f"tensor {key}: {t.shape[0]} rows, the Gated DeltaNet shape needs {sum(sizes)}")
        for name, part in zip(order, t.split(sizes, dim=0)):
            out[f"{key}.{name}"] = part
    return out


def non_homogeneous_layers(shape: ModelShape) -> bool:
    """Megatron's rule (TransformerBlock.sharded_state_dict) for per-layer keys."""
    for freq in (shape.moe_layer_freq if shape.num_experts else 1, shape.linear_attention_freq):
        if isinstance(freq, list) or (isinstance(freq, int) and freq > 1):
            return True
    return False


def stack(tensors: Tensors, arch: Arch) -> Tensors:
    """Inverse of :func:`unstack`: per-layer/per-expert names → dist-ckpt global keys."""
    grouped: Dict[str, Dict[int, torch.Tensor]] = {}
    out: Tensors = {}
    for name, t in _split_gated_delta_net_parts(tensors, arch.shape).items():
        m = re.match(r"^(decoder\.layers\.\d+\.mlp\.experts\.)(\d+)\.(.+)$", name)
        if m:
            grouped.setdefault(f"{m.group(1)}experts.{m.group(3)}", {})[int(m.group(2))] = t
        else:
            out[name] = t
    for key, by_expert in grouped.items():
        out[key] = torch.stack([by_expert[e] for e in range(len(by_expert))])
    if non_homogeneous_layers(arch.shape):
        return out
    layered: Dict[str, Dict[int, torch.Tensor]] = {}
    flat: Tensors = {}
    for name, t in out.items():
        m = _LAYER.match(name)
        if m:
            layered.setdefault(f"decoder.layers.{m.group(2)}", {})[int(m.group(1))] = t
        else:
            flat[name] = t
    for key, by_layer in layered.items():
        flat[key] = torch.stack([by_layer[i] for i in range(arch.shape.num_layers)])
    return flat


# -- writing ------------------------------------------------------------------------------

@contextlib.contextmanager
def atomic_output_dir(out, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``out``; rename it to ``out`` on success, delete it on error."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise CheckpointError(f"{out}: output folder already exists (pass --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def _process_group() -> Iterator[None]:
    """A 1-process gloo group if none exists (dist_checkpointing.save needs one)."""
    import torch.distributed as dist

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
    existing empty folder ``out_dir``, from this single process."""
    from megatron.core.dist_checkpointing import ShardedTensor

    sharded = {
        key: ShardedTensor.from_rank_offsets(key, t.contiguous(), replica_id=0)
        for key, t in sorted(tensors.items())
    }
    sharded.update(_linear_extra_states(tensors))
    with _process_group(), cuda_calls_on_cpu():
        save_sharded(out_dir, iteration, sharded, args)
        commit(out_dir, iteration)


_LINEAR = re.compile(
    r"^(decoder\.layers\.(?:(\d+)\.)?.*(?:linear_qkv|linear_proj|linear_fc1|linear_fc2|in_proj|out_proj))\.weight(?:\.query)?$"
)


def _linear_extra_states(tensors: Tensors) -> dict:
    """The ``_extra_state`` objects Megatron's local linear layers checkpoint (``None`` for
    the local spec), one per stacked layer/expert, e.g. ``decoder.layers.mlp.linear_fc1.
    _extra_state/shard_1_2``; loading into a model fails if they are missing."""
    import itertools

    from megatron.core.dist_checkpointing import ShardedObject

    out = {}
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


def load_megatron_checkpoint(model, load_dir) -> None:
    """Load a Megatron-LM torch_dist checkpoint into a live model (any layout)."""
    from megatron.core import dist_checkpointing

    path, _ = iteration_dir(load_dir)
    _check_format(path)
    state = dist_checkpointing.load(dict(model=model.sharded_state_dict()), str(path))
    model.load_state_dict(state["model"])
