"""The one Megatron ⇄ Hugging Face name table, and the tensor layout transforms (pure torch).

Megatron names are per layer and per expert (``decoder.layers.{i}.…``,
``….mlp.experts.{e}.linear_fc1.weight``); :mod:`megatron_io` turns the stacked dist-ckpt
keys into these and back. HF names are those of transformers' Qwen3 / Qwen3-MoE / Llama
(per-expert keys, which transformers 5 converts to its fused expert tensors on load) and of
the exported GatedNorm architecture, which uses the same names plus the norm parameters
(``{p}``: weight, pre_scale, gate_down, gate_up, alpha, bias).

Layouts:

* ``qkv``: Megatron's fused ``linear_qkv.weight`` is interleaved per query group
  ``[q (heads/group · d) | gate (heads/group · d, if attention_output_gate) | k (d) | v (d)]``;
  HF has ``q_proj`` (with the gate: per head ``[q_h; g_h]``, Qwen3-Next's layout), ``k_proj``,
  ``v_proj``.
* ``fc1``: SwiGLU ``linear_fc1.weight`` is ``[gate; up]`` (TP-invariant in dist checkpoints)
  ↔ ``gate_proj``, ``up_proj``; the same for experts and the shared expert.
* TE-fused norm weights: a slot the variant does not replace is checkpointed inside the next
  linear (``linear_qkv.layer_norm_weight``, dense ``linear_fc1.layer_norm_weight``), a
  replaced one under its own slot name; ``when`` picks the right one for HF → Megatron.
* Tied embeddings: Megatron stores no ``output_layer.weight``; HF omits ``lm_head.weight``.

Every transform is a split or a concatenation, so HF → Megatron → HF is byte-identical.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch

from megatron_gatednorm.convert.megatron_io import Arch, CheckpointError, Tensors

NORM_PARAMS = ("weight", "pre_scale", "gate_down", "gate_up", "alpha", "bias")


@dataclass(frozen=True)
class Rule:
    megatron: str
    hf: Tuple[str, ...]
    layout: str = "copy"  # copy | qkv | fc1
    when: Optional[str] = None  # HF → Megatron only: attn_fused | attn_slot | mlp_fused | mlp_slot


_L = "decoder.layers.{i}."
_H = "model.layers.{i}."
RULES: Tuple[Rule, ...] = (
    Rule("embedding.word_embeddings.weight", ("model.embed_tokens.weight",)),
    Rule("output_layer.weight", ("lm_head.weight",)),
    Rule("decoder.final_layernorm.{p}", ("model.norm.{p}",)),
    # attention block
    Rule(_L + "input_layernorm.{p}", (_H + "input_layernorm.{p}",), when="attn_slot"),
    Rule(_L + "self_attention.linear_qkv.layer_norm_weight", (_H + "input_layernorm.weight",), when="attn_fused"),
    Rule(_L + "self_attention.linear_qkv.weight",
         (_H + "self_attn.q_proj.weight", _H + "self_attn.k_proj.weight", _H + "self_attn.v_proj.weight"), "qkv"),
    Rule(_L + "self_attention.linear_proj.weight", (_H + "self_attn.o_proj.weight",)),
    Rule(_L + "self_attention.q_layernorm.{p}", (_H + "self_attn.q_norm.{p}",)),
    Rule(_L + "self_attention.k_layernorm.{p}", (_H + "self_attn.k_norm.{p}",)),
    # MLP / MoE block
    Rule(_L + "pre_mlp_layernorm.{p}", (_H + "post_attention_layernorm.{p}",), when="mlp_slot"),
    Rule(_L + "mlp.linear_fc1.layer_norm_weight", (_H + "post_attention_layernorm.weight",), when="mlp_fused"),
    Rule(_L + "mlp.linear_fc1.weight", (_H + "mlp.gate_proj.weight", _H + "mlp.up_proj.weight"), "fc1"),
    Rule(_L + "mlp.linear_fc2.weight", (_H + "mlp.down_proj.weight",)),
    Rule(_L + "mlp.router.weight", (_H + "mlp.gate.weight",)),
    Rule(_L + "mlp.experts.{e}.linear_fc1.weight",
         (_H + "mlp.experts.{e}.gate_proj.weight", _H + "mlp.experts.{e}.up_proj.weight"), "fc1"),
    Rule(_L + "mlp.experts.{e}.linear_fc2.weight", (_H + "mlp.experts.{e}.down_proj.weight",)),
    Rule(_L + "mlp.shared_experts.linear_fc1.weight",
         (_H + "mlp.shared_expert.gate_proj.weight", _H + "mlp.shared_expert.up_proj.weight"), "fc1"),
    Rule(_L + "mlp.shared_experts.linear_fc2.weight", (_H + "mlp.shared_expert.down_proj.weight",)),
    Rule(_L + "mlp.shared_experts.gate_weight", (_H + "mlp.shared_expert_gate.weight",)),
)


def _regex(pattern: str) -> re.Pattern:
    rx = re.escape(pattern)
    rx = rx.replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{e\}", r"(?P<e>\d+)")
    rx = rx.replace(r"\{p\}", "(?P<p>" + "|".join(NORM_PARAMS) + ")")
    return re.compile(f"^{rx}$")


_COMPILED = [(r, _regex(r.megatron), [_regex(h) for h in r.hf]) for r in RULES]


# -- layouts --------------------------------------------------------------------------------

def split_qkv(w: torch.Tensor, arch: Arch) -> List[torch.Tensor]:
    s = arch.shape
    nh, ng, d = s.num_attention_heads, s.query_groups, s.head_dim
    per = nh // ng
    gate = s.attention_output_gate
    w = w.reshape(ng, (per * (2 if gate else 1) + 2) * d, -1)
    q = w[:, : per * d]
    off = per * d
    if gate:
        g = w[:, off: off + per * d]
        off += per * d
        q = torch.stack([q.reshape(ng, per, d, -1), g.reshape(ng, per, d, -1)], dim=2)
    k, v = w[:, off: off + d], w[:, off + d: off + 2 * d]
    return [q.reshape(-1, w.shape[-1]), k.reshape(-1, w.shape[-1]), v.reshape(-1, w.shape[-1])]


def merge_qkv(parts: List[torch.Tensor], arch: Arch) -> torch.Tensor:
    s = arch.shape
    nh, ng, d = s.num_attention_heads, s.query_groups, s.head_dim
    per = nh // ng
    q, k, v = parts
    h = q.shape[-1]
    if s.attention_output_gate:
        qg = q.reshape(ng, per, 2, d, h)
        blocks = [qg[:, :, 0].reshape(ng, per * d, h), qg[:, :, 1].reshape(ng, per * d, h)]
    else:
        blocks = [q.reshape(ng, per * d, h)]
    blocks += [k.reshape(ng, d, h), v.reshape(ng, d, h)]
    return torch.cat(blocks, dim=1).reshape(-1, h)


def split_fc1(w: torch.Tensor, arch: Arch) -> List[torch.Tensor]:
    return list(w.chunk(2, dim=0))


def merge_fc1(parts: List[torch.Tensor], arch: Arch) -> torch.Tensor:
    return torch.cat(parts, dim=0)


_SPLIT: Dict[str, Callable] = {"copy": lambda w, arch: [w], "qkv": split_qkv, "fc1": split_fc1}
_MERGE: Dict[str, Callable] = {"copy": lambda parts, arch: parts[0], "qkv": merge_qkv, "fc1": merge_fc1}


def _slot_replaced(arch: Arch, slot: str) -> bool:
    nc = arch.norm_config
    return nc.variant != "rmsnorm" and slot in nc.placement


def _applies(rule: Rule, arch: Arch, layer: Optional[int]) -> bool:
    if rule.when is None:
        return True
    slot, kind = rule.when.split("_")
    if slot == "attn":
        fused = not _slot_replaced(arch, "attn")
    else:
        fused = not _slot_replaced(arch, "mlp") and not arch.shape.moe_pattern()[layer]
    return fused == (kind == "fused")


def _fmt(pattern: str, groups: dict) -> str:
    return pattern.format(**{k: v for k, v in groups.items() if v is not None})


# -- conversions ------------------------------------------------------------------------------

def megatron_to_hf(tensors: Tensors, arch: Arch) -> Tensors:
    """Per-layer Megatron tensors → HF tensors (fresh contiguous copies)."""
    out: Tensors = {}
    for key, t in tensors.items():
        for rule, mrx, _ in _COMPILED:
            m = mrx.match(key)
            if m:
                break
        else:
            raise CheckpointError(f"checkpoint tensor {key!r} has no rule in the Megatron→HF name table")
        for name, part in zip(rule.hf, _SPLIT[rule.layout](t, arch)):
            out[_fmt(name, m.groupdict())] = part.contiguous().clone()
    if not arch.shape.untie_embeddings_and_output_weights:
        out.pop("lm_head.weight", None)
    return out


def hf_to_megatron(tensors: Tensors, arch: Arch) -> Tensors:
    """HF tensors → per-layer Megatron tensors (fresh contiguous copies)."""
    pending: Dict[Tuple[int, tuple], Dict[int, torch.Tensor]] = {}
    for key, t in tensors.items():
        if key == "lm_head.weight" and not arch.shape.untie_embeddings_and_output_weights:
            continue
        matched = False
        for index, (rule, _, hrxs) in enumerate(_COMPILED):
            for j, hrx in enumerate(hrxs):
                m = hrx.match(key)
                if not m:
                    continue
                groups = m.groupdict()
                layer = int(groups["i"]) if groups.get("i") is not None else None
                if layer is not None and layer >= arch.shape.num_layers:
                    raise CheckpointError(f"HF tensor {key!r}: layer {layer} >= num_hidden_layers {arch.shape.num_layers}")
                if not _applies(rule, arch, layer):
                    continue
                pending.setdefault((index, tuple(sorted(groups.items()))), {})[j] = t
                matched = True
                break
            if matched:
                break
        if not matched:
            raise CheckpointError(f"HF tensor {key!r} has no rule in the HF→Megatron name table")
    out: Tensors = {}
    for (index, groups), parts in pending.items():
        rule = RULES[index]
        groups = dict(groups)
        if len(parts) != len(rule.hf):
            missing = [_fmt(rule.hf[j], groups) for j in range(len(rule.hf)) if j not in parts]
            raise CheckpointError(f"HF tensor(s) missing: {', '.join(missing)}")
        merged = _MERGE[rule.layout]([parts[j] for j in range(len(rule.hf))], arch)
        out[_fmt(rule.megatron, groups)] = merged.contiguous().clone()
    return out
