"""Bytes each fused norm kernel moves to and from DRAM: the design's figures, one place.

The model counts every byte a kernel loads once (its unique addresses: a vector that every
program loads, such as ``γ``, is read from DRAM once and from L2 after) and every byte it
stores. ``l2_reread`` is what a kernel loads a second time *by design*, expecting an L2 hit
(the gated forward's second sweep over its row block, loaded ``evict_first`` after an
``evict_last`` first sweep); it is not in ``read``. These figures are checked against the
kernels' own loads and stores, counted in triton's interpreter (``tests/test_kernel_traffic.py``),
and used by ``benchmarks/norms.py`` for achieved bandwidth; ``ncu`` on a GPU measures the real
DRAM bytes.

Per token, with activation bytes ``e`` (2 for bf16) and hidden ``d`` ("``k·d``" below means
``k·d·e`` bytes when ``e`` = 1 unit), the activation traffic is:

=====================  ===========  =========================================================
kernel                 activations  small per-token tensors
=====================  ===========  =========================================================
``_fwd_row_kernel``    2d (x, out)  rstd (4 B)
``_fwd_gated_kernel``  2d (x, out)  rstd, z (4·r_pad B); + 1d re-read from L2
``_bwd_row_kernel``    3d (x,dy,dx) rstd; fp32 partial rows ``[groups, d]`` for dγ, dλ1
``_bwd_stats_kernel``  2d (x, dy)   rstd, z in; dz (4·r_pad B), c (4 B) out
``_bwd_cols_kernel``   3d (x,dy,dx) rstd, c, z, dz in; partial rows for dγ, dλ1, dW_u, dW_d
``_bwd_reduce_kernel`` —            partials in, parameter gradients out
=====================  ===========  =========================================================

So forward is 2d at the floor for every variant, the ungated backward (d <= 8192) 3d at the
floor, and the gated backward 5d against a 3d floor (x and dy are read twice: see
``gated_rms_norm_triton``'s docstring for why Triton cannot do better here).
"""

from __future__ import annotations

from typing import Dict, NamedTuple

FP32 = 4


class KernelBytes(NamedTuple):
    read: int
    write: int
    l2_reread: int = 0

    @property
    def total(self) -> int:
        return self.read + self.write


def floor_bytes(tokens: int, hidden: int, act_bytes: int) -> Dict[str, int]:
    """What any norm must move: forward reads x and writes out; backward reads x and dy and
    writes dx (parameters and per-row statistics left out)."""
    unit = tokens * hidden * act_bytes
    return {"fwd": 2 * unit, "bwd": 3 * unit, "fwd+bwd": 5 * unit}


def design_bytes(plan, act_bytes: int, param_bytes: int) -> Dict[str, Dict[str, KernelBytes]]:
    """``{"fwd": {kernel: KernelBytes}, "bwd": {...}}`` for a ``_triton_utils.LaunchPlan``."""
    t, d, r, rp = plan.rows, plan.hidden, plan.rank, plan.rank_pad
    act = t * d * act_bytes
    vecs = d * param_bytes * (2 if plan.pre else 1)       # γ and λ1
    rstd = t * FP32
    zbuf = t * rp * FP32                                   # z or dz, fp32 [T, r_pad]
    n_vec_grads = 2 if plan.pre else 1
    partials = plan.groups * d * FP32 * n_vec_grads
    if plan.gated:
        partials += 2 * plan.groups * d * rp * FP32       # dW_u and dW_dᵀ
    fwd: Dict[str, KernelBytes] = {}
    bwd: Dict[str, KernelBytes] = {}
    if plan.gated:
        w = r * d * param_bytes                            # one gate matrix
        fwd["_fwd_gated_kernel"] = KernelBytes(act + vecs + 2 * w, act + rstd + zbuf, l2_reread=act)
        bwd["_bwd_stats_kernel"] = KernelBytes(2 * act + vecs + w + rstd + zbuf, zbuf + rstd)
        bwd["_bwd_cols_kernel"] = KernelBytes(2 * act + vecs + 2 * w + 2 * rstd + 2 * zbuf, act + partials)
        grads = vecs + 2 * w
    else:
        fwd["_fwd_row_kernel"] = KernelBytes(act + vecs, act + rstd)
        if plan.bwd_row_on_chip:
            bwd["_bwd_row_kernel"] = KernelBytes(2 * act + vecs + rstd, act + partials)
        else:
            bwd["_bwd_stats_kernel"] = KernelBytes(2 * act + vecs + rstd, rstd)
            bwd["_bwd_cols_kernel"] = KernelBytes(2 * act + vecs + 2 * rstd, act + partials)
        grads = vecs
    bwd["_bwd_reduce_kernel"] = KernelBytes(partials, grads)
    return {"fwd": fwd, "bwd": bwd}


def per_token(kernels: Dict[str, KernelBytes], tokens: int, hidden: int, act_bytes: int) -> float:
    """Total bytes of ``kernels`` per token, in units of ``hidden * act_bytes``."""
    return sum(k.total for k in kernels.values()) / (tokens * hidden * act_bytes)
