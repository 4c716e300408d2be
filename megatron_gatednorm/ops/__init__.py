"""Numerical kernels: the eager reference and the fused Triton kernels.

The fused functional API (``gated_rms_norm``, ``fused_rms_norm``, ``GatedRMSNormFunction``)
is resolved lazily, so importing this package never imports triton: triton fixes compiled
vs. interpreted mode (``TRITON_INTERPRET``) when the kernels are first defined. Accessing
these names without an importable triton raises RuntimeError with the import error.
"""

from megatron_gatednorm.ops.reference import dyt, low_rank_gate, residual_clip, rms_norm

_FUSED = ("gated_rms_norm", "fused_rms_norm", "GatedRMSNormFunction")

__all__ = ["dyt", "low_rank_gate", "residual_clip", "rms_norm", *_FUSED]


def __getattr__(name):
    if name in _FUSED:
        from megatron_gatednorm.ops._triton_utils import kernel_module

        return getattr(kernel_module(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
