"""The preflight's fused-vs-eager norm check (:mod:`megatron_gatednorm.training.fused_check`) in Triton's
CPU interpreter: every fused variant passes well inside ``TOLERANCES``; unfused configurations
are skipped with the reason; a perturbed, raising or NaN-producing kernel fails naming the
variant; the cases of a model are its distinct norm modules."""

from __future__ import annotations

import pytest
import torch

from megatron_gatednorm.training import fused_check
from megatron_gatednorm.norm_config import NormConfig
from megatron_gatednorm.norms import norm_class


FUSED = ("rmsnorm", "gatednorm", "preaffine", "preaffine_gatednorm")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # compiled kernels on a GPU, the interpreter on CPU


def case(variant, hidden=32, zero_centered_gamma=False, **nc):
    return fused_check.NormCase(norm_class(variant), hidden, 1e-5, zero_centered_gamma,
                                NormConfig(variant=variant, rank=4, **nc))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_every_fused_variant_passes_well_inside_the_tolerance(kernels, dtype):
    cases = [case(v, zero_centered_gamma=zc) for v in FUSED for zc in (False, True)]
    results = fused_check.check_fused_norms(cases, dtype, DEVICE)
    assert [r.status for r in results] == ["ok"] * len(cases), [str(r) for r in results]
    assert max(r.error for r in results) < fused_check.TOLERANCES[dtype] / 4, [str(r) for r in results]


@pytest.mark.parametrize("variant, nc, reason", [
    ("dyt", {}, "DyT not fused"),
    ("gatedyt", {}, "DyT not fused"),
    ("gatednorm", {"gate_activation": "tanh"}, "gate_activation=tanh not fused"),
    ("gatednorm", {"granularity": "tensorwise"}, "granularity=tensorwise not fused"),
])
def test_unfused_configurations_are_skipped_with_the_reason(kernels, variant, nc, reason):
    result = fused_check.check_case(case(variant, **nc), torch.float32, DEVICE)
    assert (result.status, result.detail) == ("skipped", f"{reason} (training runs the eager path)")


def test_eager_request_skips(kernels, monkeypatch):
    monkeypatch.setenv("MGN_NORM_IMPL", "eager")
    result = fused_check.check_case(case("gatednorm"), torch.float32, DEVICE)
    assert (result.status, result.detail) == ("skipped", "MGN_NORM_IMPL=eager (training runs the eager path)")


def test_a_perturbed_kernel_fails_naming_the_variant_and_the_tensors(kernels, monkeypatch):
    good = kernels.fused_rms_norm
    monkeypatch.setattr(kernels, "fused_rms_norm", lambda x, **kw: good(x, **kw) * 1.2)
    results = fused_check.check_fused_norms([case("preaffine"), case("gatednorm")], torch.float32, DEVICE)
    assert [r.status for r in results] == ["failed", "ok"]  # the gated kernel is untouched
    assert str(results[0]).startswith(
        "preaffine(hidden 32): failed: max |fused - eager| / max |eager| above 0.002 (float32): output 0.2")
    assert "dx " in results[0].detail and "dpre_scale " in results[0].detail


def test_a_raising_or_nan_kernel_fails(kernels, monkeypatch):
    def broken(x, **kw):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(kernels, "gated_rms_norm", broken)
    result = fused_check.check_case(case("gatednorm"), torch.bfloat16, DEVICE)
    assert result.status == "failed"
    assert result.detail == "fused path raised RuntimeError: CUDA error: an illegal memory access was encountered"
    monkeypatch.setattr(kernels, "gated_rms_norm", lambda x, **kw: x * float("nan"))
    result = fused_check.check_case(case("preaffine_gatednorm"), torch.bfloat16, DEVICE)
    assert result.status == "failed" and "output nan" in result.detail


def test_cases_are_the_distinct_norm_modules_of_a_model():
    pytest.importorskip("megatron.core")
    if torch.cuda.is_available():
        pytest.skip("CPU-only test: the CPU shim refuses to run where CUDA is available")
    from megatron_gatednorm.distributed import init_distributed
    from megatron_gatednorm.model import build_gpt_model, transformer_config
    from megatron_gatednorm.model_shape import ModelShape

    init_distributed(device="cpu")
    shape = ModelShape(num_layers=2, hidden_size=64, num_attention_heads=4, ffn_hidden_size=96, vocab_size=128,
                       kv_channels=16, qk_layernorm=True, max_position_embeddings=16)
    nc = NormConfig(variant="gatednorm", rank=4)
    config = transformer_config(shape, nc, use_cpu_initialization=True, init_model_with_meta_device=True)
    with torch.device("meta"):
        model = build_gpt_model(shape, config)
    names = [c.name for c in fused_check.norm_cases(model, nc)]
    assert names == ["gatednorm(hidden 64, rank 4)", "rmsnorm(hidden 16)"]  # residual slots; per-head QK-norm
