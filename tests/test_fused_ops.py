"""Fused Triton norms vs the float64 eager reference: compiled on a GPU, interpreted on CPU.

The same tests run where they are: with CUDA the kernels are compiled and run on the GPU; without
it ``tests/conftest.py`` sets ``TRITON_INTERPRET=1`` before triton is first imported and they
run in triton's CPU interpreter. Kernel tests skip with the reason if triton is not importable;
the dispatch tests run regardless.

Tolerances (max |fused - ref| / max |ref| per tensor, reference in float64 on CPU from the same
inputs): fp32 inputs 2e-5 for the output and every gradient; bf16/fp16 inputs 1.6e-2 for the
output and dx (a couple of 16-bit roundings) and 1e-4 for the fp32 parameter gradients. The
16-bit bounds hold compiled and interpreted alike because the kernels' 16-bit dots are three
split-bf16 products with the same arithmetic in both modes (``gated_rms_norm_triton``'s docstring);
measured in the interpreter: parameter gradients 1.8e-5..5.1e-5, output/dx 2e-4..6.7e-3.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch

from megatron_gatednorm.norm_config import NormConfig
from megatron_gatednorm.ops import _triton_utils, dispatch, reference
from megatron_gatednorm.ops._triton_utils import triton_status

_TRITON_OK, _TRITON_WHY = triton_status()
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _params(d, rank, *, pre, gated, zc, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = {"weight": torch.randn(d, generator=g) * 0.2 + (0.0 if zc else 1.0)}
    if pre:
        p["pre_scale"] = torch.rand(d, generator=g) + 0.5
    if gated:
        p["gate_down"] = torch.randn(rank, d, generator=g) / d**0.5
        p["gate_up"] = torch.randn(d, rank, generator=g) * 0.5
    return p


def _run(fn, x, do, params, device=DEVICE):
    """Forward+backward on ``device``; returns (out, {"x": dx, name: dparam}) on CPU."""
    x = x.detach().to(device).requires_grad_()
    ps = {k: v.detach().to(device).requires_grad_() for k, v in params.items()}
    out = fn(x, ps)
    out.backward(do.to(device))
    return out.detach().cpu(), {"x": x.grad.cpu(), **{k: v.grad.cpu() for k, v in ps.items()}}


def _reference(x, ps, zc):
    return reference.rms_norm(
        x, ps["weight"], 1e-5, zc, pre_scale=ps.get("pre_scale"),
        gate_down=ps.get("gate_down"), gate_up=ps.get("gate_up"),
    )


def _reference_run(x, do, params, zc):
    """The float64 eager reference on CPU, from the same (rounded) inputs."""
    return _run(
        lambda x, ps: _reference(x, ps, zc), x.double(), do.double(),
        {k: v.double() for k, v in params.items()}, device="cpu",
    )


def _fused(kernels, zc):
    def fn(x, ps):
        if "gate_down" in ps:
            return kernels.gated_rms_norm(x, zero_centered_gamma=zc, **ps)
        return kernels.fused_rms_norm(x, zero_centered_gamma=zc, **ps)

    return fn


def _rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


CASES = [
    # variant flags (pre, gated), rows, d, rank, zero-centred gamma, dtype
    pytest.param(False, True, 1, 72, 16, False, torch.float32, id="gated-1x72"),
    pytest.param(False, True, 19, 72, 16, False, torch.float32, id="gated-19x72"),
    pytest.param(True, True, 33, 1000, 16, False, torch.float32, id="preaffine_gated-33x1000"),
    pytest.param(True, True, 5, 72, 16, True, torch.float32, id="preaffine_gated-5x72-zc"),
    pytest.param(False, True, 17, 72, 5, False, torch.float32, id="gated-17x72-rank5"),
    pytest.param(True, True, 8, 130, 64, False, torch.float32, id="preaffine_gated-8x130-rank64"),
    pytest.param(True, False, 19, 72, 0, False, torch.float32, id="preaffine-19x72"),
    pytest.param(True, False, 33, 1000, 0, True, torch.float32, id="preaffine-33x1000-zc"),
    pytest.param(False, False, 1, 1000, 0, False, torch.float32, id="rmsnorm-1x1000"),
    pytest.param(True, True, 24, 1000, 16, False, torch.bfloat16, id="preaffine_gated-24x1000-bf16"),
    pytest.param(False, True, 9, 72, 16, True, torch.bfloat16, id="gated-9x72-zc-bf16"),
    pytest.param(True, False, 24, 72, 0, False, torch.bfloat16, id="preaffine-24x72-bf16"),
    pytest.param(True, True, 9, 72, 16, False, torch.float16, id="preaffine_gated-9x72-fp16"),
    # more row blocks than persistent programs (2 x 4 interpreter "SMs"): the grid-stride loops
    pytest.param(True, True, 160, 200, 16, False, torch.bfloat16, id="preaffine_gated-160x200-bf16"),
    pytest.param(False, False, 100, 1000, 0, False, torch.bfloat16, id="rmsnorm-100x1000-bf16"),
]


@pytest.mark.parametrize("pre, gated, rows, d, rank, zc, dtype", CASES)
def test_matches_float64_reference(kernels, pre, gated, rows, d, rank, zc, dtype):
    params = _params(d, rank, pre=pre, gated=gated, zc=zc)
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(rows, d, generator=g) * 3).to(dtype)
    do = torch.randn(rows, d, generator=g).to(dtype)
    out, grads = _run(_fused(kernels, zc), x, do, params)
    ref_out, ref_grads = _reference_run(x, do, params, zc)
    assert out.dtype == dtype and grads["x"].dtype == dtype
    assert set(grads) == set(ref_grads) == {"x", *params}
    tol16 = 1.6e-2
    act_tol, param_tol = (2e-5, 2e-5) if dtype == torch.float32 else (tol16, 1e-4)
    assert _rel_err(out, ref_out) < act_tol
    assert _rel_err(grads["x"], ref_grads["x"]) < act_tol
    for name in params:
        assert grads[name].dtype == params[name].dtype
        assert _rel_err(grads[name], ref_grads[name]) < param_tol, name


def test_bf16_parameters(kernels):
    """Megatron --bf16 keeps the norm parameters in bf16: gradients come back in bf16."""
    d, rank = 72, 16
    params = {k: v.bfloat16() for k, v in _params(d, rank, pre=True, gated=True, zc=False).items()}
    g = torch.Generator().manual_seed(4)
    x = torch.randn(24, d, generator=g).bfloat16()
    do = torch.randn(24, d, generator=g).bfloat16()
    out, grads = _run(_fused(kernels, False), x, do, params)
    ref_out, ref_grads = _reference_run(x, do, params, False)
    assert _rel_err(out, ref_out) < 1.6e-2
    for name in grads:
        assert grads[name].dtype == torch.bfloat16
        assert _rel_err(grads[name], ref_grads[name]) < 1.6e-2, name


@pytest.mark.slow
def test_max_hidden_16384(kernels):
    """The widest supported row. Gated: forward only on CPU (the interpreted gated backward at
    this width takes ~10 s on 2 cores; its multi-chunk loops are covered at d=1000); ungated:
    forward and backward through the wide (stats + column-owner) backward path."""
    d, rank = 16384, 16
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2 if DEVICE == "cpu" else 64, d, generator=g)
    do = torch.randn(x.shape, generator=g)
    for gated in (True, False):
        params = _params(d, rank, pre=True, gated=gated, zc=False)
        if gated and DEVICE == "cpu":
            out = kernels.gated_rms_norm(x, **params)
            assert _rel_err(out, _reference_run(x, do, params, False)[0]) < 2e-5
            continue
        out, grads = _run(_fused(kernels, False), x, do, params)
        ref_out, ref_grads = _reference_run(x, do, params, False)
        for name, t in {"out": out, **grads}.items():
            assert _rel_err(t, ref_out if name == "out" else ref_grads[name]) < 2e-5, name


@pytest.mark.parametrize("pre, d", [(True, 72), (False, 1000)])
def test_ungated_wide_backward_path(kernels, monkeypatch, pre, d):
    """Ungated rows wider than ROW_ON_CHIP_MAX_BWD take the stats + column-owner backward; forced
    here at small widths by lowering the limit."""
    monkeypatch.setattr(_triton_utils, "ROW_ON_CHIP_MAX_BWD", 64)
    assert not _triton_utils.launch_plan(40, d, 0, pre=pre, sms=4).bwd_row_on_chip
    params = _params(d, 0, pre=pre, gated=False, zc=True)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(40, d, generator=g)
    do = torch.randn(40, d, generator=g)
    out, grads = _run(_fused(kernels, True), x, do, params)
    ref_out, ref_grads = _reference_run(x, do, params, True)
    assert _rel_err(out, ref_out) < 2e-5
    for name in grads:
        assert _rel_err(grads[name], ref_grads[name]) < 2e-5, name


def test_launch_plan_bounds():
    """Kernels per variant as designed; weight-gradient partial rows bounded by 2 x SMs whatever
    the token count (the backward's fp32 scratch does not grow with the batch)."""
    p = _triton_utils.launch_plan(16384, 4096, 0, pre=True, sms=132)
    assert (p.fwd_kernel, p.bwd_kernels) == ("_fwd_row_kernel", ("_bwd_row_kernel", "_bwd_reduce_kernel"))
    assert p.groups == 264 and p.fwd_programs == 264
    g = _triton_utils.launch_plan(16384, 4096, 16, pre=False, sms=132)
    assert g.fwd_kernel == "_fwd_gated_kernel"
    assert g.bwd_kernels == ("_bwd_stats_kernel", "_bwd_cols_kernel", "_bwd_reduce_kernel")
    assert g.rank_pad == 16 and g.groups == 9
    for rows in (1, 16, 10**6):
        for rank in (0, 16, 64):
            for d in (72, 4096, 16384):
                plan = _triton_utils.launch_plan(rows, d, rank, pre=True, sms=132)
                assert 1 <= plan.groups <= min(264, rows) and plan.fwd_programs <= 264


def test_non_contiguous_and_batched(kernels):
    """[s, b, d] transposed input, a strided last dim, and a non-contiguous upstream grad."""
    d, rank = 72, 16
    params = _params(d, rank, pre=True, gated=True, zc=False)
    g = torch.Generator().manual_seed(2)
    x_t = torch.randn(3, 5, d, generator=g).transpose(0, 1)  # [5, 3, d], rows not uniform-strided
    x_s = torch.randn(7, 2 * d, generator=g)[:, ::2]  # column stride 2
    for x in (x_t, x_s):
        assert not x.is_contiguous()
        do = torch.randn(tuple(reversed(x.shape)), generator=g).permute(*reversed(range(x.dim())))
        assert do.shape == x.shape and not do.is_contiguous()
        out, grads = _run(_fused(kernels, False), x, do, params)
        ref_out, ref_grads = _reference_run(x, do, params, False)
        assert out.shape == x.shape and grads["x"].shape == x.shape
        assert _rel_err(out, ref_out) < 2e-5
        for name in grads:
            assert _rel_err(grads[name], ref_grads[name]) < 2e-5, name


@pytest.mark.parametrize("gated", [True, False])
def test_deterministic(kernels, gated):
    """Same inputs give the same bits; 200 rows use several weight-gradient partial rows."""
    d, rank = 72, 16
    params = _params(d, rank, pre=True, gated=gated, zc=False)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(200, d, generator=g).bfloat16()
    do = torch.randn(200, d, generator=g).bfloat16()
    assert _triton_utils.launch_plan(200, d, rank if gated else 0, pre=True, sms=4).groups > 1
    a_out, a_grads = _run(_fused(kernels, False), x, do, params)
    b_out, b_grads = _run(_fused(kernels, False), x, do, params)
    assert torch.equal(a_out, b_out)
    for name in a_grads:
        assert torch.equal(a_grads[name], b_grads[name]), name


def test_user_errors(kernels):
    w = torch.ones(72)
    with pytest.raises(ValueError, match="float64"):
        kernels.fused_rms_norm(torch.zeros(2, 72, dtype=torch.float64), weight=w)
    with pytest.raises(ValueError, match=r"gate_up.shape=\(1, 16\)"):
        kernels.gated_rms_norm(
            torch.zeros(2, 72), weight=w, gate_down=torch.zeros(16, 72), gate_up=torch.zeros(1, 16)
        )
    with pytest.raises(RuntimeError, match="hidden size 16385 exceeds"):
        kernels.fused_rms_norm(torch.zeros(1, 16385), weight=torch.ones(16385))
    with pytest.raises(RuntimeError, match="gate rank 65 exceeds"):
        kernels.gated_rms_norm(
            torch.zeros(1, 72), weight=w, gate_down=torch.zeros(65, 72), gate_up=torch.zeros(72, 65)
        )


# ---- path selection -------------------------------------------------------------------------


def test_dispatch_reasons(monkeypatch):
    x = torch.zeros(2, 72)
    monkeypatch.setenv("MGN_NORM_IMPL", "bogus")
    with pytest.raises(ValueError, match="'bogus'.*auto, eager, fused"):
        dispatch.choose_impl(x, gated=True, rank=16)
    monkeypatch.setenv("MGN_NORM_IMPL", "eager")
    assert dispatch.choose_impl(x, gated=True, rank=16) == ("eager", "eager: MGN_NORM_IMPL=eager")
    monkeypatch.delenv("MGN_NORM_IMPL")
    if _TRITON_OK:
        assert dispatch.choose_impl(x, gated=True, rank=16).reason == "eager: input on CPU"
    assert dispatch.choose_impl(x, gated=True, gate_activation="tanh", rank=16).reason == (
        "eager: gate_activation=tanh not fused"
    )
    assert dispatch.choose_impl(x, gated=True, granularity="tensorwise", rank=16).reason == (
        "eager: granularity=tensorwise not fused"
    )
    assert dispatch.choose_impl(x, dyt=True).reason == "eager: DyT not fused"
    monkeypatch.setenv("MGN_NORM_IMPL", "fused")
    with pytest.raises(RuntimeError, match="gate_activation=silu not fused"):
        dispatch.choose_impl(x, gated=True, gate_activation="silu", rank=16)
    if _TRITON_OK:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert dispatch.choose_impl(x, gated=True, rank=16).impl == "fused"
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(RuntimeError, match="input on CPU .*TRITON_INTERPRET=1"):
            dispatch.choose_impl(x, gated=True, rank=16)
    monkeypatch.setattr(dispatch, "triton_status", lambda: (False, "ModuleNotFoundError: no triton"))
    monkeypatch.setenv("MGN_NORM_IMPL", "auto")
    assert dispatch.choose_impl(x, gated=True, rank=16).reason == (
        "eager: triton not importable (ModuleNotFoundError: no triton)"
    )


def test_imports_and_reports_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, types\n"
        "from megatron_gatednorm.norms import GatedRMSNorm\n"
        "cfg = types.SimpleNamespace(params_dtype=torch.float32, use_cpu_initialization=True,\n"
        "    init_method=torch.nn.init.zeros_)\n"
        "m = GatedRMSNorm(cfg, 32)\n"
        "m(torch.randn(2, 32)).sum().backward()\n"
        "print(m.impl_decision.reason)\n"
    )
    env = dict(os.environ, MGN_NORM_IMPL="auto")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().startswith("eager: triton not importable (")


