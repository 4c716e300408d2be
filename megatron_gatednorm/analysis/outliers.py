"""Residual sinks, massive activations, attention sinks and gate statistics of a model.

Inputs are what any Hugging Face causal LM returns with ``output_hidden_states=True`` and
``output_attentions=True``: the residual-stream states ``H_0..H_D`` (``[B, T, d]`` each) and
the attention probabilities of the softmax-attention layers (``[B, heads, T, T]``). Definitions
(paper §2, §7):

* peak ``|h|`` per state: ``max |H_i|`` (the paper's "Outliers" / massive activations);
* per-dimension magnitude ``H^j_avg = mean_{n, i} |H^j_{i,n}|`` over tokens and all D+1
  states; residual sinks are the dimensions with the largest ``H^j_avg``;
* persistence of a sink dimension: the fraction of input sequences in whose own top-k it is;
* first-token attention mass: ``mean_{q ≥ 1} A[q, 0]`` per layer and head; the sink rate is the
  fraction of (layer, head) pairs whose mass exceeds ε = 0.3 (Gu et al.);
* norm parameters: extremes of the RMSNorm gain λ and of the PreAffine λ1 per norm;
* GatedNorm: the mean gate value on the sink dimensions against the other dimensions.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch

SINK_EPS = 0.3


class OutlierStats:
    """Accumulates statistics over batches; :meth:`report` returns them as plain Python."""

    def __init__(self, top_k: int = 8):
        self.top_k = top_k
        self.peak: Optional[torch.Tensor] = None        # [D+1]
        self.first_token_peak: Optional[torch.Tensor] = None
        self.dim_sum: Optional[torch.Tensor] = None     # [D+1, d] sum of |h| over tokens
        self.tokens = 0
        self.per_sequence_top: List[List[int]] = []
        self.attn_sum: Dict[int, torch.Tensor] = {}     # layer -> [heads]
        self.attn_count: Dict[int, int] = {}
        self.gate_sum: Dict[str, torch.Tensor] = {}     # norm name -> [d] sum of gate values
        self.gate_tokens: Dict[str, int] = {}

    @torch.no_grad()
    def add_hidden_states(self, hidden_states: Sequence[torch.Tensor]) -> None:
        h = torch.stack([s.detach().float().abs() for s in hidden_states])  # [S, B, T, d]
        peak = h.amax(dim=(1, 2, 3))
        first = h[:, :, 0].amax(dim=(1, 2))
        dims = h.sum(dim=(1, 2))
        self.peak = peak if self.peak is None else torch.maximum(self.peak, peak)
        self.first_token_peak = first if self.first_token_peak is None else torch.maximum(self.first_token_peak, first)
        self.dim_sum = dims if self.dim_sum is None else self.dim_sum + dims
        self.tokens += h.shape[1] * h.shape[2]
        per_seq = h.mean(dim=(0, 2))  # [B, d]
        k = min(self.top_k, per_seq.shape[-1])
        self.per_sequence_top += per_seq.topk(k, dim=-1).indices.tolist()

    @torch.no_grad()
    def add_attentions(self, attentions: Sequence[Optional[torch.Tensor]]) -> None:
        for layer, a in enumerate(attentions):
            if a is None:  # linear-attention layers have no attention map
                continue
            mass = a.detach().float()[:, :, 1:, 0].mean(dim=(0, 2))  # [heads]
            self.attn_sum[layer] = self.attn_sum.get(layer, 0) + mass
            self.attn_count[layer] = self.attn_count.get(layer, 0) + 1

    @torch.no_grad()
    def add_gate(self, name: str, gate: torch.Tensor) -> None:
        g = gate.detach().float().reshape(-1, gate.shape[-1])
        self.gate_sum[name] = self.gate_sum.get(name, 0) + g.sum(0)
        self.gate_tokens[name] = self.gate_tokens.get(name, 0) + g.shape[0]

    def dim_avg(self) -> torch.Tensor:
        """``H^j_avg`` over all states and tokens: ``[d]``."""
        return self.dim_sum.sum(0) / (self.tokens * self.dim_sum.shape[0])

    def per_layer_dim_avg(self) -> torch.Tensor:
        """Mean ``|h|`` per state and dimension: ``[D+1, d]`` (the heatmap's rows)."""
        return self.dim_sum / self.tokens

    def report(self, norm_params: Optional[dict] = None) -> dict:
        avg = self.dim_avg()
        k = min(self.top_k, avg.numel())
        top = avg.topk(k)
        sink_dims = top.indices.tolist()
        n_seq = max(1, len(self.per_sequence_top))
        persistence = {d: sum(d in row for row in self.per_sequence_top) / n_seq for d in sink_dims}
        out = dict(
            peak_abs_per_state=self.peak.tolist(),
            peak_abs=float(self.peak.max()),
            first_token_peak_abs_per_state=self.first_token_peak.tolist(),
            median_dim_avg=float(avg.median()),
            sink_dims=[
                dict(dim=d, h_avg=float(v), ratio_to_median=float(v / avg.median().clamp(min=1e-12)),
                     persistence=persistence[d])
                for d, v in zip(sink_dims, top.values.tolist())
            ],
            sequences=n_seq,
            tokens=self.tokens,
        )
        if self.attn_sum:
            per_layer = {layer: (s / self.attn_count[layer]).tolist() for layer, s in sorted(self.attn_sum.items())}
            flat = [m for masses in per_layer.values() for m in masses]
            out["first_token_attention"] = dict(
                per_layer_head=per_layer, mean=sum(flat) / len(flat),
                sink_rate=sum(m > SINK_EPS for m in flat) / len(flat), epsilon=SINK_EPS,
            )
        if self.gate_sum:
            sink = torch.tensor(sink_dims)
            gates = {}
            for name, s in self.gate_sum.items():
                mean = s / self.gate_tokens[name]
                if mean.numel() == 1:  # tensor-wise gate: one score per token
                    gates[name] = dict(mean=float(mean))
                    continue
                others = torch.ones_like(mean, dtype=torch.bool)
                others[sink] = False
                gates[name] = dict(mean_on_sink_dims=float(mean[sink].mean()), mean_on_other_dims=float(mean[others].mean()))
            out["gates"] = gates
        if norm_params:
            out["norm_params"] = norm_params
        return out


def norm_parameter_extremes(model: torch.nn.Module) -> dict:
    """Min/max of every norm's gain λ (effective value) and PreAffine λ1, by module name."""
    result = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.nn.Parameter) or weight.ndim != 1 or "norm" not in type(module).__name__.lower():
            continue
        gamma = weight.detach().float() + (1.0 if getattr(module, "zero_centered_gamma", False) else 0.0)
        entry = dict(weight_min=float(gamma.min()), weight_max=float(gamma.max()),
                     weight_argmin=int(gamma.argmin()))
        pre = getattr(module, "pre_scale", None)
        if isinstance(pre, torch.nn.Parameter):
            p = pre.detach().float()
            entry.update(pre_scale_min=float(p.min()), pre_scale_max=float(p.max()), pre_scale_argmax=int(p.argmax()))
        result[name] = entry
    return result
