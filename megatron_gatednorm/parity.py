"""Parameter counts of a GPT model and the FFN width that keeps a variant at parameter parity.

The paper keeps the total parameter count of every variant equal to the baseline's by
"slightly reducing FFN capacity". :func:`parity_ffn` does that: it lowers the dense
``ffn_hidden_size`` (dense models) or, for MoE models, the shared-expert width
``moe_shared_expert_intermediate_size`` (its per-unit cost is small enough to match a few
million parameters; one unit of ``moe_ffn_hidden_size`` costs layers × experts × 3h) — or
``moe_ffn_hidden_size`` when there is no shared expert — to the largest width whose total
does not exceed the baseline.

Counts are analytic (pure Python, no torch), so the launcher can use them on a login node;
the test suite checks them against ``GPTModel`` built from the plugin's specs. The shape is a
:class:`~megatron_gatednorm.model_shape.ModelShape` (fields named after Megatron's flags).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from megatron_gatednorm.hybrid_pattern import MIXERS
from megatron_gatednorm.norm_config import NormConfig
from megatron_gatednorm.model_shape import ModelShape, megatron_default


def padded_vocab(vocab: int, divisible_by: Optional[int] = None, tensor_parallel: int = 1) -> int:
    """Megatron-LM's embedding rows: the vocabulary rounded up to a multiple of
    ``--make-vocab-size-divisible-by`` (default: Megatron-LM's) × tensor-parallel size."""
    multiple = (divisible_by or megatron_default("make_vocab_size_divisible_by")) * tensor_parallel
    return -(-vocab // multiple) * multiple


def norm_params(hidden: int, nc: Optional[NormConfig], variant: Optional[str] = None) -> int:
    """Parameters of one residual-stream norm of width ``hidden``."""
    variant = variant or (nc.variant if nc else "rmsnorm")
    nc = (nc or NormConfig()).replace(variant=variant)
    n = hidden  # RMSNorm / DyT gain
    if nc.preaffine:
        n += hidden
    if nc.dyt:
        n += 1 + hidden
    if nc.gated:
        n += nc.rank * hidden + nc.rank * (hidden if nc.granularity == "elementwise" else 1)
    return n


def _slot_variant(nc: Optional[NormConfig], slot: str) -> str:
    if nc is None or nc.variant == "rmsnorm" or slot not in nc.placement:
        return "rmsnorm"
    return nc.variant


def _attention_params(s: ModelShape) -> int:
    h, d = s.hidden_size, s.head_dim
    q_out = s.num_attention_heads * d * (2 if s.attention_output_gate else 1)
    qkv_out = q_out + 2 * s.query_groups * d
    n = h * qkv_out + s.num_attention_heads * d * h
    if s.add_bias_linear or s.add_qkv_bias:
        n += qkv_out
    if s.add_bias_linear:
        n += h
    return n


def _gated_delta_net_params(s: ModelShape) -> int:
    h = s.hidden_size
    qk = s.linear_key_head_dim * s.linear_num_key_heads
    v = s.linear_value_head_dim * s.linear_num_value_heads
    in_proj = h * (2 * qk + 2 * v + 2 * s.linear_num_value_heads)
    conv = (2 * qk + v) * s.linear_conv_kernel_dim
    return in_proj + conv + 2 * s.linear_num_value_heads + s.linear_value_head_dim + v * h


def _mlp_params(h: int, ffn: int, swiglu: bool, bias: bool) -> int:
    n = h * ffn * (2 if swiglu else 1) + ffn * h
    if bias:
        n += ffn * (2 if swiglu else 1) + h
    return n


def _moe_params(s: ModelShape, active: bool) -> int:
    h = s.hidden_size
    experts = s.moe_router_topk if active else s.num_experts
    n = s.num_experts * h  # router
    n += experts * _mlp_params(h, s.moe_ffn_hidden_size or s.ffn_hidden_size, s.swiglu, s.add_bias_linear)
    if s.moe_shared_expert_intermediate_size:
        n += _mlp_params(h, s.moe_shared_expert_intermediate_size, s.swiglu, s.add_bias_linear)
        if s.moe_shared_expert_gate:
            n += h
    return n


def count_params(s: ModelShape, nc: Optional[NormConfig] = None, active: bool = False) -> dict:
    """Parameter count by component; ``total`` is what ``GPTModel`` (or ``HybridModel``) holds (``active``: per
    token, counting top-k routed experts). ``nc=None`` is the RMSNorm baseline."""
    h = s.hidden_size
    c = dict(embedding=s.vocab_size * h, output_layer=0, attention=0, linear_attention=0, mlp=0, norms=0)
    if s.untie_embeddings_and_output_weights:
        c["output_layer"] = s.vocab_size * h
    if s.position_embedding_type == "learned_absolute":
        c["embedding"] += s.max_position_embeddings * h
    attn_norm, mlp_norm = (norm_params(h, nc, _slot_variant(nc, slot)) for slot in ("attn", "mlp"))
    qk_norm = norm_params(s.head_dim, nc, _slot_variant(nc, "qk")) if s.qk_layernorm else 0
    # one HybridModel layer per symbol; a GPT layer is a (mixer, FFN) pair, with the same parameters
    for symbol in s.layer_symbols():
        if symbol == "G":
            c["linear_attention"] += _gated_delta_net_params(s)
        elif symbol == "*":
            c["attention"] += _attention_params(s)
            c["norms"] += 2 * qk_norm
        elif symbol == "E":
            c["mlp"] += _moe_params(s, active)
        else:
            c["mlp"] += _mlp_params(h, s.ffn_hidden_size, s.swiglu, s.add_bias_linear)
        c["norms"] += attn_norm if symbol in MIXERS else mlp_norm
    c["norms"] += norm_params(h, nc, _slot_variant(nc, "final"))
    c["total"] = sum(c.values())
    return c


def _parity_field(s: ModelShape) -> str:
    if "-" in s.layer_symbols():  # a dense MLP layer
        return "ffn_hidden_size"
    return "moe_shared_expert_intermediate_size" if s.moe_shared_expert_intermediate_size else "moe_ffn_hidden_size"


@dataclass(frozen=True)
class ParityReport:
    field: str
    baseline_width: int
    width: int
    baseline_params: int
    variant_params_before: int
    params: int

    @property
    def norm_overhead(self) -> int:
        return self.variant_params_before - self.baseline_params

    @property
    def residual(self) -> int:
        """params − baseline_params after the adjustment (≤ 0, and above −cost of one unit)."""
        return self.params - self.baseline_params


def parity_ffn(s: ModelShape, nc: NormConfig, multiple_of: int = 1) -> ParityReport:
    """Lower the FFN width (see module doc) so ``nc``'s model has at most the baseline's
    parameters, as close as a width in steps of ``multiple_of`` allows."""
    field = _parity_field(s)
    base_width = getattr(s, field) or s.ffn_hidden_size
    baseline = count_params(s)["total"]
    before = count_params(s, nc)["total"]
    width = base_width
    if before > baseline:
        unit = count_params(s.replace(**{field: base_width}), nc)["total"] - count_params(
            s.replace(**{field: base_width - 1}), nc
        )["total"]
        width = base_width - math.ceil((before - baseline) / unit)
        width -= width % multiple_of
    if width < 1:
        raise ValueError(f"invalid {field}={base_width}: too small to absorb the norm overhead")
    after = count_params(s.replace(**{field: width}), nc)["total"]
    return ParityReport(field, base_width, width, baseline, before, after)
