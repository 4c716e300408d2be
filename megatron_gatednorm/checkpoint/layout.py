"""How model tensors are laid out in a torch_dist checkpoint, and back to per-layer names.

torch_dist tensors are stored once at their global (unsharded) shape. Decoder tensors of
homogeneous models are stacked over layers (``decoder.layers.X [L, ...]``), otherwise stored
per layer (``decoder.layers.{i}.X``); routed experts are stacked over experts
(``...mlp.experts.experts.linear_fc1.weight [(L,) E, ...]``) whatever the in-memory layout
(SequentialMLP, TEGroupedMLP, GroupedMLP); Gated DeltaNet's ``in_proj.weight`` is stored in six
parts (``.query .key .value .z .beta .alpha``) and its ``conv1d.weight`` in three. :func:`unstack`
/ :func:`stack` convert between that and the per-layer, per-expert, unsplit names of
:mod:`megatron_gatednorm.convert.mapping`.

A HybridModel checkpoint (``arch.hybrid_layer_pattern``) is never stacked over layers: its keys are
renamed to and from its GPT-hybrid form (:mod:`.hybrid_keys`) first / last.
"""

from __future__ import annotations

import re
from typing import Dict, Tuple

import torch

from megatron_gatednorm.checkpoint.arch import Arch
from megatron_gatednorm.checkpoint.errors import CheckpointError
from megatron_gatednorm.checkpoint.hybrid_keys import gpt_to_hybrid, hybrid_to_gpt
from megatron_gatednorm.model_shape import ModelShape

Tensors = Dict[str, torch.Tensor]

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")


def unstack(tensors: Tensors, arch: Arch) -> Tensors:
    """Global dist-ckpt tensors → per-layer/per-expert names ``decoder.layers.{i}.…``,
    ``….mlp.experts.{e}.linear_fc1.weight``."""
    out: Tensors = {}
    L = arch.shape.num_layers
    if arch.hybrid_layer_pattern:
        tensors = _hybrid_renamed(hybrid_to_gpt, tensors, arch.hybrid_layer_pattern)
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


def _hybrid_renamed(rename, tensors: Tensors, pattern: str) -> Tensors:
    try:
        return rename(tensors, pattern)
    except ValueError as e:
        raise CheckpointError(str(e)) from None


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
    if arch.hybrid_layer_pattern:  # HybridStack.sharded_state_dict: per-layer keys, always
        return _hybrid_renamed(gpt_to_hybrid, out, arch.hybrid_layer_pattern)
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

