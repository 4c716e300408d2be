"""The norm modules against an independent float64 computation written out here.

Shapes are odd on purpose: hidden 72 (rank 16), 3 sequences of 5 tokens. Parameters are
perturbed away from their initial values so every term of the math is exercised.
Tolerances, as max|module - reference| / max|reference| per tensor:
fp32 ≤ 1e-5 (forward and every gradient); bf16 ≤ 2e-2 (8-bit mantissa, ~4e-3 per rounding).
"""

import functools
import math
from types import SimpleNamespace

import pytest
import torch

from megatron_gatednorm.norm_config import GATE_ACTIVATIONS, VARIANTS, NormConfig, NormConfigError
from megatron_gatednorm.norms import NORM_CLASSES, norm_class

HIDDEN, SEQ, BATCH = 72, 5, 3
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def megatron_like_config(dtype=torch.float32, **overrides):
    values = dict(
        use_cpu_initialization=True, init_model_with_meta_device=False, params_dtype=dtype,
        sequence_parallel=False, perform_initialization=True, layernorm_zero_centered_gamma=False,
        init_method=functools.partial(torch.nn.init.normal_, mean=0.0, std=0.02),
    )
    values.update(overrides)
    return SimpleNamespace(**values)


def reference64(x, params, variant, nc, eps, zero_centered):
    """GatedNorm / PreAffine / DyT in float64, written from the paper's formulas."""
    p = {k: v.double() for k, v in params.items()}
    gamma = p["weight"] + 1 if zero_centered else p["weight"]
    x = x.double()
    if variant in ("dyt", "gatedyt"):
        y = gamma * torch.tanh(p["alpha"] * x) + p["bias"]
    else:
        h = x * p["pre_scale"] if "pre_scale" in p else x
        y = gamma * h / torch.sqrt((h * h).mean(-1, keepdim=True) + eps)
    if "gate_down" in p:
        z = y @ p["gate_down"].T
        z = z * torch.sigmoid(z)  # swish
        u = z @ p["gate_up"].T
        act = {
            "sigmoid": torch.sigmoid, "tanh": torch.tanh,
            "silu": lambda t: t * torch.sigmoid(t), "identity": lambda t: t,
        }[nc.gate_activation]
        y = act(u) * y
    return y


def _rel(a, b):
    scale = b.abs().max().item()
    return (a.double() - b).abs().max().item() / (scale if scale > 0 else 1.0)


def check_against_reference(variant, dtype, nc=None, zero_centered=False):
    nc = nc or NormConfig(variant=variant)
    torch.manual_seed(0)
    module = norm_class(variant)(
        megatron_like_config(dtype, layernorm_zero_centered_gamma=zero_centered),
        hidden_size=HIDDEN, eps=1e-5, norm_config=nc,
    )
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.add_(0.3 * torch.randn_like(p, dtype=torch.float32).to(dtype))
    x = (torch.randn(SEQ, BATCH, HIDDEN) * 3).to(dtype)
    x.requires_grad_(True)
    dy = torch.randn(SEQ, BATCH, HIDDEN).to(dtype)

    out = module(x)
    assert out.dtype == dtype and out.shape == x.shape
    out.backward(dy)

    x64 = x.detach().double().requires_grad_(True)
    params64 = {n: p.detach().double().requires_grad_(True) for n, p in module.named_parameters()}
    ref = reference64(x64, params64, variant, nc, 1e-5, zero_centered)
    ref.backward(dy.double())

    tol = TOL[dtype]
    assert _rel(out.detach(), ref.detach()) <= tol, ("forward", variant, dtype)
    assert _rel(x.grad, x64.grad) <= tol, ("dx", variant, dtype)
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, (name, variant)
        assert _rel(p.grad, params64[name].grad) <= tol, (f"d{name}", variant, dtype)
    return module


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_forward_and_gradients_match_float64(variant, dtype):
    nc = NormConfig(variant=variant, gate_up_init="init_method")
    module = check_against_reference(variant, dtype, nc)
    expected = {"weight"}
    if nc.preaffine:
        expected.add("pre_scale")
    if nc.dyt:
        expected |= {"alpha", "bias"}
    if nc.gated:
        expected |= {"gate_down", "gate_up"}
    assert {n for n, _ in module.named_parameters()} == expected


