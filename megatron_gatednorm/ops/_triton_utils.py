"""Triton availability, interpreter detection, launch settings and contiguity for the fused norms.

Importing this module never imports triton; :func:`triton_status` does, once, and caches
the answer. The kernel module (``gated_rms_norm_triton``) is imported lazily through
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
    from megatron_gatednorm.ops import gated_rms_norm_triton

    return gated_rms_norm_triton


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


ROW_ON_CHIP_MAX_BWD = 8192   # widest row the one-pass backward of the ungated norms keeps in registers
INTERPRETER_SMS = 4          # "SMs" on CPU: small, but > 1 so persistent loops and partials are exercised
_ROW_TILE = 8192             # fp32 elements of x per program in the row-on-chip kernels


@dataclass(frozen=True)
class LaunchPlan:
    """Which kernels run for one call and how they are launched (see ``gated_rms_norm_triton``).

    Block sizes are chosen for the register budget, not tuned on a GPU. ``groups`` is the
    number of fp32 weight-gradient partial rows: independent of the token count.
    """

    rows: int
    hidden: int
    rank: int              # 0 without the gate
    rank_pad: int          # gate rank padded to a power of two >= 16 (tl.dot needs K, N >= 16)
    pre: bool
    gated: bool
    fwd_block_m: int
    fwd_block_d: int       # next_pow2(hidden) for the one-pass kernel, a column chunk for the gated one
    fwd_programs: int      # persistent grid
    fwd_warps: int
    bwd_row_on_chip: bool  # one-pass backward (ungated, hidden <= ROW_ON_CHIP_MAX_BWD)
    bwd_block_m: int
    bwd_block_d: int       # row-on-chip: next_pow2(hidden); else the column chunk of the row sweep
    bwd_block_d_w: int     # column slice of one program of the column-owner kernel
    bwd_warps: int
    groups: int            # weight-gradient partial rows (programs of the row-on-chip kernel)
    reduce_block_d: int

    @property
    def fwd_kernel(self) -> str:
        return "_fwd_gated_kernel" if self.gated else "_fwd_row_kernel"

    @property
    def bwd_kernels(self) -> Tuple[str, ...]:
        if self.bwd_row_on_chip:
            return ("_bwd_row_kernel", "_bwd_reduce_kernel")
        return ("_bwd_stats_kernel", "_bwd_cols_kernel", "_bwd_reduce_kernel")


def check_limits(hidden: int, rank: int) -> None:
    """RuntimeError for widths/ranks the kernels do not support."""
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


def _row_tile(block_d: int) -> Tuple[int, int]:
    """(rows, warps) of a program that keeps whole rows of width ``block_d`` in registers."""
    block_m = max(1, min(64, _ROW_TILE // block_d))
    warps = 16 if block_d >= 8192 else 8 if block_d >= 2048 else 4
    return block_m, warps


def launch_plan(rows: int, hidden: int, rank: int, *, pre: bool, sms: int) -> LaunchPlan:
    """The launch plan for ``rows`` x ``hidden`` (``rank`` 0: no gate) on ``sms`` SMs."""
    check_limits(hidden, rank)
    gated = rank > 0
    rank_pad = max(16, next_pow2(rank)) if gated else 16
    chunk = 64 if rank_pad <= 32 else 32   # 128 spills in the gated sweeps (ptxas, sm_90)
    full = max(16, next_pow2(hidden))
    if gated:
        fwd_m, fwd_d, fwd_warps = 16, min(full, chunk), 4
    else:
        fwd_d = full
        fwd_m, fwd_warps = _row_tile(full)
    fwd_blocks = -(-rows // fwd_m)
    on_chip = not gated and hidden <= ROW_ON_CHIP_MAX_BWD
    block_d_w = min(full, 64 if rank_pad <= 32 else 32)
    if on_chip:
        bwd_m, bwd_warps = _row_tile(full)
        bwd_d = full
        groups = max(1, min(-(-rows // bwd_m), 2 * sms))
    else:
        bwd_m, bwd_d, bwd_warps = 16, min(full, chunk), 4
        n_cols = -(-hidden // block_d_w)
        groups = max(1, min(-(-rows // bwd_m), -(-4 * sms // n_cols), 2 * sms))
    return LaunchPlan(
        rows=rows, hidden=hidden, rank=rank if gated else 0, rank_pad=rank_pad, pre=pre, gated=gated,
        fwd_block_m=fwd_m, fwd_block_d=fwd_d, fwd_programs=max(1, min(fwd_blocks, 2 * sms)),
        fwd_warps=fwd_warps, bwd_row_on_chip=on_chip, bwd_block_m=bwd_m, bwd_block_d=bwd_d,
        bwd_block_d_w=block_d_w, bwd_warps=bwd_warps, groups=groups,
        reduce_block_d=min(full, 64 if gated else 256),
    )


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; ``INTERPRETER_SMS`` elsewhere."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return INTERPRETER_SMS


def as_rows(t: torch.Tensor) -> torch.Tensor:
    """``[..., d]`` → ``[M, d]`` with unit column stride (copies only when it must)."""
    t2 = t.reshape(-1, t.shape[-1])
    if t2.shape[1] > 1 and t2.stride(1) != 1:
        t2 = t2.contiguous()
    return t2
