"""Activation recompute with the plugin's norms (one process, CPU shim, Triton's interpreter).

* Full recompute (``recompute_granularity="full"``, ``uniform``, one layer per checkpoint) with
  the fused norm kernels gives the loss and gradients of the run without recompute, and the
  kernels really run again in the backward pass.
* Selective recompute of ``layernorm`` without Transformer Engine is refused when the model is
  built: megatron-core's ``CheckpointWithoutOutput`` calls TE's ``FP8GlobalStateManager`` and
  fails with ``NameError`` where TE is absent (shown by building past the check).
"""

from __future__ import annotations

import pytest
import torch

from megatron_gatednorm.norm_config import NormConfig

from megatron_gatednorm.model_shape import ModelShape

pytest.importorskip("megatron.core")

SHAPE = ModelShape(num_layers=2, hidden_size=48, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=96,
                   vocab_size=128, attention_output_gate=True, max_position_embeddings=16)
FULL_RECOMPUTE = dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
LAYERNORM_RECOMPUTE = dict(recompute_granularity="selective", recompute_modules=["layernorm"])


@pytest.fixture(scope="module")
def world():
    """A 1-process gloo world with Megatron model parallelism 1x1 (CPU shim applied)."""
    if torch.cuda.is_available():
        pytest.skip("CPU-only test: the CPU shim refuses to run where CUDA is available")
    from megatron_gatednorm.distributed import init_distributed

    init_distributed(device="cpu")


def build(nc: NormConfig, **recompute):
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    from megatron_gatednorm.model import build_gpt_model, transformer_config

    torch.manual_seed(0)
    model_parallel_cuda_manual_seed(0)
    config = transformer_config(SHAPE, nc, use_cpu_initialization=True, **recompute)
    return build_gpt_model(SHAPE, config)


def loss_and_grads(model):
    tokens = torch.randint(0, SHAPE.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(16).unsqueeze(0).expand(2, 16)
    model.zero_grad(set_to_none=True)
    loss = model(tokens, positions, None, labels=tokens).float().mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def count_calls(kernels, monkeypatch):
    """Count calls of the fused functional API (the norm modules' fused path)."""
    calls = []
    for name in ("gated_rms_norm", "fused_rms_norm"):
        original = getattr(kernels, name)

        def counted(*a, _original=original, **kw):
            calls.append(1)
            return _original(*a, **kw)

        monkeypatch.setattr(kernels, name, counted)
    return calls


@pytest.mark.parametrize("variant", ["gatednorm", "preaffine"])
def test_full_recompute_with_fused_norms_matches_no_recompute(world, kernels, monkeypatch, variant):
    from megatron_gatednorm.norms import _ResidualNorm

    monkeypatch.setenv("MGN_NORM_IMPL", "fused")
    nc = NormConfig(variant=variant, rank=4, gate_up_init="init_method", preaffine_init=1.5)
    plain, recomputed = build(nc), build(nc, **FULL_RECOMPUTE)
    recomputed.load_state_dict(plain.state_dict())
    assert recomputed.config.recompute_granularity == "full" and plain.config.recompute_granularity is None
    calls = count_calls(kernels, monkeypatch)
    loss, grads = loss_and_grads(plain)
    plain_calls = len(calls)
    loss_r, grads_r = loss_and_grads(recomputed)
    norms = [m for m in recomputed.modules() if isinstance(m, _ResidualNorm)]
    assert len(norms) == 5 and {m.impl_decision.impl for m in norms} == {"fused"}
    # 2 layers x 2 norms + the final norm; full recompute runs each layer's 2 norms again in backward
    assert (plain_calls, len(calls) - plain_calls) == (5, 9)
    assert torch.equal(loss_r, loss), (loss_r.item(), loss.item())
    assert grads_r.keys() == grads.keys()
    for name in grads:
        assert torch.allclose(grads_r[name], grads[name], rtol=1e-6, atol=1e-9), name


def test_layernorm_recompute_without_transformer_engine_is_refused_at_model_build(world):
    with pytest.raises(ValueError) as e:
        build(NormConfig(rank=4), **LAYERNORM_RECOMPUTE)
    assert str(e.value).startswith(
        "invalid recompute_modules=['layernorm'] with recompute_granularity='selective' and the local "
        "(non-Transformer-Engine) layers")
    assert str(e.value).endswith(
        "valid: --transformer-impl transformer_engine, or drop layernorm from --recompute-modules")
    build(NormConfig(rank=4), recompute_granularity="selective", recompute_modules=["core_attn", "mlp"])


def test_the_refusal_guards_a_real_crash_without_transformer_engine(world, monkeypatch):
    """Past the check, megatron-core fails only once the forward pass runs (in a job: after
    the start-up). If this ever stops failing, the refusal can be relaxed."""
    from megatron_gatednorm import specs

    if specs.HAVE_TE:
        pytest.skip("Transformer Engine is installed here")
    monkeypatch.setattr(specs, "check_recompute_modules", lambda *a, **k: None)
    model = build(NormConfig(rank=4), **LAYERNORM_RECOMPUTE)
    with pytest.raises(NameError, match="FP8GlobalStateManager"):
        loss_and_grads(model)
