"""HybridModel ⇄ GPT-hybrid weight names and shapes (megatron_gatednorm.checkpoint.hybrid_keys),
pure Python. That the renamed weights give the same logits in both models is
tests/test_hybrid_convert.py's (megatron-core 0.19.2)."""

import pytest

from megatron_gatednorm.checkpoint.hybrid_keys import (
    gpt_shape, gpt_to_hybrid, gpt_to_hybrid_key, hybrid_to_gpt, hybrid_to_gpt_key,
)
from megatron_gatednorm.model_shape import ModelShape, hybrid_form

# written out by hand, as the two models name them (megatron-core 0.19.2, local and TE-fused names)
PAIRS = [
    ("decoder.layers.0.self_attention.in_proj.layer_norm_weight", "decoder.layers.0.self_attention.in_proj.layer_norm_weight"),
    ("decoder.layers.0.self_attention.in_proj.weight.query", "decoder.layers.0.self_attention.in_proj.weight.query"),
    ("decoder.layers.0.pre_mlp_layernorm.gate_up", "decoder.layers.1.pre_mlp_layernorm.gate_up"),
    ("decoder.layers.0.mlp.experts.experts.linear_fc1.weight", "decoder.layers.1.mlp.experts.experts.linear_fc1.weight"),
    ("decoder.layers.1.input_layernorm.weight", "decoder.layers.2.input_layernorm.weight"),
    ("decoder.layers.1.self_attention.linear_qkv.weight", "decoder.layers.2.self_attention.linear_qkv.weight"),
    ("decoder.layers.1.mlp.linear_fc1.layer_norm_weight", "decoder.layers.3.mlp.linear_fc1.layer_norm_weight"),
    ("decoder.layers.1.mlp.shared_experts.gate_weight", "decoder.layers.3.mlp.shared_experts.gate_weight"),
    ("decoder.final_layernorm.weight", "decoder.final_norm.weight"),
    ("decoder.final_layernorm.gate_down", "decoder.final_norm.gate_down"),
    ("embedding.word_embeddings.weight", "embedding.word_embeddings.weight"),
    ("output_layer.weight", "output_layer.weight"),
]


@pytest.mark.parametrize("pattern", ["GE*-", "GE|*-"])
def test_names_map_both_ways(pattern):
    gpt = {g: n for n, (g, _) in enumerate(PAIRS)}
    hybrid = {h: n for n, (_, h) in enumerate(PAIRS)}
    assert gpt_to_hybrid(gpt, pattern) == hybrid
    assert hybrid_to_gpt(hybrid, pattern) == gpt
    for g, h in PAIRS:
        assert gpt_to_hybrid_key(g) == h and hybrid_to_gpt_key(h) == g


def test_keys_that_do_not_fit_the_pattern_are_refused():
    with pytest.raises(ValueError, match=r"mixer part in HybridModel layer 1, which pairs as a FFN"):
        hybrid_to_gpt_key("decoder.layers.1.self_attention.linear_qkv.weight")
    with pytest.raises(ValueError, match=r"layer 4 is beyond the 4 HybridModel layers of hybrid_layer_pattern='GE\*-'"):
        hybrid_to_gpt({"decoder.layers.4.input_layernorm.weight": 0}, "GE*-")
    with pytest.raises(ValueError, match=r"layer 2 is beyond the 2 GPT-hybrid layers"):
        gpt_to_hybrid({"decoder.layers.2.mlp.linear_fc2.weight": 0}, "GE*-")
    with pytest.raises(ValueError, match="in no known sublayer"):
        gpt_to_hybrid_key("decoder.layers.0.cross_attention.linear_q.weight")
    with pytest.raises(ValueError, match=r"hybrid_layer_pattern='GG\*-' has no GPT-hybrid form"):
        hybrid_to_gpt({}, "GG*-")


def test_shapes_map_both_ways():
    common = dict(hidden_size=64, num_attention_heads=4, ffn_hidden_size=96, vocab_size=128, num_experts=4)
    hybrid = ModelShape(num_layers=6, **common)
    gpt = gpt_shape(hybrid, "GE*-|GE")
    assert (gpt.num_layers, gpt.linear_attention_pattern(), gpt.moe_pattern()) == (3, [1, 0, 1], [1, 0, 1])
    assert gpt.experimental_attention_variant == "gated_delta_net"
    assert hybrid_form(gpt) == hybrid.replace(hybrid_layer_pattern="GE*-GE")  # and back
    # no MoE layer in the pattern: a dense GPT form; no Gated DeltaNet layer: softmax attention only
    dense = gpt_shape(hybrid.replace(num_layers=4), "*-*-")
    assert (dense.num_experts, dense.experimental_attention_variant, dense.linear_attention_freq) == (None, None, None)
    with pytest.raises(ValueError, match=r"num_layers=6 but hybrid_layer_pattern='GE\*E' has 4 layers"):
        gpt_shape(hybrid, "GE*E")
    with pytest.raises(ValueError, match="has MoE layers .E. but num_experts is not set"):
        gpt_shape(hybrid.replace(num_layers=4, num_experts=None), "GE*E")
