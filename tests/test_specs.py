"""Spec structure, configuration errors, hybrid layout and parameter counts (one process)."""

import pytest
import torch

from megatron_gatednorm.norm_config import VARIANTS, NormConfig
from megatron_gatednorm.paper import PAPER_MODELS
from megatron_gatednorm.model_shape import ModelShape
from megatron_gatednorm.parity import count_params, parity_ffn

megatron = pytest.importorskip("megatron.core")

from megatron.core.tensor_parallel.layers import ColumnParallelLinear  # noqa: E402
from megatron.core.transformer.identity_op import IdentityOp  # noqa: E402

from megatron_gatednorm import specs  # noqa: E402
from megatron_gatednorm.distributed import init_distributed
from megatron_gatednorm.model import build_gpt_model, transformer_config  # noqa: E402
from megatron_gatednorm.norms import GatedRMSNorm, RMSNorm  # noqa: E402

TINY = ModelShape(
    num_layers=4, hidden_size=64, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=96,
    vocab_size=128, qk_layernorm=True, attention_output_gate=True, max_position_embeddings=16,
)


@pytest.fixture(scope="module", autouse=True)
def megatron_single_process():
    init_distributed(device="cpu")


module_of = specs.spec_module


def config_of(shape, nc=None, **kw):
    return transformer_config(shape, nc or NormConfig(), use_cpu_initialization=True, **kw)


def test_local_block_spec_slots():
    nc = NormConfig(variant="gatednorm")
    block = specs.get_gatednorm_block_spec(config_of(TINY, nc), use_transformer_engine=False)
    assert len(block.layer_specs) == 4
    assert module_of(block.layer_norm) is GatedRMSNorm
    layer = block.layer_specs[0].submodules
    assert module_of(layer.input_layernorm) is GatedRMSNorm
    assert module_of(layer.pre_mlp_layernorm) is GatedRMSNorm
    assert layer.input_layernorm.params["norm_config"] is nc
    attn = layer.self_attention.submodules
    assert attn.linear_qkv is ColumnParallelLinear
    assert module_of(attn.q_layernorm) is RMSNorm  # QK-norm untouched by default (plain RMSNorm)
    assert layer.sharded_state_dict_keys_map == {}


def test_placement_and_baseline_keys_map():
    nc = NormConfig(variant="preaffine", placement="mlp,qk")
    layer = specs.get_gatednorm_block_spec(config_of(TINY, nc), use_transformer_engine=False).layer_specs[0].submodules
    assert module_of(layer.input_layernorm) is RMSNorm
    assert module_of(layer.pre_mlp_layernorm).__name__ == "PreAffineRMSNorm"
    assert module_of(layer.self_attention.submodules.k_layernorm).__name__ == "PreAffineRMSNorm"
    # the unreplaced input norm keeps Megatron's TE-compatible checkpoint key
    assert layer.sharded_state_dict_keys_map == {"input_layernorm.": "self_attention.linear_qkv.layer_norm_"}
    base = specs.get_gatednorm_block_spec(config_of(TINY), NormConfig(variant="rmsnorm"), use_transformer_engine=False)
    assert module_of(base.layer_norm) is RMSNorm


def test_moe_layers_and_residual_clip_bda():
    moe = TINY.replace(num_experts=4, moe_ffn_hidden_size=32, moe_layer_freq=[1, 0, 1, 0])
    nc = NormConfig(residual_clip=10.0)
    block = specs.get_gatednorm_block_spec(config_of(moe, nc), use_transformer_engine=False)
    kinds = [module_of(s.submodules.mlp).__name__ for s in block.layer_specs]
    assert kinds == ["MoELayer", "MLP", "MoELayer", "MLP"]
    for s in block.layer_specs:
        assert module_of(s.submodules.pre_mlp_layernorm) is GatedRMSNorm
        assert s.submodules.mlp_bda.__name__ == "get_clipped_bias_dropout_add"


def test_residual_clip_bounds_the_residual_stream():
    nc = NormConfig(variant="gatednorm", residual_clip=0.05)
    model = build_gpt_model(TINY, config_of(TINY, nc), max_sequence_length=16)
    peaks = []
    for layer in model.decoder.layers:
        layer.register_forward_hook(lambda m, i, o: peaks.append(o[0].abs().max().item()))
    toks = torch.randint(0, 128, (2, 16))
    model(toks, torch.arange(16).expand(2, 16), None)
    assert len(peaks) == 4 and max(peaks) <= 0.05 + 1e-7
    unclipped = build_gpt_model(TINY, config_of(TINY, NormConfig()), max_sequence_length=16)
    peaks.clear()
    for layer in unclipped.decoder.layers:
        layer.register_forward_hook(lambda m, i, o: peaks.append(o[0].abs().max().item()))
    unclipped(toks, torch.arange(16).expand(2, 16), None)
    assert max(peaks) > 0.05  # the clip is what bounds it


