"""Triton kernels for RMSNorm, PreAffine RMSNorm and GatedNorm (optionally combined).

Per row ``x ∈ R^d`` (fp32 statistics; ``s`` = PreAffine λ1, or 1; ``γ`` = ``weight``, or
``1 + weight`` with zero-centred gamma; ``W_d`` = gate_down ``[r, d]``, ``W_u`` = gate_up
``[d, r]``; element-wise sigmoid gate)::

    u = s ⊙ x                     rstd = 1 / sqrt(mean(u²) + eps)
    n = rstd · u                  y = γ ⊙ n                      (RMSNorm output)
    z = W_d y = rstd · W_d (γ ⊙ s ⊙ x)                           (r-vector)
    a = silu(z)                   l = W_u a                     g = σ(l)
    out = g ⊙ y                   (out = y without the gate)

Forward (one row-block kernel): the first sweep over the row accumulates Σu² and the raw
projection ``W_d (γ ⊙ s ⊙ x)`` together (a 1+r wide row reduction via ``tl.dot``: tensor
cores for 16-bit inputs, ieee fp32 products for fp32); ``z`` is the projection times ``rstd``. The second sweep re-reads the
row block (expected to hit L2: 16 rows) and writes ``out``. Saved: ``x``, ``rstd [M]`` and
``z [M, r_pad]`` (``r`` padded to a power of two >= 16 with zero columns).

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

The gate ``g`` is recomputed from the saved ``z`` (one rank-r product per chunk), never
stored. Backward runs two kernels:

1. row-block kernel: sweep 1 reduces ``da`` and ``Σ do ⊙ out`` over the row, giving ``dz``
   and ``c`` (stored: ``[M, r_pad]`` and ``[M]`` fp32); sweep 2 writes ``dx``.
2. weight-gradient kernel on a ``(column slice, row group)`` grid: each program owns a
   ``block_d_w``-column slice and a strided group of row blocks and accumulates ``dγ``,
   ``dλ1``, ``dW_u`` and ``dW_dᵀ`` for that slice in fp32 registers, then writes one
   partial row per row group. The partial buffers are ``[P, d]`` / ``[P, d, r_pad]`` with
   ``P = min(row blocks, ceil(4·SMs / column slices), 256)``, independent of the token
   count; ``torch.sum`` reduces them in fp32: deterministic, no atomics.

HBM traffic (bf16, per token): forward ≈ 4d (+4 rstd, +4·r_pad z); backward ≈ 10d: kernel 2
reads ``x`` and ``do`` a second time — the price of bounded partials without a
full-row fp32 accumulator per program. Unmeasured on a GPU.

Dot precision: fp32 inputs use ``ieee`` products (the eager spec is fp32); 16-bit inputs use
``tf32``, whose ~1e-3 relative product error is expected to stay at the level of bf16/fp16
output rounding (not verified on a GPU). Triton's interpreter ignores ``input_precision``
and multiplies in full fp32, so the CPU tests do not cover the tf32 error.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from megatron_gatednorm.ops._triton_utils import (
    FUSED_DTYPES,
    as_rows,
    interpreting,
    launch_config,
    num_sms,
)

_MAX_ROW_GROUPS = 256


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
def _gate(a, WU, cols, cmask, rr, R, DOT_PREC: tl.constexpr):
    """σ(a @ W_uᵀ[:, cols]) for a [BM, RP] tile of silu(z)."""
    wu_t = tl.load(WU + cols[None, :] * R + rr[:, None], mask=cmask[None, :] & (rr[:, None] < R), other=0.0)
    return tl.sigmoid(tl.dot(a, wu_t.to(tl.float32), input_precision=DOT_PREC))


@triton.jit
def _fwd_kernel(
    X, OUT, W, S, WD, WU, RSTD, Z,
    M, D, R, stride_x, stride_out, eps,
    BM: tl.constexpr, BD: tl.constexpr, RP: tl.constexpr,
    HAS_S: tl.constexpr, GATED: tl.constexpr, ZERO_CENTERED: tl.constexpr, DOT_PREC: tl.constexpr,
):
    # int64 rows: row * stride overflows int32 beyond 2^31 elements.
    rows = tl.program_id(0).to(tl.int64) * BM + tl.arange(0, BM)
    rmask = rows < M
    rr = tl.arange(0, RP)
    sumsq = tl.zeros((BM,), tl.float32)
    zacc = tl.zeros((BM, RP), tl.float32)
    for d0 in range(0, D, BD):
        cols = d0 + tl.arange(0, BD)
        cmask = cols < D
        m2 = rmask[:, None] & cmask[None, :]
        x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=m2, other=0.0).to(tl.float32)
        gamma, s = _gamma_s(W, S, cols, cmask, HAS_S, ZERO_CENTERED)
        u = x * s[None, :]
        sumsq += tl.sum(u * u, axis=1)
        if GATED:
            wd_t = tl.load(WD + rr[None, :] * D + cols[:, None], mask=cmask[:, None] & (rr[None, :] < R), other=0.0)
            zacc += tl.dot(u * gamma[None, :], wd_t.to(tl.float32), input_precision=DOT_PREC)
    rstd = 1.0 / tl.sqrt(sumsq / D + eps)
    tl.store(RSTD + rows, rstd, mask=rmask)
    if GATED:
        z = zacc * rstd[:, None]
        tl.store(Z + rows[:, None] * RP + rr[None, :], z, mask=rmask[:, None])
        a = z * tl.sigmoid(z)
    for d0 in range(0, D, BD):
        cols = d0 + tl.arange(0, BD)
        cmask = cols < D
        m2 = rmask[:, None] & cmask[None, :]
        x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=m2, other=0.0).to(tl.float32)
        gamma, s = _gamma_s(W, S, cols, cmask, HAS_S, ZERO_CENTERED)
        y = x * s[None, :] * rstd[:, None] * gamma[None, :]
        if GATED:
            y = y * _gate(a, WU, cols, cmask, rr, R, DOT_PREC)
        tl.store(OUT + rows[:, None] * stride_out + cols[None, :], y.to(OUT.dtype.element_ty), mask=m2)


@triton.jit
def _bwd_dx_kernel(
    X, DO, DX, W, S, WD, WU, RSTD, Z, DZ, C,
    M, D, R, stride_x, stride_do, stride_dx,
    BM: tl.constexpr, BD: tl.constexpr, RP: tl.constexpr,
    HAS_S: tl.constexpr, GATED: tl.constexpr, ZERO_CENTERED: tl.constexpr, DOT_PREC: tl.constexpr,
):
    # int64 rows: row * stride overflows int32 beyond 2^31 elements.
    rows = tl.program_id(0).to(tl.int64) * BM + tl.arange(0, BM)
    rmask = rows < M
    rr = tl.arange(0, RP)
    rstd = tl.load(RSTD + rows, mask=rmask, other=0.0)
    dot_acc = tl.zeros((BM,), tl.float32)
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
            g = _gate(a, WU, cols, cmask, rr, R, DOT_PREC)
            dl = do * y * g * (1.0 - g)
            wu = tl.load(WU + cols[:, None] * R + rr[None, :], mask=cmask[:, None] & (rr[None, :] < R), other=0.0)
            da += tl.dot(dl, wu.to(tl.float32), input_precision=DOT_PREC)
            dot_acc += tl.sum(do * y * g, axis=1)
        else:
            dot_acc += tl.sum(do * y, axis=1)
    if GATED:
        dz = da * sz * (1.0 + z * (1.0 - sz))
        dot_acc += tl.sum(dz * z, axis=1)
        tl.store(DZ + rows[:, None] * RP + rr[None, :], dz, mask=rmask[:, None])
    c = dot_acc / D
    tl.store(C + rows, c, mask=rmask)
    for d0 in range(0, D, BD):
        cols = d0 + tl.arange(0, BD)
        cmask = cols < D
        m2 = rmask[:, None] & cmask[None, :]
        x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=m2, other=0.0).to(tl.float32)
        do = tl.load(DO + rows[:, None] * stride_do + cols[None, :], mask=m2, other=0.0).to(tl.float32)
        gamma, s = _gamma_s(W, S, cols, cmask, HAS_S, ZERO_CENTERED)
        n = x * s[None, :] * rstd[:, None]
        if GATED:
            wd = tl.load(WD + rr[:, None] * D + cols[None, :], mask=(rr[:, None] < R) & cmask[None, :], other=0.0)
            dy = do * _gate(a, WU, cols, cmask, rr, R, DOT_PREC) + tl.dot(dz, wd.to(tl.float32), input_precision=DOT_PREC)
        else:
            dy = do
        dx = rstd[:, None] * (gamma[None, :] * dy - c[:, None] * n) * s[None, :]
        tl.store(DX + rows[:, None] * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty), mask=m2)


@triton.jit
def _bwd_dw_kernel(
    X, DO, W, S, WD, WU, RSTD, Z, DZ, C,
    DW_P, DS_P, DWU_P, DWD_P,
    M, D, R, stride_x, stride_do, num_groups,
    BM: tl.constexpr, BDW: tl.constexpr, RP: tl.constexpr,
    HAS_S: tl.constexpr, GATED: tl.constexpr, ZERO_CENTERED: tl.constexpr, DOT_PREC: tl.constexpr,
):
    pid_c = tl.program_id(0)
    group = tl.program_id(1)
    cols = pid_c * BDW + tl.arange(0, BDW)
    cmask = cols < D
    rr = tl.arange(0, RP)
    gamma, s = _gamma_s(W, S, cols, cmask, HAS_S, ZERO_CENTERED)
    dgamma = tl.zeros((BDW,), tl.float32)
    ds = tl.zeros((BDW,), tl.float32)
    if GATED:
        # The program's column slice is fixed, so its slices of W_u and W_d stay in registers.
        wmask = (rr[:, None] < R) & cmask[None, :]
        wu_t = tl.load(WU + cols[None, :] * R + rr[:, None], mask=wmask, other=0.0).to(tl.float32)
        wd = tl.load(WD + rr[:, None] * D + cols[None, :], mask=wmask, other=0.0).to(tl.float32)
        dwu = tl.zeros((BDW, RP), tl.float32)
        dwd_t = tl.zeros((BDW, RP), tl.float32)
    for r0 in range(group * BM, M, num_groups * BM):
        rows = tl.arange(0, BM).to(tl.int64) + r0
        rmask = rows < M
        m2 = rmask[:, None] & cmask[None, :]
        x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=m2, other=0.0).to(tl.float32)
        do = tl.load(DO + rows[:, None] * stride_do + cols[None, :], mask=m2, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + rows, mask=rmask, other=0.0)
        n = x * s[None, :] * rstd[:, None]
        if GATED:
            y = n * gamma[None, :]
            z = tl.load(Z + rows[:, None] * RP + rr[None, :], mask=rmask[:, None], other=0.0)
            dz = tl.load(DZ + rows[:, None] * RP + rr[None, :], mask=rmask[:, None], other=0.0)
            a = z * tl.sigmoid(z)
            g = tl.sigmoid(tl.dot(a, wu_t, input_precision=DOT_PREC))
            dl = do * y * g * (1.0 - g)
            dwu += tl.dot(tl.trans(dl), a, input_precision=DOT_PREC)
            dwd_t += tl.dot(tl.trans(y), dz, input_precision=DOT_PREC)
            dy = do * g + tl.dot(dz, wd, input_precision=DOT_PREC)
        else:
            dy = do
        dgamma += tl.sum(dy * n, axis=0)
        if HAS_S:
            c = tl.load(C + rows, mask=rmask, other=0.0)
            ds += tl.sum(rstd[:, None] * (gamma[None, :] * dy - c[:, None] * n) * x, axis=0)
    tl.store(DW_P + group * D + cols, dgamma, mask=cmask)
    if HAS_S:
        tl.store(DS_P + group * D + cols, ds, mask=cmask)
    if GATED:
        off = group * D * RP + cols[:, None] * RP + rr[None, :]
        tl.store(DWU_P + off, dwu, mask=cmask[:, None])
        tl.store(DWD_P + off, dwd_t, mask=cmask[:, None])


def _dot_precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def _check_device(x: torch.Tensor) -> None:
    if x.device.type != "cuda" and not interpreting():
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
        rank = gate_down.shape[0] if gated else 1
        cfg = launch_config(d, rank)
        x2 = as_rows(x)
        m = x2.shape[0]
        out = torch.empty((m, d), dtype=x.dtype, device=x.device)
        rstd = torch.empty((m,), dtype=torch.float32, device=x.device)
        z = torch.empty((m, cfg.rank_pad) if gated else (1,), dtype=torch.float32, device=x.device)
        weight_c = weight.contiguous()
        s_c = pre_scale.contiguous() if pre_scale is not None else weight_c
        wd_c = gate_down.contiguous() if gated else weight_c
        wu_c = gate_up.contiguous() if gated else weight_c
        flags = dict(
            HAS_S=pre_scale is not None, GATED=gated, ZERO_CENTERED=bool(zero_centered_gamma),
            DOT_PREC=_dot_precision(x.dtype),
        )
        if m > 0:
            _fwd_kernel[(triton.cdiv(m, cfg.block_m),)](
                x2, out, weight_c, s_c, wd_c, wu_c, rstd, z,
                m, d, rank, x2.stride(0), out.stride(0), float(eps),
                BM=cfg.block_m, BD=cfg.block_d, RP=cfg.rank_pad, num_warps=cfg.num_warps, **flags,
            )
        ctx.save_for_backward(x2, weight_c, s_c, wd_c, wu_c, rstd, z)
        ctx.cfg, ctx.flags, ctx.rank, ctx.x_shape = cfg, flags, rank, x.shape
        ctx.param_dtypes = tuple(
            p.dtype if p is not None else None for p in (weight, pre_scale, gate_down, gate_up)
        )
        return out.view(x.shape)

    @staticmethod
    def backward(ctx, dout):
        x2, weight, s, wd, wu, rstd, z = ctx.saved_tensors
        cfg, flags, rank = ctx.cfg, ctx.flags, ctx.rank
        m, d = x2.shape
        do2 = as_rows(dout)
        dx = torch.empty((m, d), dtype=x2.dtype, device=x2.device)
        dz = torch.empty_like(z)
        c = torch.empty((m,), dtype=torch.float32, device=x2.device)
        n_cols = triton.cdiv(d, cfg.block_d_w)
        n_row_blocks = triton.cdiv(m, cfg.block_m)
        groups = max(1, min(n_row_blocks, _MAX_ROW_GROUPS, triton.cdiv(4 * num_sms(x2.device), n_cols)))
        f32 = dict(dtype=torch.float32, device=x2.device)
        dw_p = torch.zeros((groups, d), **f32)
        ds_p = torch.zeros((groups, d), **f32) if flags["HAS_S"] else dw_p
        wshape = (groups, d, cfg.rank_pad) if flags["GATED"] else (1,)
        dwu_p = torch.zeros(wshape, **f32)
        dwd_p = torch.zeros(wshape, **f32)
        if m > 0:
            _bwd_dx_kernel[(n_row_blocks,)](
                x2, do2, dx, weight, s, wd, wu, rstd, z, dz, c,
                m, d, rank, x2.stride(0), do2.stride(0), dx.stride(0),
                BM=cfg.block_m, BD=cfg.block_d, RP=cfg.rank_pad, num_warps=cfg.num_warps, **flags,
            )
            _bwd_dw_kernel[(n_cols, groups)](
                x2, do2, weight, s, wd, wu, rstd, z, dz, c,
                dw_p, ds_p, dwu_p, dwd_p,
                m, d, rank, x2.stride(0), do2.stride(0), groups,
                BM=cfg.block_m, BDW=cfg.block_d_w, RP=cfg.rank_pad, num_warps=cfg.num_warps_w, **flags,
            )
        w_dt, s_dt, wd_dt, wu_dt = ctx.param_dtypes
        dweight = dw_p.sum(0).to(w_dt)
        dpre = ds_p.sum(0).to(s_dt) if flags["HAS_S"] else None
        dgd = dgu = None
        if flags["GATED"]:
            dgu = dwu_p.sum(0)[:, :rank].to(wu_dt)
            dgd = dwd_p.sum(0)[:, :rank].t().contiguous().to(wd_dt)
        return dx.view(ctx.x_shape), dweight, dpre, dgd, dgu, None, None


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
