"""Configuration of the GatedNorm / PreAffine / DyT decoder exported by ``mgn convert to-hf``.

Self-contained (imports only ``transformers``): ``mgn convert`` copies this file next to the
weights so that ``AutoConfig.from_pretrained(dir, trust_remote_code=True)`` works without
``megatron_gatednorm``. Identical to ``Qwen3Config`` / ``Qwen3MoeConfig`` except:

* the norm slots: ``norm_variant`` (rmsnorm, gatednorm, preaffine, preaffine_gatednorm, dyt,
  gatedyt) in the slots of ``norm_placement`` (attn, mlp, final, qk), ``gatednorm_rank``,
  ``gate_activation``, ``gate_granularity``, ``zero_centered_gamma`` (weights store γ-1);
* ``attention_output_gate``: a sigmoid gate on the attention output, its projection stored
  per head after the query rows in ``q_proj`` (Qwen3-Next's layout);
* ``qk_norm`` is optional (Qwen3 always has it); RoPE uses Megatron's names ``rotary_base``
  and ``rotary_percent`` (the fraction of each head's channels that rotate);
* MoE: ``moe_layer_pattern`` (1 = MoE layer), an optional shared expert
  (``shared_expert_intermediate_size``) with an optional sigmoid ``shared_expert_gate``;
* ``residual_clip``: the residual stream is clamped to ``[-T, T]`` after every residual add;
* hybrid models: ``layer_types`` (``"linear_attention"`` for Gated DeltaNet, ``"full_attention"``)
  and Qwen3-Next's ``linear_*`` head sizes; unset means softmax attention in every layer.

``to_dict`` (and so ``config.json``) leaves out the fields of parts the model does not have:
the MoE fields of a dense model, the Gated DeltaNet fields of a model without such layers and
the gate fields of an ungated norm (rebuilt from the class defaults, which the model then never reads).
"""

from typing import Optional

from transformers import PretrainedConfig

NORM_VARIANTS = ("rmsnorm", "gatednorm", "preaffine", "preaffine_gatednorm", "dyt", "gatedyt")
LAYER_TYPES = ("full_attention", "linear_attention")
GATED_VARIANTS = ("gatednorm", "preaffine_gatednorm", "gatedyt")
MOE_FIELDS = ("num_experts", "num_experts_per_tok", "moe_intermediate_size", "norm_topk_prob", "moe_layer_pattern",
              "shared_expert_intermediate_size", "shared_expert_gate")
LINEAR_ATTENTION_FIELDS = ("layer_types", "linear_conv_kernel_dim", "linear_key_head_dim", "linear_value_head_dim",
                           "linear_num_key_heads", "linear_num_value_heads")
GATE_FIELDS = ("gatednorm_rank", "gate_activation", "gate_granularity")


class GatedNormConfig(PretrainedConfig):
    model_type = "gatednorm"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]

    vocab_size: int = 32000
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 8
    num_attention_heads: int = 16
    num_key_value_heads: Optional[int] = None
    head_dim: Optional[int] = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 4096
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-5
    use_cache: bool = True
    tie_word_embeddings: bool = True
    rotary_base: float = 10000.0
    rotary_percent: float = 1.0
    qk_norm: bool = False
    attention_output_gate: bool = False
    attention_dropout: float = 0.0
    num_experts: int = 0
    num_experts_per_tok: int = 2
    moe_intermediate_size: Optional[int] = None
    norm_topk_prob: bool = True
    moe_layer_pattern: Optional[list] = None
    shared_expert_intermediate_size: int = 0
    shared_expert_gate: bool = False
    norm_variant: str = "gatednorm"
    norm_placement: Optional[list] = None
    gatednorm_rank: int = 16
    gate_activation: str = "sigmoid"
    gate_granularity: str = "elementwise"
    zero_centered_gamma: bool = False
    residual_clip: Optional[float] = None
    layer_types: Optional[list] = None
    linear_conv_kernel_dim: int = 4
    linear_key_head_dim: int = 128
    linear_value_head_dim: int = 128
    linear_num_key_heads: int = 16
    linear_num_value_heads: int = 32
    pad_token_id: Optional[int] = None
    bos_token_id: Optional[int] = None
    eos_token_id: Optional[int] = None

    def __post_init__(self, **kwargs):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.norm_placement is None:
            self.norm_placement = ["attn", "mlp", "final"]
        if self.num_experts and self.moe_layer_pattern is None:
            self.moe_layer_pattern = [1] * self.num_hidden_layers
        if self.layer_types is not None:
            bad = sorted(set(self.layer_types) - set(LAYER_TYPES))
            if bad or len(self.layer_types) != self.num_hidden_layers:
                raise ValueError(
                    f"invalid layer_types={self.layer_types!r}: expected num_hidden_layers="
                    f"{self.num_hidden_layers} entries of {', '.join(LAYER_TYPES)}"
                )
        if self.norm_variant not in NORM_VARIANTS:
            raise ValueError(f"invalid norm_variant={self.norm_variant!r}; valid: {', '.join(NORM_VARIANTS)}")
        super().__post_init__(**kwargs)

    def unused_fields(self) -> tuple:
        """The fields of the parts this model does not have (the model never reads them)."""
        unused = () if self.num_experts else MOE_FIELDS
        if "linear_attention" not in (self.layer_types or ()):
            unused += LINEAR_ATTENTION_FIELDS
        if self.norm_variant not in GATED_VARIANTS:
            unused += GATE_FIELDS
        return unused

    def to_dict(self) -> dict:
        out = super().to_dict()
        for key in self.unused_fields():
            out.pop(key, None)
        return out

    def is_linear_attention(self, layer_idx: int) -> bool:
        return self.layer_types is not None and self.layer_types[layer_idx] == "linear_attention"

    def slot_variant(self, slot: str) -> str:
        """The norm of a slot (attn, mlp, final, qk): the variant if placed there, else RMSNorm."""
        return self.norm_variant if slot in self.norm_placement else "rmsnorm"


__all__ = ["GatedNormConfig"]