def test_pipeline_stage_slicing():
    """Each stage gets its own layers: MoE layers 0-1 on stage 0, dense layers 2-3 on stage 1."""
    shape = TINY.replace(num_experts=4, moe_ffn_hidden_size=32, moe_layer_freq=[1, 1, 0, 0])
    config = config_of(shape, pipeline_model_parallel_size=2)
    stage1 = specs.get_gatednorm_block_spec(config, use_transformer_engine=False, pp_rank=1)
    stage0 = specs.get_gatednorm_block_spec(config, use_transformer_engine=False, pp_rank=0)
    kinds = [[module_of(spec.submodules.mlp).__name__ for spec in stage.layer_specs] for stage in (stage0, stage1)]
    assert kinds == [["MoELayer", "MoELayer"], ["MLP", "MLP"]]


def test_transformer_engine_backend_unavailable_is_a_clear_error():
    if specs.HAVE_TE:
        pytest.skip("Transformer Engine is installed: the TE path is exercised instead")
    with pytest.raises(ValueError, match="transformer_impl='local'"):
        specs.get_gatednorm_block_spec(config_of(TINY), use_transformer_engine=True)


@pytest.mark.parametrize("bad, message", [
    (dict(normalization="LayerNorm"), "invalid normalization='LayerNorm'"),
    (dict(use_te_op_fuser=True), "invalid use_te_op_fuser=True"),
    (dict(fused_residual_rmsnorm=True), "invalid fused_residual_rmsnorm=True with norm variant 'gatednorm': "
                                        "Transformer Engine's fused residual RMSNorm"),
])
def test_incompatible_transformer_config(bad, message):
    config = config_of(TINY)
    for k, v in bad.items():
        setattr(config, k, v)
    with pytest.raises(ValueError, match=message):
        specs.get_gatednorm_block_spec(config, use_transformer_engine=False)


@pytest.mark.parametrize("variant", VARIANTS)
def test_norm_builder_protocol(variant):
    """megatron-core >= 0.17 calls a norm slot as ``builder(config=, hidden_size=, eps=)`` and lets
    the module return ``(output, residual)``: the plugin's specs build that way (``ModuleSpec``
    is callable in 0.16.1 too) and their modules declare and return the output alone."""
    spec = specs.norm_module_spec(NormConfig(variant=variant))
    module = spec(config=config_of(TINY), hidden_size=TINY.hidden_size, eps=1e-5)
    assert module.returns_residual is False
    out = module(torch.randn(3, 2, TINY.hidden_size))
    assert isinstance(out, torch.Tensor) and out.shape == (3, 2, TINY.hidden_size)


def test_rank_not_below_hidden_size():
    with pytest.raises(ValueError, match="rank=64"):
        specs.get_gatednorm_block_spec(config_of(TINY), NormConfig(rank=64), use_transformer_engine=False)


def test_hybrid_gated_delta_net_layout():

    shape = TINY.replace(
        experimental_attention_variant="gated_delta_net", linear_attention_freq=2,
        linear_key_head_dim=16, linear_value_head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4,
        num_experts=4, moe_ffn_hidden_size=32, moe_shared_expert_intermediate_size=32,
    )
    nc = NormConfig(variant="preaffine_gatednorm")
    block = specs.get_gatednorm_block_spec(config_of(shape, nc), use_transformer_engine=False)
    attention = [module_of(s.submodules.self_attention).__name__ for s in block.layer_specs]
    assert attention == ["GatedDeltaNet", "SelfAttention", "GatedDeltaNet", "SelfAttention"]
    gdn = block.layer_specs[0].submodules
    assert module_of(gdn.input_layernorm).__name__ == "PreAffineGatedRMSNorm"
    assert gdn.self_attention.submodules.in_proj is ColumnParallelLinear  # norm not fused


def test_hybrid_parameter_count_equals_built_model(monkeypatch):
    """megatron-core 0.16 builds Gated DeltaNet without fla (only its forward needs fla's GPU
    kernels), so the built hybrid model's parameters can be counted on CPU."""
    import inspect

    from megatron.core import package_info
    from megatron.core.ssm.gated_delta_net import GatedDeltaNet

    if tuple(int(v) for v in package_info.__version__.split(".")[:2]) >= (0, 17):
        pytest.skip(f"megatron-core {package_info.__version__} needs fla's kernels to construct Gated DeltaNet")
    shape = TINY.replace(
        experimental_attention_variant="gated_delta_net", linear_attention_freq=2,
        linear_key_head_dim=16, linear_value_head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4,
        num_experts=4, moe_ffn_hidden_size=32, moe_shared_expert_intermediate_size=32,
    )
    nc = NormConfig(variant="preaffine_gatednorm")
    monkeypatch.setattr(inspect.getmodule(GatedDeltaNet.__init__), "HAVE_FLA", True)
    model = build_gpt_model(shape, config_of(shape, nc), max_sequence_length=16)
    assert sum(p.numel() for p in model.parameters()) == count_params(shape, nc)["total"]


