"""megatron_gatednorm.hybrid_specs: HybridModel stack specs (megatron-core >= 0.18; run under 0.19.2
by tests/test_mcore019_compat.py) — slot structure for the local and the (assembled) Transformer
Engine backend, the final norm, a CPU build with forward/backward — and, under 0.16.1, the clear
error."""

import importlib.util

import pytest
import torch

from megatron_gatednorm.model_shape import ModelShape
from megatron_gatednorm.norm_config import NormConfig

pytest.importorskip("megatron.core")

from megatron_gatednorm import hybrid_specs  # noqa: E402  (imports under every megatron-core)
from megatron_gatednorm.distributed import init_distributed  # noqa: E402
from megatron_gatednorm.model import transformer_config  # noqa: E402
from megatron_gatednorm.norms import GatedRMSNorm, RMSNorm  # noqa: E402
from megatron_gatednorm.specs import spec_module, spec_submodules  # noqa: E402

HAVE_HYBRID = importlib.util.find_spec("megatron.core.models.hybrid") is not None
needs_hybrid = pytest.mark.skipif(not HAVE_HYBRID, reason="megatron-core < 0.18 has no HybridModel")

SHAPE = ModelShape(
    num_layers=4, hidden_size=64, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=96,
    vocab_size=128, qk_layernorm=True, attention_output_gate=True, max_position_embeddings=16,
    num_experts=4, moe_ffn_hidden_size=32, linear_key_head_dim=16, linear_value_head_dim=16,
    linear_num_key_heads=2, linear_num_value_heads=4,
)


@pytest.fixture(scope="module", autouse=True)
def megatron_single_process():
    init_distributed(device="cpu")


def config_of(nc=None, **kw):
    return transformer_config(SHAPE, nc or NormConfig(), use_cpu_initialization=True, **kw)


def test_without_hybrid_package_a_clear_error():
    if HAVE_HYBRID:
        pytest.skip("this megatron-core has HybridModel")
    with pytest.raises(ValueError, match=">= 0.18"):
        hybrid_specs.get_gatednorm_hybrid_stack_spec(config_of())


@needs_hybrid
def test_local_stack_spec_slots():
    from megatron.core.ssm.mlp_layer import MLPLayer
    from megatron.core.tensor_parallel.layers import ColumnParallelLinear
    from megatron.core.transformer.identity_op import IdentityOp
    from megatron.core.transformer.transformer_layer import MoETransformerLayer, TransformerLayer

    nc = NormConfig(variant="gatednorm")
    stack = hybrid_specs.get_gatednorm_hybrid_stack_spec(config_of(nc), use_transformer_engine=False)
    assert stack.module.__name__ == "GatedNormHybridStack"
    assert module_is(stack.params["final_norm"], GatedRMSNorm)
    sub = stack.submodules
    gdn, attn, mlp, moe = sub.gdn_layer, sub.attention_layer, sub.mlp_layer, sub.moe_layer
    assert (gdn.module, attn.module, mlp.module, moe.module) == (TransformerLayer, TransformerLayer, MLPLayer, MoETransformerLayer)
    for layer in (gdn, attn):  # the norm before Gated DeltaNet / attention
        s = spec_submodules(layer)
        assert module_is(s.input_layernorm, GatedRMSNorm) and s.input_layernorm.params["norm_config"] is nc
        assert s.pre_mlp_layernorm is IdentityOp and s.mlp is IdentityOp
    for layer in (mlp, moe):  # the norm before MLP / MoE
        s = spec_submodules(layer)
        assert module_is(s.pre_mlp_layernorm, GatedRMSNorm)
        assert s.input_layernorm is IdentityOp and s.self_attention is IdentityOp
    assert spec_module(spec_submodules(moe).mlp).__name__ == "MoELayer"
    assert spec_module(spec_submodules(mlp).mlp).__name__ == "MLP"
    delta = spec_submodules(gdn).self_attention
    assert spec_module(delta).__name__ == "GatedDeltaNet"
    assert delta.submodules.in_proj is ColumnParallelLinear
    assert module_is(delta.submodules.out_norm, RMSNorm)  # Gated DeltaNet's internal norm: plain
    qk = spec_submodules(attn).self_attention.submodules
    assert module_is(qk.q_layernorm, RMSNorm) and module_is(qk.k_layernorm, RMSNorm)  # QK-norm untouched
    assert all(spec_submodules(l).sharded_state_dict_keys_map == {} for l in (gdn, attn, mlp, moe))
    for symbol in ("mamba_layer", "dsa_layer", "mla_layer"):
        assert getattr(sub, symbol).module is hybrid_specs.UnsupportedHybridLayer
    assert sub.mtp_block_spec is None


