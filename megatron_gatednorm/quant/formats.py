"""Quantize-dequantize ("fake quantization") of tensors in NVFP4 and symmetric INT formats.

NVFP4 (NVIDIA's 4-bit float with two-level scaling, as the paper's W4A4):

* elements are FP4 E2M1, whose magnitudes are {0, 0.5, 1, 1.5, 2, 3, 4, 6}; rounding is to the
  nearest grid value, ties to the value with an even mantissa (0, 1, 2, 4), as ``cvt.rn``;
* the last dimension is split into blocks of 16; each block has a scale in FP8 E4M3;
* a second-level FP32 scale ``g = amax / (6 · 448)`` keeps the block scales in E4M3's range:
  ``scale_b = e4m3(amax_b / 6 / g)``, ``x̂ = e2m1(x / (scale_b · g)) · scale_b · g``.
  Weights use one ``g`` per tensor; activations one per token, computed on the fly
  (the paper's "dynamic per-token first-stage scaling").

INT-b symmetric round-to-nearest: ``s = amax / (2^(b-1) - 1)`` over the reduced dimension(s),
``x̂ = clamp(round(x / s), -(2^(b-1)-1), 2^(b-1)-1) · s``; weights per output channel,
activations per token.

All functions return a tensor of the input's shape and dtype; arithmetic is in float32.
"""

from __future__ import annotations

import torch

E2M1_MAX = 6.0
E4M3_MAX = 448.0
NVFP4_BLOCK = 16
# Midpoints between consecutive E2M1 magnitudes and the value a tie goes to (even mantissa).
_E2M1_GRID = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
_E2M1_EVEN = torch.tensor([True, False, True, False, True, False, True, False])


def round_e2m1(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest FP4 E2M1 value (saturating at ±6), ties to even mantissa."""
    grid = _E2M1_GRID.to(x.device)
    mag = x.abs().clamp(max=E2M1_MAX)
    hi = torch.searchsorted(grid, mag.contiguous()).clamp(1, len(grid) - 1)  # grid[hi-1] < mag <= grid[hi]
    lo = hi - 1
    d_lo, d_hi = mag - grid[lo], grid[hi] - mag
    pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & _E2M1_EVEN.to(x.device)[hi])
    return torch.where(pick_hi, grid[hi], grid[lo]).copysign(x) * (mag > 0)


def _e4m3(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(max=E4M3_MAX).to(torch.float8_e4m3fn).to(torch.float32)


def nvfp4(x: torch.Tensor, per_token: bool = False) -> torch.Tensor:
    """NVFP4 fake quantization along the last dimension (padded to a multiple of 16).

    ``per_token=False``: one second-level scale for the whole tensor (weights);
    ``per_token=True``: one per row of the last dimension (dynamic activations).
    """
    shape, dtype = x.shape, x.dtype
    d = shape[-1]
    pad = (-d) % NVFP4_BLOCK
    v = torch.nn.functional.pad(x.float().reshape(-1, d), (0, pad))
    blocks = v.reshape(v.shape[0], -1, NVFP4_BLOCK)
    amax = blocks.abs().amax(dim=(1, 2), keepdim=True) if per_token else blocks.abs().amax().reshape(1, 1, 1)
    g = amax / (E2M1_MAX * E4M3_MAX)
    g = torch.where(g > 0, g, torch.ones_like(g))
    scale = _e4m3(blocks.abs().amax(dim=2, keepdim=True) / E2M1_MAX / g)
    denom = scale * g
    q = torch.where(denom > 0, round_e2m1(blocks / torch.where(denom > 0, denom, 1.0)) * denom, 0.0)
    return q.reshape(v.shape)[:, :d].reshape(shape).to(dtype)


def int_symmetric(x: torch.Tensor, bits: int, per_row: bool = True) -> torch.Tensor:
    """Symmetric INT-``bits`` RTN with one scale per row of the last dimension (per output
    channel for a ``[out, in]`` weight, per token for ``[..., tokens, features]`` activations),
    or one for the tensor with ``per_row=False``."""
    if bits < 2:
        raise ValueError(f"invalid bits={bits}: valid choices are integers >= 2")
    qmax = 2 ** (bits - 1) - 1
    v = x.float()
    amax = v.abs().amax(dim=-1, keepdim=True) if per_row else v.abs().amax()
    scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
    return (torch.clamp(torch.round(v / scale), -qmax, qmax) * scale).to(x.dtype)
