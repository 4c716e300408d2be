"""Numerical kernels: the eager reference (and, where available, fused kernels)."""

from megatron_gatednorm.ops.reference import dyt, low_rank_gate, residual_clip, rms_norm

__all__ = ["dyt", "low_rank_gate", "residual_clip", "rms_norm"]
