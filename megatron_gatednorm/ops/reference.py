"""Eager PyTorch reference of every normalization variant: the numerical spec.

Kernels, Megatron modules and the exported Hugging Face code are all tested against these
functions. Statistics and the gate are computed in float32 (float64 if the input is float64)
and the result is cast back to the input dtype. Shapes: ``x`` is ``[..., d]``; parameters
are 1-D ``[d]`` vectors except the gate matrices ``gate_down [r, d]`` and
``gate_up [d, r]`` (element-wise) or ``[1, r]`` (tensor-wise).

Math (``γ`` = ``weight``, or ``1 + weight`` with zero-centred gamma):

* RMSNorm:          ``y = γ ⊙ x / sqrt(mean(x²) + eps)``
* PreAffine:        ``y = RMSNorm(λ1 ⊙ x)``
* DyT:              ``y = γ ⊙ tanh(α x) + β``
* low-rank gate:    ``g = act(gate_up · silu(gate_down · y))``, act ∈ {sigmoid, tanh, silu, identity}
* gated output:     ``g ⊙ y`` (``g`` broadcasts over d when tensor-wise)
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

_ACTIVATIONS = {
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "silu": F.silu,
    "identity": lambda t: t,
}


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 stays float64 (for references); everything else is computed in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def effective_gamma(weight: torch.Tensor, zero_centered_gamma: bool, dtype: torch.dtype):
    w = weight.to(dtype)
    return w + 1 if zero_centered_gamma else w


def _rms_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def low_rank_gate(
    y: torch.Tensor, gate_down: torch.Tensor, gate_up: torch.Tensor, activation: str = "sigmoid"
) -> torch.Tensor:
    """``act(gate_up · silu(gate_down · y))`` in ``y``'s (compute) dtype; ``[..., d or 1]``."""
    h = F.silu(y @ gate_down.to(y.dtype).t())
    return _ACTIVATIONS[activation](h @ gate_up.to(y.dtype).t())


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float = 1e-5,
    zero_centered_gamma: bool = False,
    pre_scale: Optional[torch.Tensor] = None,
    gate_down: Optional[torch.Tensor] = None,
    gate_up: Optional[torch.Tensor] = None,
    gate_activation: str = "sigmoid",
) -> torch.Tensor:
    """RMSNorm, optionally PreAffine (``pre_scale`` = λ1) and/or gated (``gate_down``/``gate_up``)."""
    dt = compute_dtype(x)
    h = x.to(dt)
    if pre_scale is not None:
        h = h * pre_scale.to(dt)
    y = _rms_normalize(h, eps) * effective_gamma(weight, zero_centered_gamma, dt)
    if gate_down is not None:
        y = y * low_rank_gate(y, gate_down, gate_up, gate_activation)
    return y.to(x.dtype)


def dyt(
    x: torch.Tensor,
    alpha: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    zero_centered_gamma: bool = False,
    gate_down: Optional[torch.Tensor] = None,
    gate_up: Optional[torch.Tensor] = None,
    gate_activation: str = "sigmoid",
) -> torch.Tensor:
    """DyT ``γ ⊙ tanh(α x) + β``, optionally followed by the low-rank gate (GateDyT)."""
    dt = compute_dtype(x)
    y = torch.tanh(alpha.to(dt) * x.to(dt)) * effective_gamma(weight, zero_centered_gamma, dt)
    y = y + bias.to(dt)
    if gate_down is not None:
        y = y * low_rank_gate(y, gate_down, gate_up, gate_activation)
    return y.to(x.dtype)


def residual_clip(h: torch.Tensor, threshold: float) -> torch.Tensor:
    """Symmetric clamp of a residual-stream state to ``[-threshold, threshold]``."""
    return h.clamp(-threshold, threshold)
