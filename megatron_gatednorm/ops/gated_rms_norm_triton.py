"""Triton kernels for RMSNorm, PreAffine RMSNorm and GatedNorm (optionally combined).

Per row ``x ∈ R^d`` (fp32 statistics; ``s`` = PreAffine λ1, or 1; ``γ`` = ``weight``, or
``1 + weight`` with zero-centred gamma; ``W_d`` = gate_down ``[r, d]``, ``W_u`` = gate_up
``[d, r]``; element-wise sigmoid gate)::

    u = s ⊙ x                     rstd = 1 / sqrt(mean(u²) + eps)
    n = rstd · u                  y = γ ⊙ n                      (RMSNorm output)
    z = W_d y = rstd · W_d (γ ⊙ s ⊙ x)                           (r-vector)
    a = silu(z)                   l = W_u a                     g = σ(l)
    out = g ⊙ y                   (out = y without the gate)

Backward, given ``do = ∂L/∂out`` (``σ'(t) = σ(t)(1-σ(t))``, ``silu'(t) = σ(t)(1 + t(1-σ(t)))``)::

    dl  = do ⊙ y ⊙ g(1-g)                         da = W_uᵀ dl        dz = da ⊙ silu'(z)
    dy  = do ⊙ g + W_dᵀ dz
    c   = mean(dy ⊙ y) = (Σ do ⊙ out + dz · z) / d        (no extra d-wide pass needed)
    du  = rstd · (γ ⊙ dy − c · n)
    dx  = s ⊙ du
    dγ  = Σ_rows dy ⊙ n          (= ∂L/∂weight, also with zero-centred gamma: γ = 1 + weight)
    dλ1 = Σ_rows du ⊙ x
    dW_u = Σ_rows dl ⊗ a         ([d, r])
    dW_d = Σ_rows dz ⊗ y         ([r, d])

Kernels (DRAM bytes per token in units of ``d`` activations; exact figures in ``traffic``):

* ``_fwd_row_kernel`` (no gate): whole rows in registers, persistent grid; reads x once,
  writes out and ``rstd``: 2d, the floor.
* ``_fwd_gated_kernel``: the gate needs ``z = W_d y`` of the whole row before any output, and a
  row block of 16 rows (``tl.dot`` needs 16) does not fit in registers at d = 4096. So two
  sweeps over the block: the first (loads ``evict_last``) accumulates Σu² and the projection
  with one rank-r ``tl.dot`` per chunk; the second (loads ``evict_first``) re-reads the block
  and writes ``out``. The grid is persistent (about 2 programs per SM), so ~2·SMs row blocks
  are in flight (17 MB at d = 4096, bf16) and the re-read hits L2: 2d from DRAM. Saved: x,
  ``rstd [M]``, ``z [M, r_pad]``.
* ``_bwd_row_kernel`` (no gate, d <= 8192): whole rows in registers, persistent; reads x and
  dy once, writes dx, keeps dγ and dλ1 in fp32 registers across its rows and writes one
  partial row per program: 3d, the floor.
* gated (and ungated d > 8192): ``_bwd_stats_kernel`` reads x and dy once per row to reduce
  ``dz`` and ``c`` (the 1 + r numbers each row needs before any dx); ``_bwd_cols_kernel`` owns
  a column slice and a group of row blocks, keeps its slices of γ, λ1, W_u, W_dᵀ and of all
  four weight gradients in registers, re-reads x and dy, writes dx and one partial row per
  group: 5d in all, against the 3d floor. A one-pass gated backward needs ``[d, r]`` fp32
  accumulators for dW_u and dW_d per program (512 KB at d = 4096, far beyond registers), or a
  cross-program exchange of the 17 row numbers (a cluster kernel with the row in shared
  memory, as Quack does in CuTe-DSL), which Triton does not express; read-modify-write of
  per-program partials in global memory would cost more than the second read.
* ``_bwd_reduce_kernel``: one launch sums the fp32 partial rows (``groups`` of them, about
  1–2 per SM, independent of the token count) in a fixed order and writes every parameter
  gradient in its parameter's dtype: deterministic, no atomics, no ``torch.zeros``.

The gate ``g = σ(W_u a)`` is computed once per element in each kernel that needs it (stats and
cols), ``W_u`` loaded once per chunk, the rank is a compile-time constant (``R == r_pad``: no
rank masks, vectorised loads).

Dot precision (decided, and the same in the interpreter and compiled): fp32 inputs use ieee
fp32 products (the eager spec; CUDA cores, slow, not a production dtype). 16-bit inputs split
each ``tl.dot`` operand into two bf16 parts, ``t ≈ hi + lo``, and take three bf16 tensor-core
products ``lo·hi + hi·lo + hi·hi`` with fp32 accumulation: ≈ 2^-16 relative error per product,
the accuracy the fp32 parameter gradients need (one bf16 product, ≈ 2^-9, put a systematic
5.6e-3 relative error into dγ, measured in the interpreter), at three times the tensor-core
work of one bf16 product (≈ 50 GFLOP-equivalent per GatedNorm fwd+bwd at 16384 × 4096, r = 16:
~50 µs of H200 tensor-core time, overlapping the memory traffic) instead of ieee fp32 FMAs on
CUDA cores (~0.28 ms). Triton's interpreter cannot take bf16 ``tl.dot`` operands, so there the
same bf16 parts are converted to fp32 and multiplied in fp32: bf16 × bf16 products are exact
in fp32, so compiled and interpreted kernels differ only in fp32 accumulation order, and the
tests' bounds (``tests/test_fused_ops.py``) hold for both.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from megatron_gatednorm.ops._triton_utils import (
    FUSED_DTYPES,
    as_rows,
    check_limits,
    launch_plan,
    num_sms,
)


@triton.jit
def _gamma_s(W, S, cols, cmask, HAS_S: tl.constexpr, ZERO_CENTERED: tl.constexpr):
    gamma = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    if ZERO_CENTERED:
        gamma = gamma + 1.0
    if HAS_S:
        s = tl.load(S + cols, mask=cmask, other=0.0).to(tl.float32)
    else:
        s = tl.zeros_like(gamma) + 1.0
    return gamma, s


@triton.jit
def _split_bf16(t, EMULATE: tl.constexpr):
    """``t ≈ hi + lo`` with bf16 ``hi`` and ``lo`` (16 mantissa bits together); fp32 copies in
    the interpreter, whose ``tl.dot`` cannot take bf16 operands (the values are the same)."""
    hi = t.to(tl.bfloat16)
    lo = (t - hi.to(tl.float32)).to(tl.bfloat16)
    if EMULATE:
        return hi.to(tl.float32), lo.to(tl.float32)
    return hi, lo


@triton.jit
def _dot(a, b, LOWP: tl.constexpr, EMULATE: tl.constexpr):
    """fp32 ``a @ b``: ieee products, or (LOWP) three bf16 tensor-core products
    ``lo·hi + hi·lo + hi·hi`` accumulated in fp32 (≈ 2^-16 relative product error)."""
    if LOWP:
        a_hi, a_lo = _split_bf16(a, EMULATE)
        b_hi, b_lo = _split_bf16(b, EMULATE)
        if EMULATE:
            acc = tl.dot(a_lo, b_hi, input_precision="ieee")
            acc = tl.dot(a_hi, b_lo, acc, input_precision="ieee")
            acc = tl.dot(a_hi, b_hi, acc, input_precision="ieee")
        else:
            acc = tl.dot(a_lo, b_hi, out_dtype=tl.float32)
            acc = tl.dot(a_hi, b_lo, acc, out_dtype=tl.float32)
            acc = tl.dot(a_hi, b_hi, acc, out_dtype=tl.float32)
    else:
        acc = tl.dot(a, b, input_precision="ieee")
    return acc


@triton.jit
def _load_w(ptrs, cmask, rr, R: tl.constexpr, RP: tl.constexpr, COLS_FIRST: tl.constexpr):
    """A [cols, r_pad] (COLS_FIRST) or [r_pad, cols] tile of a gate matrix in fp32, zero padded."""
    if R == RP:
        if COLS_FIRST:
            mask = cmask[:, None]
        else:
            mask = cmask[None, :]
    else:
        if COLS_FIRST:
            mask = cmask[:, None] & (rr[None, :] < R)
        else:
            mask = (rr[:, None] < R) & cmask[None, :]
    return tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _fwd_row_kernel(
    X, OUT, W, S, RSTD,
    M, D, stride_x, stride_out, eps, n_blocks,
    BM: tl.constexpr, BD: tl.constexpr, HAS_S: tl.constexpr, ZERO_CENTERED: tl.constexpr,
):
    cols = tl.arange(0, BD)
    cmask = cols < D
    gamma, s = _gamma_s(W, S, cols, cmask, HAS_S, ZERO_CENTERED)
    for rb in range(tl.program_id(0), n_blocks, tl.num_programs(0)):
        # int64 rows: row * stride overflows int32 beyond 2^31 elements.
        rows = tl.arange(0, BM).to(tl.int64) + rb * BM
        rmask = rows < M
        m2 = rmask[:, None] & cmask[None, :]
        x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=m2, other=0.0).to(tl.float32)
        u = x * s[None, :]
        rstd = 1.0 / tl.sqrt(tl.sum(u * u, axis=1) / D + eps)
        tl.store(RSTD + rows, rstd, mask=rmask)
        y = u * rstd[:, None] * gamma[None, :]
        tl.store(OUT + rows[:, None] * stride_out + cols[None, :], y.to(OUT.dtype.element_ty), mask=m2)


@triton.jit
def _fwd_gated_kernel(
    X, OUT, W, S, WD, WU, RSTD, Z,
    M, D, stride_x, stride_out, eps, n_blocks,
    BM: tl.constexpr, BD: tl.constexpr, R: tl.constexpr, RP: tl.constexpr,
    HAS_S: tl.constexpr, ZERO_CENTERED: tl.constexpr, LOWP: tl.constexpr, EMULATE: tl.constexpr,
):
    rr = tl.arange(0, RP)
    for rb in range(tl.program_id(0), n_blocks, tl.num_programs(0)):
        rows = tl.arange(0, BM).to(tl.int64) + rb * BM
        rmask = rows < M
        sumsq = tl.zeros((BM,), tl.float32)
        zacc = tl.zeros((BM, RP), tl.float32)
        for d0 in range(0, D, BD):
            cols = d0 + tl.arange(0, BD)
            cmask = cols < D
            m2 = rmask[:, None] & cmask[None, :]
            x = tl.load(
                X + rows[:, None] * stride_x + cols[None, :], mask=m2, other=0.0, eviction_policy="evict_last"
            ).to(tl.float32)
            gamma, s = _gamma_s(W, S, cols, cmask, HAS_S, ZERO_CENTERED)
            u = x * s[None, :]
            sumsq += tl.sum(u * u, axis=1)
            wd_t = _load_w(WD + rr[None, :] * D + cols[:, None], cmask, rr, R, RP, True)
            zacc += _dot(u * gamma[None, :], wd_t, LOWP, EMULATE)
        rstd = 1.0 / tl.sqrt(sumsq / D + eps)
        tl.store(RSTD + rows, rstd, mask=rmask)
        z = zacc * rstd[:, None]
        tl.store(Z + rows[:, None] * RP + rr[None, :], z, mask=rmask[:, None])
        a = z * tl.sigmoid(z)
        for d0 in range(0, D, BD):
            cols = d0 + tl.arange(0, BD)
            cmask = cols < D
            m2 = rmask[:, None] & cmask[None, :]
            x = tl.load(
                X + rows[:, None] * stride_x + cols[None, :], mask=m2, other=0.0, eviction_policy="evict_first"
            ).to(tl.float32)
            gamma, s = _gamma_s(W, S, cols, cmask, HAS_S, ZERO_CENTERED)
            wu = _load_w(WU + cols[:, None] * R + rr[None, :], cmask, rr, R, RP, True)
            g = tl.sigmoid(_dot(a, tl.trans(wu), LOWP, EMULATE))
            y = x * s[None, :] * rstd[:, None] * gamma[None, :] * g
            tl.store(OUT + rows[:, None] * stride_out + cols[None, :], y.to(OUT.dtype.element_ty), mask=m2)


@triton.jit
def _bwd_row_kernel(
    X, DO, DX, W, S, RSTD, DW_P, DS_P,
    M, D, stride_x, stride_do, stride_dx, n_blocks,
    BM: tl.constexpr, BD: tl.constexpr, HAS_S: tl.constexpr, ZERO_CENTERED: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BD)
    cmask = cols < D
    gamma, s = _gamma_s(W, S, cols, cmask, HAS_S, ZERO_CENTERED)
    dgamma = tl.zeros((BD,), tl.float32)
    ds = tl.zeros((BD,), tl.float32)
    for rb in range(pid, n_blocks, tl.num_programs(0)):
        rows = tl.arange(0, BM).to(tl.int64) + rb * BM
        rmask = rows < M
        m2 = rmask[:, None] & cmask[None, :]
        x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=m2, other=0.0).to(tl.float32)
        do = tl.load(DO + rows[:, None] * stride_do + cols[None, :], mask=m2, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + rows, mask=rmask, other=0.0)
        n = x * s[None, :] * rstd[:, None]
        c = tl.sum(do * n * gamma[None, :], axis=1) / D
        du = rstd[:, None] * (gamma[None, :] * do - c[:, None] * n)
        tl.store(DX + rows[:, None] * stride_dx + cols[None, :], (du * s[None, :]).to(DX.dtype.element_ty), mask=m2)
        dgamma += tl.sum(do * n, axis=0)
        if HAS_S:
            ds += tl.sum(du * x, axis=0)
    tl.store(DW_P + pid * D + cols, dgamma, mask=cmask)
    if HAS_S:
        tl.store(DS_P + pid * D + cols, ds, mask=cmask)


@triton.jit
def _bwd_stats_kernel(
    X, DO, W, S, WU, RSTD, Z, DZ, C,
    M, D, stride_x, stride_do,
    BM: tl.constexpr, BD: tl.constexpr, R: tl.constexpr, RP: tl.constexpr,
    HAS_S: tl.constexpr, GATED: tl.constexpr, ZERO_CENTERED: tl.constexpr,
    LOWP: tl.constexpr, EMULATE: tl.constexpr,
):
    rows = tl.arange(0, BM).to(tl.int64) + tl.program_id(0) * BM
    rmask = rows < M
    rr = tl.arange(0, RP)
    rstd = tl.load(RSTD + rows, mask=rmask, other=0.0)
    acc = tl.zeros((BM,), tl.float32)
    if GATED:
        z = tl.load(Z + rows[:, None] * RP + rr[None, :], mask=rmask[:, None], other=0.0)
        sz = tl.sigmoid(z)
        a = z * sz
        da = tl.zeros((BM, RP), tl.float32)
    for d0 in range(0, D, BD):
        cols = d0 + tl.arange(0, BD)
        cmask = cols < D
        m2 = rmask[:, None] & cmask[None, :]
        x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=m2, other=0.0).to(tl.float32)
        do = tl.load(DO + rows[:, None] * stride_do + cols[None, :], mask=m2, other=0.0).to(tl.float32)
        gamma, s = _gamma_s(W, S, cols, cmask, HAS_S, ZERO_CENTERED)
        y = x * s[None, :] * rstd[:, None] * gamma[None, :]
        if GATED:
            wu = _load_w(WU + cols[:, None] * R + rr[None, :], cmask, rr, R, RP, True)
            g = tl.sigmoid(_dot(a, tl.trans(wu), LOWP, EMULATE))
            gdo_y = do * g * y
            acc += tl.sum(gdo_y, axis=1)
            da += _dot(gdo_y * (1.0 - g), wu, LOWP, EMULATE)
        else:
            acc += tl.sum(do * y, axis=1)
    if GATED:
        dz = da * sz * (1.0 + z * (1.0 - sz))
        acc += tl.sum(dz * z, axis=1)
        tl.store(DZ + rows[:, None] * RP + rr[None, :], dz, mask=rmask[:, None])
    tl.store(C + rows, acc / D, mask=rmask)


@triton.jit
def _bwd_cols_kernel(
    X, DO, DX, W, S, WD, WU, RSTD, Z, DZ, C,
    DW_P, DS_P, DWU_P, DWD_P,
    M, D, stride_x, stride_do, stride_dx, num_groups,
    BM: tl.constexpr, BDW: tl.constexpr, R: tl.constexpr, RP: tl.constexpr,
    HAS_S: tl.constexpr, GATED: tl.constexpr, ZERO_CENTERED: tl.constexpr,
    LOWP: tl.constexpr, EMULATE: tl.constexpr,
):
    group = tl.program_id(1)
    cols = tl.program_id(0) * BDW + tl.arange(0, BDW)
    cmask = cols < D
    rr = tl.arange(0, RP)
    gamma, s = _gamma_s(W, S, cols, cmask, HAS_S, ZERO_CENTERED)
    dgamma = tl.zeros((BDW,), tl.float32)
    ds = tl.zeros((BDW,), tl.float32)
    if GATED:
        # The program's column slice is fixed: its slices of W_u and W_dᵀ stay in registers.
        wu = _load_w(WU + cols[:, None] * R + rr[None, :], cmask, rr, R, RP, True)
        wd_t = _load_w(WD + rr[None, :] * D + cols[:, None], cmask, rr, R, RP, True)
        dwu = tl.zeros((BDW, RP), tl.float32)
        dwd_t = tl.zeros((BDW, RP), tl.float32)
    for r0 in range(group * BM, M, num_groups * BM):
        rows = tl.arange(0, BM).to(tl.int64) + r0
        rmask = rows < M
        m2 = rmask[:, None] & cmask[None, :]
        x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=m2, other=0.0).to(tl.float32)
        do = tl.load(DO + rows[:, None] * stride_do + cols[None, :], mask=m2, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + rows, mask=rmask, other=0.0)
        c = tl.load(C + rows, mask=rmask, other=0.0)
        n = x * s[None, :] * rstd[:, None]
        if GATED:
            z = tl.load(Z + rows[:, None] * RP + rr[None, :], mask=rmask[:, None], other=0.0)
            dz = tl.load(DZ + rows[:, None] * RP + rr[None, :], mask=rmask[:, None], other=0.0)
            a = z * tl.sigmoid(z)
            y = n * gamma[None, :]
            g = tl.sigmoid(_dot(a, tl.trans(wu), LOWP, EMULATE))
            gdo = do * g
            dwu += _dot(tl.trans(gdo * y * (1.0 - g)), a, LOWP, EMULATE)
            dwd_t += _dot(tl.trans(y), dz, LOWP, EMULATE)
            dy = gdo + _dot(dz, tl.trans(wd_t), LOWP, EMULATE)
        else:
            dy = do
        du = rstd[:, None] * (gamma[None, :] * dy - c[:, None] * n)
        tl.store(DX + rows[:, None] * stride_dx + cols[None, :], (du * s[None, :]).to(DX.dtype.element_ty), mask=m2)
        dgamma += tl.sum(dy * n, axis=0)
        if HAS_S:
            ds += tl.sum(du * x, axis=0)
    tl.store(DW_P + group * D + cols, dgamma, mask=cmask)
    if HAS_S:
        tl.store(DS_P + group * D + cols, ds, mask=cmask)
    if GATED:
        off = group * D * RP + cols[:, None] * RP + rr[None, :]
        tl.store(DWU_P + off, dwu, mask=cmask[:, None])
        tl.store(DWD_P + off, dwd_t, mask=cmask[:, None])


@triton.jit
def _bwd_reduce_kernel(
    DW_P, DS_P, DWU_P, DWD_P, DW, DS, DGU, DGD,
    D, num_groups,
    BD: tl.constexpr, R: tl.constexpr, RP: tl.constexpr, HAS_S: tl.constexpr, GATED: tl.constexpr,
):
    """Σ over the partial rows in a fixed order; writes each gradient in its parameter's dtype."""
    cols = tl.program_id(0) * BD + tl.arange(0, BD)
    cmask = cols < D
    rr = tl.arange(0, RP)
    dw = tl.zeros((BD,), tl.float32)
    ds = tl.zeros((BD,), tl.float32)
    if GATED:
        dwu = tl.zeros((BD, RP), tl.float32)
        dwd_t = tl.zeros((BD, RP), tl.float32)
    for p in range(0, num_groups):
        dw += tl.load(DW_P + p * D + cols, mask=cmask, other=0.0)
        if HAS_S:
            ds += tl.load(DS_P + p * D + cols, mask=cmask, other=0.0)
        if GATED:
            off = p * D * RP + cols[:, None] * RP + rr[None, :]
            dwu += tl.load(DWU_P + off, mask=cmask[:, None], other=0.0)
            dwd_t += tl.load(DWD_P + off, mask=cmask[:, None], other=0.0)
    tl.store(DW + cols, dw.to(DW.dtype.element_ty), mask=cmask)
    if HAS_S:
        tl.store(DS + cols, ds.to(DS.dtype.element_ty), mask=cmask)
    if GATED:
        if R == RP:
            wmask = cmask[:, None]
        else:
            wmask = cmask[:, None] & (rr[None, :] < R)
        tl.store(DGU + cols[:, None] * R + rr[None, :], dwu.to(DGU.dtype.element_ty), mask=wmask)
        tl.store(DGD + rr[None, :] * D + cols[:, None], dwd_t.to(DGD.dtype.element_ty), mask=wmask)