COUNT_SHAPES = {
    "dense-gqa-qk-ga": TINY,
    "dense-untied-noqk-noga": TINY.replace(untie_embeddings_and_output_weights=True, qk_layernorm=False,
                                           attention_output_gate=False),
    "moe-shared": TINY.replace(num_experts=4, moe_ffn_hidden_size=32, moe_shared_expert_intermediate_size=48,
                               moe_layer_freq=[0, 1, 1, 1]),
}


@pytest.mark.parametrize("shape_name", sorted(COUNT_SHAPES))
@pytest.mark.parametrize("variant", VARIANTS)
def test_analytic_count_equals_built_model(shape_name, variant):
    shape = COUNT_SHAPES[shape_name]
    nc = NormConfig(variant=variant, rank=8, placement="attn,mlp,final,qk")
    report = parity_ffn(shape, nc)
    adjusted = shape.replace(**{report.field: report.width})
    model = build_gpt_model(adjusted, config_of(adjusted, nc), max_sequence_length=16)
    assert sum(p.numel() for p in model.parameters()) == report.params == count_params(adjusted, nc)["total"]
    assert report.params <= report.baseline_params


def test_paper_2b_gatednorm_overhead_and_parity():
    shape = PAPER_MODELS["dense-2b"]
    report = parity_ffn(shape, NormConfig(variant="gatednorm"))
    # 28 layers x 2 norms + final norm, each 2 * 2048 * 16: the paper's "+3.7M"
    assert report.norm_overhead == 57 * 2 * 2048 * 16 == 3_735_552
    assert (report.field, report.width) == ("ffn_hidden_size", 6122)
    unit = 28 * 3 * 2048  # one unit of FFN width
    assert -unit < report.residual <= 0
    assert parity_ffn(shape, NormConfig(variant="preaffine")).width == 6143


def test_transformer_engine_spec_unfuses_replaced_norms(te_spec_assembly):
    from megatron.core.extensions.transformer_engine import (
        TEColumnParallelLinear, TELayerNormColumnParallelLinear, TENorm,
    )

    moe = TINY.replace(num_experts=4, moe_ffn_hidden_size=32, moe_layer_freq=[1, 0, 1, 0])
    block = specs.get_gatednorm_block_spec(config_of(moe, NormConfig()), use_transformer_engine=True)
    assert module_of(block.layer_norm) is GatedRMSNorm
    for s in block.layer_specs:
        sub = s.submodules
        assert module_of(sub.input_layernorm) is GatedRMSNorm
        assert sub.self_attention.submodules.linear_qkv is TEColumnParallelLinear
        assert module_of(sub.pre_mlp_layernorm) is GatedRMSNorm
        assert module_of(sub.self_attention.submodules.q_layernorm) is TENorm
        if module_of(sub.mlp).__name__ == "MLP":
            assert specs.spec_submodules(sub.mlp).linear_fc1 is TEColumnParallelLinear
        assert not any(k.startswith(("input_layernorm", "pre_mlp_layernorm")) for k in sub.sharded_state_dict_keys_map)

    # baseline and unplaced slots stay Megatron's fused TE modules
    base = specs.get_gatednorm_block_spec(config_of(TINY), NormConfig(variant="rmsnorm"), use_transformer_engine=True)
    sub = base.layer_specs[0].submodules
    assert sub.input_layernorm is IdentityOp and base.layer_norm is TENorm
    assert sub.self_attention.submodules.linear_qkv is TELayerNormColumnParallelLinear
    assert specs.spec_submodules(sub.mlp).linear_fc1 is TELayerNormColumnParallelLinear
    partial = specs.get_gatednorm_block_spec(config_of(TINY), NormConfig(placement="mlp"), use_transformer_engine=True)
    sub = partial.layer_specs[0].submodules
    assert sub.self_attention.submodules.linear_qkv is TELayerNormColumnParallelLinear
    assert specs.spec_submodules(sub.mlp).linear_fc1 is TEColumnParallelLinear and partial.layer_norm is TENorm


def test_transformer_engine_hybrid_spec(te_spec_assembly):
    from megatron.core.extensions.transformer_engine import TEColumnParallelLinear, TELayerNormColumnParallelLinear

    shape = TINY.replace(experimental_attention_variant="gated_delta_net", linear_attention_freq=4,
                         linear_key_head_dim=16, linear_value_head_dim=16, linear_num_key_heads=2,
                         linear_num_value_heads=4)
    gated = specs.get_gatednorm_block_spec(config_of(shape), use_transformer_engine=True)
    assert [module_of(s.submodules.self_attention).__name__ for s in gated.layer_specs] == [
        "GatedDeltaNet", "GatedDeltaNet", "GatedDeltaNet", "SelfAttention"]
    gdn = gated.layer_specs[0].submodules
    assert module_of(gdn.input_layernorm) is GatedRMSNorm
    assert gdn.self_attention.submodules.in_proj is TEColumnParallelLinear
    base = specs.get_gatednorm_block_spec(config_of(shape), NormConfig(variant="rmsnorm"), use_transformer_engine=True)
    gdn = base.layer_specs[0].submodules
    assert gdn.input_layernorm is IdentityOp
    assert gdn.self_attention.submodules.in_proj is TELayerNormColumnParallelLinear