# ---- Megatron modules -----------------------------------------------------------------------


def _module_cfg():
    import types

    return types.SimpleNamespace(
        params_dtype=torch.float32, use_cpu_initialization=True, sequence_parallel=False,
        layernorm_zero_centered_gamma=True, init_method=lambda t: torch.nn.init.normal_(t, 0, 0.3),
    )


@pytest.mark.parametrize("variant", ["gatednorm", "preaffine_gatednorm", "preaffine", "rmsnorm"])
def test_module_fused_matches_eager(kernels, monkeypatch, caplog, variant):
    from megatron_gatednorm import norms

    torch.manual_seed(0)
    nc = NormConfig(variant=variant, gate_up_init="init_method")
    mod = norms.norm_class(variant)(_module_cfg(), 72, eps=1e-5, norm_config=nc).to(DEVICE)
    with torch.no_grad():
        for p in mod.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x = torch.randn(6, 2, 72, device=DEVICE)
    results = {}
    for impl in ("eager", "fused"):
        monkeypatch.setenv("MGN_NORM_IMPL", impl)
        mod.zero_grad()
        xi = x.clone().requires_grad_()
        with caplog.at_level(logging.INFO, logger="megatron_gatednorm.norms"):
            out = mod(xi)
        (out * torch.linspace(-1, 1, 72, device=DEVICE)).sum().backward()
        assert mod.impl_decision.impl == impl
        results[impl] = [out.detach(), xi.grad] + [p.grad.clone() for p in mod.parameters()]
    expected = "uses fused: MGN_NORM_IMPL=fused" if DEVICE == "cpu" else "uses fused: cuda input"
    assert any(expected in r.message for r in caplog.records)
    for e, f in zip(results["eager"], results["fused"]):
        assert _rel_err(f, e) < 2e-5