@pytest.mark.parametrize("activation", GATE_ACTIVATIONS)
@pytest.mark.parametrize("granularity", ["elementwise", "tensorwise"])
def test_gate_ablations_match_float64(activation, granularity):
    nc = NormConfig(gate_activation=activation, granularity=granularity, gate_up_init="init_method")
    module = check_against_reference("gatednorm", torch.float32, nc)
    assert module.gate_up.shape == ((HIDDEN if granularity == "elementwise" else 1), 16)


@pytest.mark.parametrize("variant", ["rmsnorm", "preaffine_gatednorm", "gatedyt"])
def test_zero_centered_gamma(variant):
    check_against_reference(variant, torch.float32, NormConfig(variant=variant), zero_centered=True)
    fresh = norm_class(variant)(megatron_like_config(layernorm_zero_centered_gamma=True), hidden_size=HIDDEN)
    assert torch.all(fresh.weight == 0)  # stored as gamma - 1


def test_initialisation_gate_half_and_preaffine_identity():
    torch.manual_seed(0)
    cfg = megatron_like_config()
    x = torch.randn(SEQ, BATCH, HIDDEN)
    rms = norm_class("rmsnorm")(cfg, hidden_size=HIDDEN)(x)
    # PreAffine with lambda1 = 1 is exactly RMSNorm; GatedNorm with W_up = 0 is 0.5 * RMSNorm.
    torch.testing.assert_close(norm_class("preaffine")(cfg, hidden_size=HIDDEN)(x), rms, rtol=0, atol=0)
    gated = norm_class("gatednorm")(cfg, hidden_size=HIDDEN)
    assert torch.all(gated.gate_up == 0) and gated.gate_down.std() > 0
    torch.testing.assert_close(gated(x), 0.5 * rms)
    # W_down ~ N(0, init_method_std) from Megatron's init_method on the default generator
    assert abs(gated.gate_down.std().item() - 0.02) < 0.004


def test_megatron_parameter_contract():
    cfg = megatron_like_config(sequence_parallel=True)
    for cls in NORM_CLASSES.values():
        m = cls(config=cfg, hidden_size=HIDDEN, eps=1e-6, persist_layer_norm=True, normalization="RMSNorm")
        for name, p in m.named_parameters():
            assert p.sequence_parallel is True, (cls.__name__, name)
            assert not hasattr(p, "tensor_model_parallel") and not hasattr(p, "allreduce")
            assert p.dtype == torch.float32 and p.device.type == "cpu"
    meta = norm_class("gatednorm")(
        megatron_like_config(use_cpu_initialization=False, init_model_with_meta_device=True), hidden_size=HIDDEN
    )
    assert meta.gate_down.device.type == "meta"
    no_init = norm_class("gatednorm")(megatron_like_config(perform_initialization=False), hidden_size=HIDDEN)
    assert torch.all(no_init.gate_down == 0)


def test_rank_must_be_below_hidden_size():
    with pytest.raises(NormConfigError, match=r"rank.*hidden size \(16\)"):
        norm_class("gatednorm")(megatron_like_config(), hidden_size=16, norm_config=NormConfig(rank=16))
    with pytest.raises(ValueError, match="valid choices: rmsnorm, gatednorm"):
        norm_class("gatenorm")


def test_bf16_statistics_are_fp32():
    """A bf16 row with a huge outlier: fp32 statistics keep the small entries' relative precision."""
    cfg = megatron_like_config(torch.bfloat16)
    m = norm_class("rmsnorm")(cfg, hidden_size=HIDDEN)
    x = torch.ones(1, HIDDEN, dtype=torch.bfloat16)
    x[0, 0] = 3000.0
    y = m(x).float()
    expected = 1.0 / math.sqrt((3000.0**2 + HIDDEN - 1) / HIDDEN)
    assert abs(y[0, 1].item() - expected) / expected < 8e-3
