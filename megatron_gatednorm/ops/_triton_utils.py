"""Triton availability, interpreter detection, launch settings and contiguity for the fused norms.

Importing this module never imports triton; :func:`triton_status` does, once, and caches
the answer. The kernel module (``triton_rms_norm``) is imported lazily through
:func:`kernel_module` because triton decides at ``@triton.jit`` decoration time whether a
kernel is compiled or interpreted (``TRITON_INTERPRET=1``), so the environment variable must
be set before the first fused call, not merely before ``import megatron_gatednorm``.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Tuple

import torch

MAX_FUSED_HIDDEN = 16384
MAX_FUSED_RANK = 64
FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@functools.lru_cache(maxsize=None)
def triton_status() -> Tuple[bool, str]:
    """``(True, version)`` if triton imports, else ``(False, "ImportError: ...")``."""
    try:
        import triton  # noqa: F401
    except Exception as e:  # ImportError, or a broken install raising at import time
        return False, f"{type(e).__name__}: {e}"
    return True, triton.__version__


def interpreting() -> bool:
    """Whether ``TRITON_INTERPRET`` asks for triton's CPU interpreter (1/true/on/yes). Triton
    fixes the mode when the kernel module is first imported; later changes of the variable
    change this answer, not the kernels."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def kernel_module():
    """The kernel module, imported on first use (after the caller has set TRITON_INTERPRET)."""
    ok, why = triton_status()
    if not ok:
        raise RuntimeError(f"fused norm kernels need triton, which is not importable ({why})")
    from megatron_gatednorm.ops import triton_rms_norm

    return triton_rms_norm


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


@dataclass(frozen=True)
class LaunchConfig:
    block_m: int        # rows per program; >= 16 because tl.dot needs M, N, K >= 16
    block_d: int        # column chunk of the row-wise kernels (forward, backward dx)
    block_d_w: int      # column slice owned by one program of the weight-gradient kernel
    rank_pad: int       # gate rank padded to a power of two >= 16 (padding is masked to zero)
    num_warps: int
    num_warps_w: int


def launch_config(hidden: int, rank: int) -> LaunchConfig:
    """Block sizes sized for the register budget (untuned: no GPU measurement behind them).

    Raises RuntimeError for widths/ranks the kernels do not support.
    """
    if hidden > MAX_FUSED_HIDDEN:
        raise RuntimeError(
            f"hidden size {hidden} exceeds the fused kernels' maximum {MAX_FUSED_HIDDEN}; "
            "use the eager path (MGN_NORM_IMPL=eager)"
        )
    if rank > MAX_FUSED_RANK:
        raise RuntimeError(
            f"gate rank {rank} exceeds the fused kernels' maximum {MAX_FUSED_RANK}; "
            "use the eager path (MGN_NORM_IMPL=eager)"
        )
    rank_pad = max(16, next_pow2(rank))
    block_d = min(max(16, next_pow2(hidden)), 128 if rank_pad <= 32 else 64)
    block_d_w = min(max(16, next_pow2(hidden)), 64 if rank_pad <= 32 else 32)
    return LaunchConfig(
        block_m=16, block_d=block_d, block_d_w=block_d_w, rank_pad=rank_pad,
        num_warps=4, num_warps_w=4,
    )


def num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def as_rows(t: torch.Tensor) -> torch.Tensor:
    """``[..., d]`` → ``[M, d]`` with unit column stride (copies only when it must)."""
    t2 = t.reshape(-1, t.shape[-1])
    if t2.shape[1] > 1 and t2.stride(1) != 1:
        t2 = t2.contiguous()
    return t2