def test_module_reports_unfused_config(monkeypatch):
    from megatron_gatednorm import norms

    monkeypatch.setenv("MGN_NORM_IMPL", "auto")
    mod = norms.GatedRMSNorm(_module_cfg(), 32, norm_config=NormConfig(gate_activation="tanh"))
    mod(torch.randn(3, 32))
    assert mod.impl_decision.reason == "eager: gate_activation=tanh not fused"
    monkeypatch.setenv("MGN_NORM_IMPL", "fused")
    with pytest.raises(RuntimeError, match="gate_activation=tanh not fused"):
        mod(torch.randn(3, 32))


@pytest.fixture(scope="module")
def megatron_world():
    """A 1-process world with Megatron model parallelism 1x1: NCCL on a GPU, gloo and the CPU
    shim without CUDA (``init_distributed`` decides)."""
    pytest.importorskip("megatron.core")
    from megatron_gatednorm.distributed import init_distributed

    init_distributed()
    yield


def test_gpt_model_fused_matches_eager(kernels, megatron_world, monkeypatch):
    from megatron.core.models.gpt import GPTModel
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed
    from megatron.core.transformer.transformer_config import TransformerConfig

    from megatron_gatednorm.norms import _ResidualNorm
    from megatron_gatednorm.specs import get_gatednorm_block_spec

    torch.manual_seed(0)
    model_parallel_cuda_manual_seed(0)
    cfg = TransformerConfig(
        num_layers=2, hidden_size=48, num_attention_heads=4, use_cpu_initialization=True,
        normalization="RMSNorm", layernorm_zero_centered_gamma=True,
        hidden_dropout=0.0, attention_dropout=0.0,  # the two runs must see the same function
    )
    nc = NormConfig(variant="preaffine_gatednorm", rank=16, gate_up_init="init_method")
    spec = get_gatednorm_block_spec(cfg, nc, use_transformer_engine=False)
    model = GPTModel(config=cfg, transformer_layer_spec=spec, vocab_size=128, max_sequence_length=16)
    model.to(DEVICE)
    norms = [m for m in model.modules() if isinstance(m, _ResidualNorm)]
    assert len(norms) == 5 and sum(hasattr(m, "gate_down") for m in norms) == 5
    tokens = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    position_ids = torch.arange(16, device=DEVICE).unsqueeze(0).expand(2, 16)
    results = {}
    for impl in ("eager", "fused"):
        monkeypatch.setenv("MGN_NORM_IMPL", impl)
        model.zero_grad()
        loss = model(tokens, position_ids, None, labels=tokens).float().mean()
        loss.backward()
        assert {m.impl_decision.impl for m in norms} == {impl}
        results[impl] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    (le, ge), (lf, gf) = results["eager"], results["fused"]
    assert abs(lf.item() - le.item()) <= 1e-6 * abs(le.item())
    assert ge.keys() == gf.keys()
    for name in ge:
        assert _rel_err(gf[name], ge[name]) < 1e-5, name
