"""Choose between the eager reference and the fused Triton kernels for one norm call.

The choice is controlled by the environment variable ``MGN_NORM_IMPL`` (read only in
:func:`requested_impl`):

* ``auto`` (default): fused when the input is on CUDA, triton imports and the kernels cover
  the configuration; eager otherwise, with the reason.
* ``eager``: always the eager reference.
* ``fused``: always the kernels; ``RuntimeError`` naming the reason if they cannot run. On CPU
  this works only in triton's interpreter (``TRITON_INTERPRET=1``), which is how the CPU tests
  exercise the fused path.

Every decision carries a reason string such as ``"eager: input on CPU"`` or
``"eager: gate_activation=tanh not fused"``; the norm modules log it once.
"""

from __future__ import annotations

import os
from typing import NamedTuple, Optional

import torch

from megatron_gatednorm.ops._triton_utils import (
    FUSED_DTYPES,
    MAX_FUSED_HIDDEN,
    MAX_FUSED_RANK,
    interpreting,
    triton_status,
)

IMPL_ENV = "MGN_NORM_IMPL"
IMPLS = ("auto", "eager", "fused")
FUSED_GATE_ACTIVATIONS = ("sigmoid",)
FUSED_GRANULARITIES = ("elementwise",)


class ImplDecision(NamedTuple):
    impl: str    # "eager" or "fused"
    reason: str  # "<impl>: <why>"


def requested_impl() -> str:
    """The value of ``MGN_NORM_IMPL`` (default ``auto``); ValueError listing the choices."""
    value = os.environ.get(IMPL_ENV, "auto").strip().lower() or "auto"
    if value not in IMPLS:
        raise ValueError(f"invalid {IMPL_ENV}={value!r}: valid choices: {', '.join(IMPLS)}")
    return value


def unfused_reason(
    *,
    hidden: int,
    dtype: torch.dtype,
    dyt: bool = False,
    gated: bool = False,
    gate_activation: str = "sigmoid",
    granularity: str = "elementwise",
    rank: int = 0,
) -> Optional[str]:
    """Why the kernels do not cover this configuration (None if they do); device aside."""
    if dyt:
        return "DyT not fused"
    if gated:
        if gate_activation not in FUSED_GATE_ACTIVATIONS:
            return f"gate_activation={gate_activation} not fused"
        if granularity not in FUSED_GRANULARITIES:
            return f"granularity={granularity} not fused"
        if rank > MAX_FUSED_RANK:
            return f"rank={rank} > {MAX_FUSED_RANK} not fused"
    if hidden > MAX_FUSED_HIDDEN:
        return f"hidden={hidden} > {MAX_FUSED_HIDDEN} not fused"
    if dtype not in FUSED_DTYPES:
        return f"dtype {dtype} not fused"
    ok, why = triton_status()
    if not ok:
        return f"triton not importable ({why})"
    return None


def choose_impl(x: torch.Tensor, **config) -> ImplDecision:
    """Decide the path for input ``x`` and a norm described by ``unfused_reason``'s keywords."""
    requested = requested_impl()
    if requested == "eager":
        return ImplDecision("eager", f"eager: {IMPL_ENV}=eager")
    why = unfused_reason(hidden=x.shape[-1], dtype=x.dtype, **config)
    if why is None and x.device.type != "cuda":
        if requested == "fused" and interpreting():
            return ImplDecision("fused", f"fused: {IMPL_ENV}=fused, triton interpreter on {x.device}")
        why = f"input on {x.device.type.upper()}"
        if requested == "fused":
            why += " (the fused path runs on CPU only with TRITON_INTERPRET=1)"
    if why is not None:
        if requested == "fused":
            raise RuntimeError(f"{IMPL_ENV}=fused but the fused path cannot run: {why}")
        return ImplDecision("eager", f"eager: {why}")
    return ImplDecision("fused", f"fused: {x.device.type} input, triton {triton_status()[1]}")