# Whether triton defined these kernels for its CPU interpreter (fixed at import): selects the
# explicit bf16 rounding of the 16-bit dot operands (see the module docstring).
_INTERPRETED = type(_fwd_row_kernel).__name__ == "InterpretedFunction"


def _check_device(x: torch.Tensor) -> None:
    if x.device.type != "cuda" and not _INTERPRETED:
        raise RuntimeError(
            f"fused norm kernels need a CUDA tensor (got device {x.device}); on CPU they run "
            "only in triton's interpreter (set TRITON_INTERPRET=1 before the first fused call)"
        )


class GatedRMSNormFunction(torch.autograd.Function):
    """Autograd wrapper of the kernels above; ``pre_scale``/``gate_down``/``gate_up`` may be None."""

    @staticmethod
    def forward(ctx, x, weight, pre_scale, gate_down, gate_up, eps, zero_centered_gamma):
        d = x.shape[-1]
        gated = gate_down is not None
        x2 = as_rows(x)
        m = x2.shape[0]
        plan = launch_plan(
            m, d, gate_down.shape[0] if gated else 0, pre=pre_scale is not None, sms=num_sms(x.device)
        )
        out = torch.empty((m, d), dtype=x.dtype, device=x.device)
        rstd = torch.empty((m,), dtype=torch.float32, device=x.device)
        weight_c = weight.contiguous()
        s_c = pre_scale.contiguous() if pre_scale is not None else weight_c
        wd_c = gate_down.contiguous() if gated else weight_c
        wu_c = gate_up.contiguous() if gated else weight_c
        z = torch.empty((m, plan.rank_pad), dtype=torch.float32, device=x.device) if gated else rstd
        flags = dict(HAS_S=plan.pre, ZERO_CENTERED=bool(zero_centered_gamma))
        n_blocks = triton.cdiv(m, plan.fwd_block_m)
        if m > 0 and gated:
            _fwd_gated_kernel[(plan.fwd_programs,)](
                x2, out, weight_c, s_c, wd_c, wu_c, rstd, z,
                m, d, x2.stride(0), out.stride(0), float(eps), n_blocks,
                BM=plan.fwd_block_m, BD=plan.fwd_block_d, R=plan.rank, RP=plan.rank_pad,
                LOWP=x.dtype != torch.float32, EMULATE=_INTERPRETED, num_warps=plan.fwd_warps, **flags,
            )
        elif m > 0:
            _fwd_row_kernel[(plan.fwd_programs,)](
                x2, out, weight_c, s_c, rstd,
                m, d, x2.stride(0), out.stride(0), float(eps), n_blocks,
                BM=plan.fwd_block_m, BD=plan.fwd_block_d, num_warps=plan.fwd_warps, **flags,
            )
        ctx.save_for_backward(x2, weight_c, s_c, wd_c, wu_c, rstd, z)
        ctx.plan, ctx.flags, ctx.x_shape = plan, flags, x.shape
        return out.view(x.shape)

    @staticmethod
    def backward(ctx, dout):
        x2, weight, s, wd, wu, rstd, z = ctx.saved_tensors
        plan, flags = ctx.plan, ctx.flags
        m, d = x2.shape
        do2 = as_rows(dout)
        dev = x2.device
        dx = torch.empty((m, d), dtype=x2.dtype, device=dev)
        dweight = torch.empty_like(weight)
        dpre = torch.empty_like(s) if plan.pre else None
        dgd = torch.empty_like(wd) if plan.gated else None
        dgu = torch.empty_like(wu) if plan.gated else None
        grads = (dx.view(ctx.x_shape), dweight, dpre, dgd, dgu, None, None)
        if m == 0:
            for g in grads[1:5]:
                if g is not None:
                    g.zero_()
            return grads
        f32 = dict(dtype=torch.float32, device=dev)
        dw_p = torch.empty((plan.groups, d), **f32)
        ds_p = torch.empty((plan.groups, d), **f32) if plan.pre else dw_p
        dwu_p = torch.empty((plan.groups, d, plan.rank_pad), **f32) if plan.gated else dw_p
        dwd_p = torch.empty((plan.groups, d, plan.rank_pad), **f32) if plan.gated else dw_p
        dots = dict(LOWP=x2.dtype != torch.float32, EMULATE=_INTERPRETED)
        if plan.bwd_row_on_chip:
            _bwd_row_kernel[(plan.groups,)](
                x2, do2, dx, weight, s, rstd, dw_p, ds_p,
                m, d, x2.stride(0), do2.stride(0), dx.stride(0), triton.cdiv(m, plan.bwd_block_m),
                BM=plan.bwd_block_m, BD=plan.bwd_block_d, num_warps=plan.bwd_warps, **flags,
            )
        else:
            c = torch.empty((m,), **f32)
            dz = torch.empty_like(z) if plan.gated else c
            rank = dict(R=max(plan.rank, 1), RP=plan.rank_pad, GATED=plan.gated)
            _bwd_stats_kernel[(triton.cdiv(m, plan.bwd_block_m),)](
                x2, do2, weight, s, wu, rstd, z, dz, c,
                m, d, x2.stride(0), do2.stride(0),
                BM=plan.bwd_block_m, BD=plan.bwd_block_d, num_warps=plan.bwd_warps,
                **rank, **flags, **dots,
            )
            _bwd_cols_kernel[(triton.cdiv(d, plan.bwd_block_d_w), plan.groups)](
                x2, do2, dx, weight, s, wd, wu, rstd, z, dz, c,
                dw_p, ds_p, dwu_p, dwd_p,
                m, d, x2.stride(0), do2.stride(0), dx.stride(0), plan.groups,
                BM=plan.bwd_block_m, BDW=plan.bwd_block_d_w, num_warps=plan.bwd_warps,
                **rank, **flags, **dots,
            )
        _bwd_reduce_kernel[(triton.cdiv(d, plan.reduce_block_d),)](
            dw_p, ds_p, dwu_p, dwd_p,
            dweight, dpre if plan.pre else dweight, dgu if plan.gated else dweight, dgd if plan.gated else dweight,
            d, plan.groups,
            BD=plan.reduce_block_d, R=max(plan.rank, 1), RP=plan.rank_pad, HAS_S=plan.pre, GATED=plan.gated,
            num_warps=4,
        )
        return grads


