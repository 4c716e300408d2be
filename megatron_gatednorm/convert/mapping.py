"""The one Megatron ⇄ Hugging Face name table, and the tensor layout transforms (pure torch).

Megatron names are per layer and per expert (``decoder.layers.{i}.…``,
``….mlp.experts.{e}.linear_fc1.weight``); :mod:`megatron_gatednorm.checkpoint.layout` turns the stacked dist-ckpt
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
* ``gdn_in``: Gated DeltaNet's ``in_proj.weight`` is ``[q | k | v | z | beta | alpha]`` over all
  heads (Megatron's TP=1 layout; :mod:`~megatron_gatednorm.checkpoint.layout` joins the checkpoint's six parts); Qwen3-Next
  groups rows per key head ``g``: ``in_proj_qkvz`` = per g ``[q_g | k_g | v_g· | z_g·]`` and
  ``in_proj_ba`` = per g ``[beta_g· | alpha_g·]``, where ``·`` are the ``nv/nk`` value heads of g.
  ``conv1d.weight`` is ``[q | k | v]`` channels in both.
* ``gdn_norm``: stock Qwen3-Next's gated output norm multiplies by its plain ``weight``, while
  Megatron's (and the exported architecture's) honour ``zero_centered_gamma`` (``1 + weight``);
  for a stock target with zero-centred gamma the weight is shifted by one. ``1 + w`` rounds, so
  that one tensor is exact to an ulp, not bit-identical, after a round trip.

Every other transform is a split or a concatenation, so HF → Megatron → HF is byte-identical.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch

from megatron_gatednorm.checkpoint import Arch, CheckpointError, Tensors

NORM_PARAMS = ("weight", "pre_scale", "gate_down", "gate_up", "alpha", "bias")
STOCK_HYBRID_CLASS = "Qwen3NextForCausalLM"


@dataclass(frozen=True)
class Rule:
    megatron: str
    hf: Tuple[str, ...]
    layout: str = "copy"  # copy | qkv | fc1 | gdn_in | gdn_norm
    # HF → Megatron only: attn_fused | gdn_fused | attn_slot | mlp_fused | mlp_slot
    when: Optional[str] = None


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
    # Gated DeltaNet (hybrid models; Qwen3-Next's names)
    Rule(_L + "self_attention.in_proj.layer_norm_weight", (_H + "input_layernorm.weight",), when="gdn_fused"),
    Rule(_L + "self_attention.in_proj.weight",
         (_H + "linear_attn.in_proj_qkvz.weight", _H + "linear_attn.in_proj_ba.weight"), "gdn_in"),
    Rule(_L + "self_attention.conv1d.weight", (_H + "linear_attn.conv1d.weight",)),
    Rule(_L + "self_attention.dt_bias", (_H + "linear_attn.dt_bias",)),
    Rule(_L + "self_attention.A_log", (_H + "linear_attn.A_log",)),
    Rule(_L + "self_attention.out_norm.weight", (_H + "linear_attn.norm.weight",), "gdn_norm"),
    Rule(_L + "self_attention.out_proj.weight", (_H + "linear_attn.out_proj.weight",)),
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

def split_qkv(w: torch.Tensor, arch: Arch, hf_class: str) -> List[torch.Tensor]:
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


def merge_qkv(parts: List[torch.Tensor], arch: Arch, hf_class: str) -> torch.Tensor:
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


def split_fc1(w: torch.Tensor, arch: Arch, hf_class: str) -> List[torch.Tensor]:
    return list(w.chunk(2, dim=0))


def merge_fc1(parts: List[torch.Tensor], arch: Arch, hf_class: str) -> torch.Tensor:
    return torch.cat(parts, dim=0)


def _gdn_dims(arch: Arch) -> Tuple[int, int, int, int]:
    s = arch.shape
    nk, nv = s.linear_num_key_heads, s.linear_num_value_heads
    return nk, nv // nk, s.linear_key_head_dim, s.linear_value_head_dim


def split_gdn_in(w: torch.Tensor, arch: Arch, hf_class: str) -> List[torch.Tensor]:
    nk, r, dk, dv = _gdn_dims(arch)
    h = w.shape[-1]
    q, k, v, z, b, a = w.split([nk * dk, nk * dk, nk * r * dv, nk * r * dv, nk * r, nk * r], dim=0)
    qkvz = torch.cat([q.reshape(nk, dk, h), k.reshape(nk, dk, h),
                      v.reshape(nk, r * dv, h), z.reshape(nk, r * dv, h)], dim=1)
    ba = torch.cat([b.reshape(nk, r, h), a.reshape(nk, r, h)], dim=1)
    return [qkvz.reshape(-1, h), ba.reshape(-1, h)]


def merge_gdn_in(parts: List[torch.Tensor], arch: Arch, hf_class: str) -> torch.Tensor:
    nk, r, dk, dv = _gdn_dims(arch)
    qkvz, ba = parts
    h = qkvz.shape[-1]
    q, k, v, z = qkvz.reshape(nk, -1, h).split([dk, dk, r * dv, r * dv], dim=1)
    b, a = ba.reshape(nk, 2 * r, h).split([r, r], dim=1)
    return torch.cat([t.reshape(-1, h) for t in (q, k, v, z, b, a)], dim=0)


def _gdn_norm_shift(arch: Arch, hf_class: str) -> bool:
    return arch.zero_centered_gamma and hf_class == STOCK_HYBRID_CLASS


def split_gdn_norm(w: torch.Tensor, arch: Arch, hf_class: str) -> List[torch.Tensor]:
    return [w + 1 if _gdn_norm_shift(arch, hf_class) else w]


def merge_gdn_norm(parts: List[torch.Tensor], arch: Arch, hf_class: str) -> torch.Tensor:
    return parts[0] - 1 if _gdn_norm_shift(arch, hf_class) else parts[0]


def _copy_split(w, arch, hf_class):
    return [w]


def _copy_merge(parts, arch, hf_class):
    return parts[0]


_SPLIT: Dict[str, Callable] = {
    "copy": _copy_split, "qkv": split_qkv, "fc1": split_fc1, "gdn_in": split_gdn_in, "gdn_norm": split_gdn_norm,
}
_MERGE: Dict[str, Callable] = {
    "copy": _copy_merge, "qkv": merge_qkv, "fc1": merge_fc1, "gdn_in": merge_gdn_in, "gdn_norm": merge_gdn_norm,
}


def _slot_replaced(arch: Arch, slot: str) -> bool:
    nc = arch.norm_config
    return nc.variant != "rmsnorm" and slot in nc.placement


def _applies(rule: Rule, arch: Arch, layer: Optional[int]) -> bool:
    if rule.when is None:
        return True
    slot, kind = rule.when.split("_")
    if slot in ("attn", "gdn"):
        fused = not _slot_replaced(arch, "attn")
        if kind == "fused" and (slot == "gdn") != bool(arch.shape.linear_attention_pattern()[layer]):
            return False
    else:
        fused = not _slot_replaced(arch, "mlp") and not arch.shape.moe_pattern()[layer]
    return fused == (kind == "fused")


def _fmt(pattern: str, groups: dict) -> str:
    return pattern.format(**{k: v for k, v in groups.items() if v is not None})


# -- conversions ------------------------------------------------------------------------------

def megatron_to_hf(tensors: Tensors, arch: Arch, hf_class: str) -> Tensors:
    """Per-layer Megatron tensors → HF tensors of ``hf_class`` (fresh contiguous copies)."""
    out: Tensors = {}
    for key, t in tensors.items():
        for rule, mrx, _ in _COMPILED:
            m = mrx.match(key)
            if m:
                break
        else:
            raise CheckpointError(f"checkpoint tensor {key!r} has no rule in the Megatron→HF name table")
        for name, part in zip(rule.hf, _SPLIT[rule.layout](t, arch, hf_class)):
            out[_fmt(name, m.groupdict())] = part.contiguous().clone()
    if not arch.shape.untie_embeddings_and_output_weights:
        out.pop("lm_head.weight", None)
    return out


def hf_to_megatron(tensors: Tensors, arch: Arch, hf_class: str) -> Tensors:
    """HF tensors of ``hf_class`` → per-layer Megatron tensors (fresh contiguous copies)."""
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
        merged = _MERGE[rule.layout]([parts[j] for j in range(len(rule.hf))], arch, hf_class)
        out[_fmt(rule.megatron, groups)] = merged.contiguous().clone()
    return out
