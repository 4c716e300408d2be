"""The paper's model architectures (arXiv 2601.22966, App. A.4.1, Table 5) as ModelShapes.

Stated there: layers, hidden size, softmax/linear attention layout, heads, head dims, FFN or
per-expert width, experts / shared / top-k, tied embeddings. Not stated, chosen here:
the vocabulary (151,936, Qwen's), QK-norm on (the models follow Qwen3 / Qwen3-Next), gated
attention on (the paper's baseline), SwiGLU, no biases, and the shared-expert width equal to
the per-expert width. Counts from these shapes are checked against GPTModel in the tests.

Table 5 does not reproduce the paper's headline sizes: as stated it gives 16.0B total / 2.2B
active parameters for "MoE-7B-A2B" (the paper: 7.4B / 1.7B) and 20.8B / 2.1B for "MoE-24B-A3B"
(24.6B / 2.7B), with any vocabulary. The shapes keep Table 5's numbers; ``mgn params`` prints the
counts they imply.
"""

from megatron_gatednorm.model_shape import ModelShape

_COMMON = dict(
    hidden_size=2048,
    kv_channels=256,
    vocab_size=151936,
    swiglu=True,
    qk_layernorm=True,
    attention_output_gate=True,
)

# Table 5's MoE models: hybrid (3 Gated DeltaNet layers per softmax-attention layer), one
# shared expert, untied embeddings, linear-attention head dim 128.
_HYBRID_MOE = dict(
    untie_embeddings_and_output_weights=True,
    experimental_attention_variant="gated_delta_net",
    linear_attention_freq=4,
    linear_key_head_dim=128,
    linear_value_head_dim=128,
    **_COMMON,
)


def _moe(expert_width: int, **fields) -> ModelShape:
    return ModelShape(
        ffn_hidden_size=expert_width, moe_ffn_hidden_size=expert_width,
        moe_shared_expert_intermediate_size=expert_width, **fields, **_HYBRID_MOE,
    )


PAPER_MODELS = {
    "dense-2b": ModelShape(
        num_layers=28, num_attention_heads=8, num_query_groups=2, ffn_hidden_size=6144, **_COMMON
    ),
    "moe-7b-a2b": _moe(
        384, num_layers=48, num_attention_heads=8, num_query_groups=1, num_experts=128,
        moe_router_topk=6, linear_num_key_heads=8, linear_num_value_heads=16,
    ),
    "moe-24b-a3b": _moe(
        512, num_layers=24, num_attention_heads=16, num_query_groups=2, num_experts=256,
        moe_router_topk=8, linear_num_key_heads=16, linear_num_value_heads=32,
    ),
}