def _check_inputs(x, weight, pre_scale, gate_down, gate_up):
    if x.dtype not in FUSED_DTYPES:
        raise ValueError(
            f"x.dtype={x.dtype} is not supported by the fused kernels; valid choices: "
            + ", ".join(map(str, FUSED_DTYPES))
        )
    d = x.shape[-1]
    if weight.shape != (d,):
        raise ValueError(f"weight.shape={tuple(weight.shape)}; expected ({d},) for hidden size {d}")
    if pre_scale is not None and pre_scale.shape != (d,):
        raise ValueError(f"pre_scale.shape={tuple(pre_scale.shape)}; expected ({d},)")
    if gate_down is not None:
        if gate_down.dim() != 2 or gate_down.shape[1] != d:
            raise ValueError(f"gate_down.shape={tuple(gate_down.shape)}; expected (rank, {d})")
        r = gate_down.shape[0]
        if gate_up is None or tuple(gate_up.shape) != (d, r):
            shape = None if gate_up is None else tuple(gate_up.shape)
            raise ValueError(
                f"gate_up.shape={shape}; expected ({d}, {r}) (element-wise gate; the tensor-wise "
                "[1, r] gate is not fused)"
            )
    check_limits(d, gate_down.shape[0] if gate_down is not None else 0)
    _check_device(x)


