"""Per-GPU memory estimate of a launch plan (GiB, the most loaded pipeline stage).

A planning number, not a measurement; :func:`~.validate.check_memory` checks it against
``launch.gpu_memory_gb`` (or ``--gpu-memory-gb``) and suggests changes that would fit.

Notation: ``tp, pp, cp, ep, etp`` the tensor, pipeline, context, expert and expert-tensor parallel
sizes (``etp`` defaults to ``tp``), ``world`` the number of ranks, ``dp = world / (tp·pp·cp)``,
``edp = max(1, world / (ep·etp·pp))``; ``h`` hidden size, ``V`` (padded) vocabulary, ``L`` layers,
``s`` sequence length, ``b`` micro-batch size, ``sb = (s / cp)·b`` tokens per rank and micro-batch,
``m = 3`` for SwiGLU MLPs (else 2), ``r`` the gated norm's rank.

Parameters held by one GPU:

* ``N_expert = (MoE layers)·num_experts·h·f_moe·m`` (routed experts), ``E = V·h`` (embedding),
  ``N_dense = N_total − N_expert − E·(2 if untied output layer else 1)``;
* ``P_dense = N_dense / (tp·pp) + E / tp`` (a stage's share of the layers plus one embedding),
  ``P_expert = N_expert / (ep·etp·pp)``, ``P = P_dense + P_expert``.

Bytes:

* weights ``2·P`` (bf16 or fp16; ``4·P`` in fp32);
* gradients ``4·P`` (Megatron accumulates bf16 gradients in fp32);
* optimizer (Adam: fp32 main params + 2 moments) ``12·(P_dense / dp + P_expert / edp)`` with
  ``use_distributed_optimizer``, else ``12·P``;
* activations per layer and micro-batch, bf16, split by tensor/sequence parallelism (flash
  attention, so no ``s²`` term): ``A = 2·sb·units / tp`` with ``units`` =

  - softmax attention: ``2h + 3q + 2·kv + gate`` (norm in/out, Q, K and V, the attention
    context, the output projection's input; ``gate = q`` with ``attention_output_gate``, else 0),
    where ``q = heads·head_dim``, ``kv = query_groups·head_dim``;
  - Gated DeltaNet (linear attention): ``2h + 2·key_heads·key_dim + 3·value_heads·value_dim``;
  - dense MLP: ``2h + m·f`` (``fc1`` out, ``2f`` for SwiGLU, plus the activation out ``f``);
  - MoE MLP: ``2h + topk·(h + m·f_moe) + m·f_shared`` (``topk`` routed copies, shared expert);
  - plus ``(gated norm slots among attn, mlp)·(h + r)`` for the gate scores of gated norms;

  ``A`` is per GPT layer (its token mixer and FFN), or per HybridModel layer (each of which
  keeps its own input); a stage keeps ``(L / pp)·mean(A)`` per micro-batch, or with
  ``recompute_granularity=full`` ``(L / pp)·2·sb·h / tp + max(A)`` (each layer's input plus one
  layer recomputed); a HybridModel pattern with ``|`` segments: the stage with the most, from
  its own layers (segment ``i`` on pipeline rank ``i mod pp``);
  1F1B keeps ``min(pp, micro-batches per step)`` micro-batches in flight; the last stage adds
  the logits ``6·sb·V / tp`` (bf16 + an fp32 copy for the loss);
  ``activations = activation_memory_factor·(stage·in_flight + logits)``;
* total ``1.1·(weights + gradients + optimizer + activations) + 3 GiB`` for allocator
  fragmentation, the CUDA context and communication buffers (a chosen margin;
  ``launch.activation_memory_factor`` scales the activation term, to calibrate per cluster).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from megatron_gatednorm.hybrid_pattern import PIPE
from megatron_gatednorm.model_shape import ModelShape
from megatron_gatednorm.norm_config import NormConfig
from megatron_gatednorm.parity import count_params

GiB = 1024 ** 3


def _routed_expert_params(s: ModelShape) -> int:
    if not s.num_experts:
        return 0
    f = s.moe_ffn_hidden_size or s.ffn_hidden_size
    per_expert = s.hidden_size * f * (3 if s.swiglu else 2)
    return s.layer_symbols().count("E") * s.num_experts * per_expert


def _stages(per_layer: List[float], pattern: Optional[str], pp: int) -> List[Tuple[float, float, float]]:
    """``(layers, sum, max)`` of the per-layer activations of each pipeline stage: a pattern's ``|``
    segments (segment ``i`` on rank ``i mod pp``, virtual stages included), else Megatron's even
    split, every stage at ``(L / pp)·mean`` with the model's largest layer."""
    if pattern and PIPE in pattern:
        stages: List[List[float]] = [[] for _ in range(pp)]
        start = 0
        for i, segment in enumerate(pattern.split(PIPE)):
            stages[i % pp] += per_layer[start:start + len(segment)]
            start += len(segment)
        return [(len(st), sum(st), max(st)) for st in stages if st]
    n = len(per_layer) / pp
    return [(n, n * sum(per_layer) / len(per_layer), max(per_layer))]


