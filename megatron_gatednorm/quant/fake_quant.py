"""Fake-quantized linear layers and SmoothQuant for a whole torch model (e.g. an HF model).

Every ``nn.Linear`` inside the transformer blocks is replaced by :class:`FakeQuantLinear`
(weights quantized once, activations on every call); embeddings, the LM head and the norms
stay in high precision, and so do GatedNorm's rank-r gate matrices unless
``quantize_gates=True`` (then their weights are quantized; their input, the norm output, is
not). Schemes:

=========  ==============================================================
``nvfp4``  W4A4 NVFP4: weights per-tensor second-level scale, activations per token
``int4``   W4A4 INT4 RTN: weights per output channel, activations per token
``int8``   W8A8 INT8 RTN: weights per output channel, activations per token
=========  ==============================================================

SmoothQuant (Xiao et al. 2023): for the linears that read the same activation X (e.g. q/k/v, or
gate/up), with ``a_j = max |X_j|`` over calibration tokens and ``w_j = max |W_{·j}|`` over the
group's weights, ``s_j = a_j^α / w_j^(1-α)``; the layer computes ``Q(X diag(1/s)) · Q(W diag(s))ᵀ``,
which equals ``X Wᵀ`` without quantization. The scaling is applied at the linear's input rather
than folded into the preceding norm, because GatedNorm's gate and PreAffine's pre-scale make
that fold inexact; for a plain RMSNorm model the two are the same computation.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Dict, Iterable, Optional

import torch
import torch.nn.functional as F

from megatron_gatednorm.quant.formats import int_symmetric, nvfp4

SCHEMES = {
    "nvfp4": (lambda w: nvfp4(w), lambda x: nvfp4(x, per_token=True)),
    "int4": (lambda w: int_symmetric(w, 4), lambda x: int_symmetric(x, 4)),
    "int8": (lambda w: int_symmetric(w, 8), lambda x: int_symmetric(x, 8)),
}


def _scheme(name: str):
    try:
        return SCHEMES[name]
    except KeyError:
        raise ValueError(f"invalid quantization scheme={name!r}; valid choices: {', '.join(SCHEMES)}") from None


class FakeQuantLinear(torch.nn.Module):
    """``y = Q_a(x / s) · Q_w(W · s)ᵀ + b`` (``s`` = 1 without SmoothQuant)."""

    def __init__(self, linear: torch.nn.Linear, scheme: str, smooth: Optional[torch.Tensor] = None):
        super().__init__()
        quant_w, self._quant_a = _scheme(scheme)
        w = linear.weight.detach().float()
        if smooth is not None:
            w = w * smooth.float()
            self.register_buffer("inv_smooth", (1.0 / smooth.float()).to(linear.weight.dtype))
        else:
            self.inv_smooth = None
        self.weight = torch.nn.Parameter(quant_w(w).to(linear.weight.dtype), requires_grad=False)
        self.bias = linear.bias
        self.scheme = scheme

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inv_smooth is not None:
            x = x * self.inv_smooth
        return F.linear(self._quant_a(x), self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}, scheme={self.scheme}, smooth={self.inv_smooth is not None}"


def block_linears(model: torch.nn.Module, blocks_attr: str = "layers") -> Dict[str, torch.nn.Linear]:
    """Every ``nn.Linear`` under a module list named ``blocks_attr`` (the transformer blocks)."""
    return {
        name: m for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and f".{blocks_attr}." in f".{name}"
    }


@torch.no_grad()
def calibrate(model: torch.nn.Module, batches: Iterable[torch.Tensor], linears: Dict[str, torch.nn.Linear]):
    """Per-input-channel ``max |X|`` of each linear over the calibration batches, and the groups of
    linears that read the same tensor (they share one SmoothQuant factor)."""
    act_max: Dict[str, torch.Tensor] = {}
    shared = defaultdict(set)  # linear name -> names that read the same input tensor
    seen: Dict[int, tuple] = {}  # id(input) -> (input, first reader); the reference keeps ids unique
    handles = []

    def hook(name):
        def record(module, inputs):
            x = inputs[0].detach()
            m = x.reshape(-1, x.shape[-1]).abs().float().amax(0)
            act_max[name] = torch.maximum(act_max[name], m) if name in act_max else m
            _, first = seen.setdefault(id(inputs[0]), (inputs[0], name))
            shared[first].add(name)

        return record

    for name, lin in linears.items():
        handles.append(lin.register_forward_pre_hook(hook(name)))
    try:
        for batch in batches:
            seen.clear()
            model(batch)
    finally:
        for h in handles:
            h.remove()
    groups, assigned = [], set()
    for first, names in shared.items():
        names = sorted(names - assigned)
        if names:
            groups.append(names)
            assigned.update(names)
    return act_max, groups


def smoothing_factors(act_max, groups, linears, alpha: float = 0.5, eps: float = 1e-5) -> Dict[str, torch.Tensor]:
    """SmoothQuant's ``s = a^α / w^(1-α)`` per group of linears sharing an input."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"invalid SmoothQuant alpha={alpha}: it must be in [0, 1]")
    factors = {}
    for names in groups:
        a = torch.stack([act_max[n] for n in names]).amax(0).clamp(min=eps)
        w = torch.stack([linears[n].weight.detach().abs().float().amax(0) for n in names]).amax(0).clamp(min=eps)
        s = (a.pow(alpha) / w.pow(1 - alpha)).clamp(min=eps)
        for n in names:
            factors[n] = s
    return factors


def quantize_model(
    model: torch.nn.Module,
    scheme: str,
    smooth: Optional[Dict[str, torch.Tensor]] = None,
    quantize_gates: bool = False,
    linears: Optional[Dict[str, torch.nn.Linear]] = None,
) -> torch.nn.Module:
    """Replace ``linears`` (default: :func:`block_linears`) of ``model`` in place."""
    _scheme(scheme)
    linears = block_linears(model) if linears is None else linears
    for name, lin in linears.items():
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, FakeQuantLinear(lin, scheme, (smooth or {}).get(name)))
    if quantize_gates:
        quant_w = _scheme(scheme)[0]
        for module in model.modules():
            for attr in ("gate_down", "gate_up"):
                p = getattr(module, attr, None)
                if isinstance(p, torch.nn.Parameter):
                    with torch.no_grad():
                        p.copy_(quant_w(p.float()).to(p.dtype))
    return model
