"""Fused-vs-eager check of a model's norm modules on this process's device (``mgn preflight``).

For every distinct norm module of a model (class, width, eps, zero-centred gamma, plugin
config) a fresh copy with random parameters runs forward and backward on a small random batch
in the training dtype twice: ``MGN_NORM_IMPL=eager`` (the reference,
:mod:`megatron_gatednorm.ops.reference`) and ``MGN_NORM_IMPL=fused`` (the Triton kernels). The
output and every gradient (input and parameters) must agree within :data:`TOLERANCES`:
``max |fused - eager| / max |eager|`` per tensor, non-finite values failing.

Norms the kernels do not cover (DyT, a non-sigmoid or tensor-wise gate, …:
:func:`megatron_gatednorm.ops.dispatch.unfused_reason`) run eager in training and are reported
as skipped, as is everything under ``MGN_NORM_IMPL=eager``. The fused path runs compiled on CUDA
only; on CPU it runs in Triton's interpreter (``TRITON_INTERPRET=1`` set before the first fused
call), which is how the CPU tests exercise this check.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Dict, Iterator, List

import torch

from megatron_gatednorm.norm_config import GATED_VARIANTS, NormConfig
from megatron_gatednorm.ops import dispatch

TOLERANCES: Dict[torch.dtype, float] = {
    torch.float32: 2e-3,
    torch.bfloat16: 5e-2,
    torch.float16: 1e-2,
}
"""Allowed ``max |fused - eager| / max |eager|`` per tensor, by training dtype. Both paths keep
the statistics and the gate in fp32 and round once to the dtype, so a working kernel differs by
about one rounding of the largest element (bf16 2^-7 ≈ 7.8e-3, fp16 2^-10 ≈ 9.8e-4; fp32 ≈ 1e-6,
or ≈ 1e-3 where cuBLAS runs the eager gate products in tf32) plus the kernels' own product
precision on a GPU; a broken kernel or device is off by far more. Measured in Triton's interpreter
(every fused variant, zero-centred gamma or not, hidden 64 / rank 4 and hidden 256 / rank 16,
3 seeds): fp32 ≤ 5.6e-7, bf16 ≤ 7.8e-3, fp16 ≤ 8.4e-4. Not yet measured on a GPU."""

ROWS = 40
"""Tokens per check: several rows per program and a partial last block (masked rows exercised)."""


@dataclass(frozen=True)
class NormCase:
    """One distinct norm module to check."""

    cls: type
    hidden: int
    eps: float
    zero_centered_gamma: bool
    norm_config: NormConfig

    @property
    def name(self) -> str:
        gate = f", rank {self.norm_config.rank}" if self.cls.variant in GATED_VARIANTS else ""
        zc = ", zero-centred gamma" if self.zero_centered_gamma else ""
        return f"{self.cls.variant}(hidden {self.hidden}{gate}{zc})"


@dataclass(frozen=True)
class CaseResult:
    case: NormCase
    status: str  # "ok" | "skipped" | "failed"
    detail: str
    error: float = math.nan  # the largest relative error over the output and gradients (when compared)

    def __str__(self) -> str:
        return f"{self.case.name}: {self.status}{': ' + self.detail if self.detail else ''}"


def norm_cases(model: torch.nn.Module, norm_config: NormConfig) -> List[NormCase]:
    """The distinct plugin norm modules of ``model`` (any device, meta included), in module order."""
    from megatron_gatednorm.norms import _ResidualNorm

    seen = {}
    for m in model.modules():
        if isinstance(m, _ResidualNorm):
            case = NormCase(type(m), m.hidden_size, m.eps, m.zero_centered_gamma, norm_config)
            seen.setdefault(case, None)
    return list(seen)


@contextlib.contextmanager
def _impl(value: str) -> Iterator[None]:
    """``MGN_NORM_IMPL=value`` for the duration of the block."""
    old = os.environ.get(dispatch.IMPL_ENV)
    os.environ[dispatch.IMPL_ENV] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(dispatch.IMPL_ENV, None)
        else:
            os.environ[dispatch.IMPL_ENV] = old


def _random_module(case: NormCase, dtype: torch.dtype, device, generator: torch.Generator):
    """The case's module with random parameters (the gate away from its W_up = 0 start)."""
    config = SimpleNamespace(
        layernorm_zero_centered_gamma=case.zero_centered_gamma, sequence_parallel=False,
        params_dtype=torch.float32, use_cpu_initialization=True, perform_initialization=False, init_method=None,
    )
    module = case.cls(config, case.hidden, case.eps, norm_config=case.norm_config)
    base = {"weight": 0.0 if case.zero_centered_gamma else 1.0, "pre_scale": 1.0}
    scale = {"gate_down": case.hidden ** -0.5, "gate_up": 0.5}
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(base.get(name, 0.0) + scale.get(name, 0.2) * torch.randn(p.shape, generator=generator))
    return module.to(device=device, dtype=dtype)