def memory_estimate(plan_m: Dict[str, Any], shape: ModelShape, nc: NormConfig, world: int,
                    num_microbatches: int, factor: float = 1.0) -> Dict[str, float]:
    """Per-GPU memory in GiB: ``weights``, ``grads``, ``optimizer``, ``activations`` and ``total``
    (the formulas are in the module doc)."""
    tp = plan_m.get("tensor_model_parallel_size", 1)
    pp = plan_m.get("pipeline_model_parallel_size", 1)
    cp = plan_m.get("context_parallel_size", 1)
    ep = plan_m.get("expert_model_parallel_size", 1)
    etp = plan_m.get("expert_tensor_parallel_size") or tp
    dp = world // (tp * pp * cp)
    edp = max(1, world // (ep * etp * pp))
    total = count_params(shape, nc)["total"]
    expert = _routed_expert_params(shape)
    embed = shape.vocab_size * shape.hidden_size
    dense_layers = total - expert - embed * (2 if shape.untie_embeddings_and_output_weights else 1)
    # The most loaded stage: its share of the layers plus the (input or output) embedding.
    p_dense = dense_layers / (tp * pp) + embed / tp
    p_expert = expert / (ep * etp * pp)
    weight_bytes = 2 if plan_m.get("bf16") or plan_m.get("fp16") else 4
    weights = weight_bytes * (p_dense + p_expert)
    grads = 4 * (p_dense + p_expert)
    if plan_m.get("use_distributed_optimizer"):
        optimizer = 12 * (p_dense / dp + p_expert / edp)
    else:
        optimizer = 12 * (p_dense + p_expert)

    h = shape.hidden_size
    sb = plan_m["seq_length"] // cp * plan_m["micro_batch_size"]
    q = shape.num_attention_heads * shape.head_dim
    kv = shape.query_groups * shape.head_dim
    gate = q if shape.attention_output_gate else 0
    attn = 2 * h + q + 2 * kv + q + gate + q
    lin_qk = shape.linear_key_head_dim * shape.linear_num_key_heads
    lin_v = shape.linear_value_head_dim * shape.linear_num_value_heads
    linear_attn = 2 * h + 2 * lin_qk + 3 * lin_v
    fmul = 3 if shape.swiglu else 2
    dense_mlp = 2 * h + fmul * shape.ffn_hidden_size
    moe_f = shape.moe_ffn_hidden_size or shape.ffn_hidden_size
    moe_mlp = 2 * h + shape.moe_router_topk * (h + fmul * moe_f) + fmul * (shape.moe_shared_expert_intermediate_size or 0)
    units = {"G": linear_attn, "*": attn, "E": moe_mlp, "-": dense_mlp}
    slot = {"G": "attn", "*": "attn", "E": "mlp", "-": "mlp"}
    norm_extra = {s: (h + nc.rank) if nc.gated and slot[s] in nc.placement else 0 for s in units}
    # per GPT layer (mixer + FFN), or per HybridModel layer (each stores its own input)
    symbols = shape.layer_symbols()
    step = 1 if shape.hybrid_layer_pattern else 2
    per_layer = [2 * sb * sum(units[x] + norm_extra[x] for x in symbols[i:i + step]) / tp
                 for i in range(0, len(symbols), step)]
    granularity = plan_m.get("recompute_granularity")
    # a stage keeps every layer's activations, or with full recompute each layer's input and one layer
    stage_act = max(n * 2 * sb * h / tp + largest if granularity == "full" else total
                    for n, total, largest in _stages(per_layer, shape.hybrid_layer_pattern, pp))
    inflight = min(pp, num_microbatches)
    logits = 6 * sb * shape.vocab_size / tp
    activations = factor * (stage_act * inflight + logits)
    parts = dict(weights=weights, grads=grads, optimizer=optimizer, activations=activations)
    out = {k: v / GiB for k, v in parts.items()}
    out["total"] = (sum(parts.values()) * 1.1) / GiB + 3.0
    return out