@needs_hybrid
def test_local_baseline_keeps_te_compatible_keys_and_qk_placement():
    base = hybrid_specs.get_gatednorm_hybrid_stack_spec(config_of(), NormConfig(variant="rmsnorm"), use_transformer_engine=False)
    sub = base.submodules
    assert module_is(base.params["final_norm"], RMSNorm)
    assert spec_submodules(sub.gdn_layer).sharded_state_dict_keys_map == {"input_layernorm.": "self_attention.in_proj.layer_norm_"}
    assert spec_submodules(sub.attention_layer).sharded_state_dict_keys_map == {"input_layernorm.": "self_attention.linear_qkv.layer_norm_"}
    assert spec_submodules(sub.mlp_layer).sharded_state_dict_keys_map == {"pre_mlp_layernorm.": "mlp.linear_fc1.layer_norm_"}
    qk = hybrid_specs.get_gatednorm_hybrid_stack_spec(
        config_of(), NormConfig(variant="preaffine", placement="qk,final"), use_transformer_engine=False)
    attn = spec_submodules(qk.submodules.attention_layer)
    assert spec_module(attn.self_attention.submodules.q_layernorm).__name__ == "PreAffineRMSNorm"
    assert module_is(attn.input_layernorm, RMSNorm)  # attn not in the placement
    assert spec_module(qk.params["final_norm"]).__name__ == "PreAffineRMSNorm"


@needs_hybrid
def test_transformer_engine_stack_spec(te_spec_assembly):
    from megatron.core.extensions.transformer_engine import (
        TEColumnParallelLinear, TELayerNormColumnParallelLinear, TENorm,
    )
    from megatron.core.transformer.identity_op import IdentityOp

    stack = hybrid_specs.get_gatednorm_hybrid_stack_spec(config_of(), use_transformer_engine=True)
    sub = stack.submodules
    assert module_is(stack.params["final_norm"], GatedRMSNorm)
    gdn = spec_submodules(sub.gdn_layer)
    assert module_is(gdn.input_layernorm, GatedRMSNorm)
    assert gdn.self_attention.submodules.in_proj is TEColumnParallelLinear  # unfused behind the plugin norm
    assert gdn.self_attention.submodules.out_norm is TENorm
    attn = spec_submodules(sub.attention_layer)
    assert module_is(attn.input_layernorm, GatedRMSNorm)
    assert attn.self_attention.submodules.linear_qkv is TEColumnParallelLinear
    assert attn.self_attention.submodules.q_layernorm is TENorm
    mlp = spec_submodules(sub.mlp_layer)
    assert module_is(mlp.pre_mlp_layernorm, GatedRMSNorm) and spec_submodules(mlp.mlp).linear_fc1 is TEColumnParallelLinear
    assert module_is(spec_submodules(sub.moe_layer).pre_mlp_layernorm, GatedRMSNorm)

    # baseline: Megatron's fused TE modules, TENorm final norm (the stock hybrid_stack_spec's)
    base = hybrid_specs.get_gatednorm_hybrid_stack_spec(config_of(), NormConfig(variant="rmsnorm"), use_transformer_engine=True)
    sub = base.submodules
    assert base.params["final_norm"] is TENorm
    assert spec_submodules(sub.gdn_layer).input_layernorm is IdentityOp
    assert spec_submodules(sub.gdn_layer).self_attention.submodules.in_proj is TELayerNormColumnParallelLinear
    assert spec_submodules(sub.attention_layer).self_attention.submodules.linear_qkv is TELayerNormColumnParallelLinear
    assert spec_submodules(spec_submodules(sub.mlp_layer).mlp).linear_fc1 is TELayerNormColumnParallelLinear


@needs_hybrid
def test_tiny_hybrid_model_builds_and_trains_on_cpu():
    """Every layer kind with the plugin's norms, the final norm included, forward and backward
    on CPU (the CPU shim stands in for fla's Gated DeltaNet kernels)."""
    nc = NormConfig(variant="gatednorm", gate_up_init="init_method")
    model = hybrid_specs.build_hybrid_model(config_of(nc, params_dtype=torch.float32), "GE*-", 128, 16)
    kinds = [type(l).__name__ for l in model.decoder.layers]
    assert kinds == ["TransformerLayer", "MoETransformerLayer", "TransformerLayer", "MLPLayer"]
    assert type(model.decoder.final_norm) is GatedRMSNorm
    assert not any("TENorm" in type(m).__name__ for m in model.modules())
    toks = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(0))
    loss = model(toks, torch.arange(8).expand(2, 8), None, labels=toks)
    assert loss.shape == (2, 8) and torch.isfinite(loss).all()
    loss.mean().backward()
    norms = {n: p for n, p in model.named_parameters() if "layernorm" in n or "final_norm" in n}
    assert {n.rsplit(".", 2)[-2] for n in norms if n.endswith("gate_down")} == {"input_layernorm", "pre_mlp_layernorm", "final_norm"}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in norms.items() if "gate" in n or n.endswith("weight"))
    for p in model.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()


def module_is(spec, cls):
    return spec_module(spec) is cls