def _forward_backward(module, x: torch.Tensor, dout: torch.Tensor, impl: str) -> Dict[str, torch.Tensor]:
    """Output and gradients (``dx``, ``d<param>``) of one pass with ``MGN_NORM_IMPL=impl``."""
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    with _impl(impl):
        out = module(x)
        out.backward(dout)
    tensors = {"output": out.detach(), "dx": x.grad}
    tensors.update({f"d{name}": p.grad for name, p in module.named_parameters()})
    return tensors


def rel_err(a, b: torch.Tensor) -> float:
    """``max |a - b| / max |b|`` in float64 (inf when ``a`` is missing or of another shape)."""
    if a is None or a.shape != b.shape:
        return math.inf
    diff = (a.double() - b.double()).abs().max()
    return float(diff / b.double().abs().max().clamp_min(1e-30))


def check_case(case: NormCase, dtype: torch.dtype, device, rows: int = ROWS, seed: int = 0) -> CaseResult:
    """Compare the fused and eager paths of one norm module (see the module doc)."""
    if dispatch.requested_impl() == "eager":
        return CaseResult(case, "skipped", f"{dispatch.IMPL_ENV}=eager (training runs the eager path)")
    g = torch.Generator().manual_seed(seed)
    module = _random_module(case, dtype, device, g)
    why = dispatch.unfused_reason(hidden=case.hidden, dtype=dtype, **module.dispatch_config())
    if why is not None:
        return CaseResult(case, "skipped", f"{why} (training runs the eager path)")
    x = (2.0 * torch.randn(rows, case.hidden, generator=g)).to(device=device, dtype=dtype)
    dout = torch.randn(rows, case.hidden, generator=g).to(device=device, dtype=dtype)
    eager = _forward_backward(module, x, dout, "eager")
    try:
        fused = _forward_backward(module, x, dout, "fused")
    except Exception as e:  # noqa: BLE001 - a kernel that does not compile or launch is a failed check
        return CaseResult(case, "failed", f"fused path raised {type(e).__name__}: {str(e)[:500]}")
    tol = TOLERANCES[dtype]
    errors = {name: rel_err(fused.get(name), ref) for name, ref in eager.items() if ref is not None}
    bad = {name: e for name, e in errors.items() if not e <= tol}  # NaN fails too
    worst = max(errors.values())
    if bad:
        listed = ", ".join(f"{name} {e:.3g}" for name, e in bad.items())
        dt = str(dtype).replace("torch.", "")
        return CaseResult(case, "failed", f"max |fused - eager| / max |eager| above {tol:g} ({dt}): {listed}", worst)
    return CaseResult(case, "ok", f"max rel err {worst:.2g} <= {tol:g}", worst)


def check_fused_norms(cases: List[NormCase], dtype: torch.dtype, device, rows: int = ROWS) -> List[CaseResult]:
    """:func:`check_case` for every case."""
    return [check_case(case, dtype, device, rows) for case in cases]