def gated_rms_norm(
    x: torch.Tensor,
    *,
    weight: torch.Tensor,
    gate_down: torch.Tensor,
    gate_up: torch.Tensor,
    pre_scale: Optional[torch.Tensor] = None,
    eps: float = 1e-5,
    zero_centered_gamma: bool = False,
) -> torch.Tensor:
    """Fused GatedNorm (element-wise sigmoid gate), PreAffine+GatedNorm if ``pre_scale`` is given.

    Same math and output dtype as ``reference.rms_norm(..., gate_activation="sigmoid")``.
    """
    if gate_down is None or gate_up is None:
        raise ValueError("gate_down and gate_up are required; use fused_rms_norm for no gate")
    _check_inputs(x, weight, pre_scale, gate_down, gate_up)
    return GatedRMSNormFunction.apply(x, weight, pre_scale, gate_down, gate_up, eps, zero_centered_gamma)


def fused_rms_norm(
    x: torch.Tensor,
    *,
    weight: torch.Tensor,
    pre_scale: Optional[torch.Tensor] = None,
    eps: float = 1e-5,
    zero_centered_gamma: bool = False,
) -> torch.Tensor:
    """Fused RMSNorm; PreAffine RMSNorm ``RMSNorm(λ1 ⊙ x)`` when ``pre_scale`` (λ1) is given."""
    _check_inputs(x, weight, pre_scale, None, None)
    return GatedRMSNormFunction.apply(x, weight, pre_scale, None, None, eps, zero_centered_gamma)
