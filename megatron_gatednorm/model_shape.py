"""Megatron-LM's model flags ⇄ :class:`ModelShape` ⇄ ``TransformerConfig``, from one table.

:data:`MEGATRON_FLAGS` is the only place that states Megatron-LM's defaults for the flags that
shape a model. Each row names a flag (as a recipe key: ``--disable-bias-linear`` →
``disable_bias_linear``), the ``dest`` its parser stores it under (the name in a checkpoint's
saved ``args``), its type, Megatron-LM's own default, the :class:`ModelShape` field it sets and
how, the ``TransformerConfig`` field it maps to, and the values the plugin supports (others are
refused with the reason). Everything that maps flags to shapes reads it:

* :func:`shape_from_flags` — flag values (a recipe's ``megatron:`` section, a parsed namespace,
  a checkpoint's ``args``) → :class:`ModelShape`, with Megatron-LM's defaults for absent flags;
* :func:`flags_from_shape` — the inverse, ``{dest: value}``; :func:`shape_to_argv` its command line;
* :func:`transformer_config_kwargs` — the ``TransformerConfig`` fields of a shape;
* :func:`check_supported` — refuses what the plugin does not implement;
* :func:`add_flags` — the flags as argparse arguments (the small trainer); :func:`megatron_defaults`;
* :func:`extras_from_flags` / :func:`flags_from_extras` — the rows beyond the shape (norm epsilon,
  RoPE base, ...) that the converters keep in their ``Arch``.

Megatron-LM reads a flag under the same ``dest`` in 0.16–0.19 except two that 0.19 renamed
(``--norm-epsilon`` → ``layernorm_epsilon``, ``--apply-layernorm-1p`` →
``layernorm_zero_centered_gamma``): values are read under the dest, else under the flag's own
name (0.16–0.18's dest), and written under both. The defaults are those of Megatron-LM 0.19.2's
parser (``tests/test_train_entry.py`` compares them).

Pure Python (no torch, no Megatron): the launcher uses it on login nodes.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

from megatron_gatednorm import hybrid_pattern

DIRECT, INVERTED, DERIVED = "direct", "inverted", "derived"

Freq = Union[int, List[int]]


def freq(value) -> Optional[Freq]:
    """Megatron-LM's ``--moe-layer-freq`` / ``--linear-attention-freq`` type: an int, or a Python
    list expression such as ``([0]*3+[1])*12``, evaluated without builtins like Megatron does."""
    if value is None or isinstance(value, (int, list)):
        return value
    text = str(value).strip()
    if re.fullmatch(r"\d+", text):
        return int(text)
    if not re.fullmatch(r"[\[\]\d\s,*+()]+", text):
        raise ValueError(f"invalid {value!r}: expected an int or a list expression like ([0]*3+[1])*12")
    pattern = eval(compile(ast.parse(text, mode="eval"), "<freq>", "eval"), {"__builtins__": {}})  # noqa: S307
    if not isinstance(pattern, list):
        raise ValueError(f"invalid {value!r}: expected an int or a list expression like ([0]*3+[1])*12")
    return pattern


def parse_freq(key: str, value, num_layers: int) -> Optional[Freq]:
    """:func:`freq` of flag ``key``; a list expression must give ``num_layers`` entries.

    Raises:
        ValueError: ``invalid <key>=<value>: <what is expected>``.
    """
    if value is None or isinstance(value, (int, list)):
        return value
    try:
        pattern = freq(value)
    except ValueError:
        raise ValueError(f"invalid {key}={value!r}: expected an int or a list expression like ([0]*3+[1])*12") from None
    if isinstance(pattern, list) and len(pattern) != num_layers:
        raise ValueError(f"invalid {key}={value!r}: the pattern must have num_layers={num_layers} entries")
    return pattern


@dataclass(frozen=True)
class MegatronFlag:
    """One row of :data:`MEGATRON_FLAGS`: a Megatron-LM flag and what it maps to."""

    flag: str
    """The flag as a recipe key, ``--`` and dashes removed: ``--disable-bias-linear`` → ``disable_bias_linear``."""
    type: Callable[[Any], Any]
    """Its value's type: ``bool`` (a switch), ``int``, ``float``, ``str`` or :func:`freq`."""
    default: Any
    """Megatron-LM's own default: what its parser stores under :attr:`dest` when the flag is absent."""
    field: Optional[str] = None
    """The :class:`ModelShape` field it sets (None: none)."""
    how: str = DIRECT
    """How it sets :attr:`field`, or what the flag does to :attr:`dest`: ``direct`` (the value),
    ``inverted`` (the switch stores False, e.g. ``--disable-bias-linear`` → ``add_bias_linear=False``),
    ``derived`` (by :attr:`rule`, from several flags)."""
    config: Optional[str] = None
    """The ``TransformerConfig`` field it maps to (None: a ``GPTModel`` argument, or none)."""
    supported: Optional[Tuple[Any, ...]] = None
    """The values the plugin supports (None: any). :func:`check_supported` refuses the others where
    a model must convert (the converters, the small trainer); the launcher only counts them."""
    reason: str = ""
    """Why the other values are refused."""
    dest: str = ""
    """argparse's ``dest`` (megatron-core 0.19's name) where it differs from :attr:`flag`."""
    arch: Optional[str] = None
    """The converters' ``Arch`` field it sets, for flags beyond the shape (norm epsilon, RoPE)."""
    required: bool = False
    """Megatron-LM refuses to run without it."""
    required_unless: str = ""
    """… unless this other flag (a dest) is given: a hybrid layer pattern gives the layer count."""
    rule: Optional[Callable[[Mapping[str, Any], Mapping[str, Any]], Any]] = None
    """For ``derived``: ``rule(resolved, raw)`` → the field's value, from every row's resolved
    value (by dest) and the raw flag values (for flags outside the table, e.g. ``seq_length``)."""

    def __post_init__(self):
        object.__setattr__(self, "dest", self.dest or self.flag)
        if self.how not in (DIRECT, INVERTED, DERIVED) or (self.how == DERIVED) != (self.rule is not None):
            raise ValueError(f"invalid how={self.how!r} for {self.flag} (rule: {self.rule is not None}); valid: "
                             f"{DIRECT}, {INVERTED} (without a rule), {DERIVED} (with one)")

    @property
    def option(self) -> str:
        """The command-line flag: ``--disable-bias-linear``."""
        return "--" + self.flag.replace("_", "-")

    def accepts(self, value) -> bool:
        """Whether the plugin supports ``value``."""
        return self.supported is None or value in self.supported

    @property
    def plugin_default(self):
        """Megatron-LM's default where the plugin supports it, else the first supported value."""
        return self.default if self.accepts(self.default) else self.supported[0]


# -- derived fields: Megatron-LM's rules (megatron/training/arguments.py, validate_args) ------

def _ffn_hidden_size(v, raw):
    """4h, or 2/3 of that rounded down to a multiple of 64 with SwiGLU."""
    if v["ffn_hidden_size"] is not None:
        return v["ffn_hidden_size"]
    return int((4 * v["hidden_size"] * 2 / 3) / 64) * 64 if v["swiglu"] else 4 * v["hidden_size"]


def _num_layers(v, raw):
    """The layers of ``--hybrid-layer-pattern`` where it is given (megatron.training >= 0.18
    derives ``num_layers`` from it and ignores the flag), else ``--num-layers``."""
    pattern = v["hybrid_layer_pattern"]
    return len(hybrid_pattern.layers(pattern)) if pattern else v["num_layers"]


def _num_query_groups(v, raw):
    """Read only with ``--group-query-attention``; otherwise multi-head attention (None)."""
    return v["num_query_groups"] if v["group_query_attention"] else None


def _max_position_embeddings(v, raw):
    """The flag, else ``--seq-length`` (None: neither given)."""
    value = v["max_position_embeddings"] or raw.get("seq_length")
    return None if value is None else int(value)


def _num_experts(v, raw):
    """None for a dense model (also when saved as 0)."""
    return v["num_experts"] or None


def _with_experts(dest: str):
    def rule(v, raw):
        return v[dest] if v["num_experts"] else None

    rule.__doc__ = f"``{dest}``, only with experts (None for a dense model)."
    return rule


_CONVERTERS = "the converters and the Hugging Face model"

MEGATRON_FLAGS: Tuple[MegatronFlag, ...] = (
    # -- the shape ----------------------------------------------------------------------
    MegatronFlag("num_layers", int, None, "num_layers", DERIVED, config="num_layers", required=True,
                 required_unless="hybrid_layer_pattern", rule=_num_layers),
    MegatronFlag("hidden_size", int, None, "hidden_size", config="hidden_size", required=True),
    MegatronFlag("num_attention_heads", int, None, "num_attention_heads", config="num_attention_heads",
                 required=True),
    MegatronFlag("ffn_hidden_size", int, None, "ffn_hidden_size", DERIVED, config="ffn_hidden_size",
                 rule=_ffn_hidden_size),
    MegatronFlag("group_query_attention", bool, False),
    MegatronFlag("num_query_groups", int, 1, "num_query_groups", DERIVED, config="num_query_groups",
                 rule=_num_query_groups),
    MegatronFlag("kv_channels", int, None, "kv_channels", config="kv_channels"),
    MegatronFlag("swiglu", bool, False, "swiglu", config="gated_linear_unit", supported=(True,),
                 reason=f"{_CONVERTERS} implement SwiGLU MLPs only"),
    MegatronFlag("disable_bias_linear", bool, True, "add_bias_linear", INVERTED, dest="add_bias_linear",
                 config="add_bias_linear", supported=(False,), reason=f"{_CONVERTERS} have no linear biases"),
    MegatronFlag("add_qkv_bias", bool, False, "add_qkv_bias", config="add_qkv_bias", supported=(False,),
                 reason=f"{_CONVERTERS} have no QKV bias"),
    MegatronFlag("untie_embeddings_and_output_weights", bool, False, "untie_embeddings_and_output_weights"),
    MegatronFlag("qk_layernorm", bool, False, "qk_layernorm", config="qk_layernorm"),
    MegatronFlag("attention_output_gate", bool, False, "attention_output_gate", config="attention_output_gate"),
    MegatronFlag("position_embedding_type", str, "learned_absolute", "position_embedding_type",
                 supported=("rope",), reason=f"{_CONVERTERS} implement RoPE only"),
    MegatronFlag("max_position_embeddings", int, None, "max_position_embeddings", DERIVED,
                 rule=_max_position_embeddings),
    MegatronFlag("num_experts", int, None, "num_experts", DERIVED, config="num_moe_experts", rule=_num_experts),
    MegatronFlag("moe_ffn_hidden_size", int, None, "moe_ffn_hidden_size", DERIVED, config="moe_ffn_hidden_size",
                 rule=_with_experts("moe_ffn_hidden_size")),
    MegatronFlag("moe_shared_expert_intermediate_size", int, None, "moe_shared_expert_intermediate_size", DERIVED,
                 config="moe_shared_expert_intermediate_size",
                 rule=_with_experts("moe_shared_expert_intermediate_size")),
    MegatronFlag("moe_shared_expert_gate", bool, False, "moe_shared_expert_gate", config="moe_shared_expert_gate"),
    MegatronFlag("moe_router_topk", int, 2, "moe_router_topk", config="moe_router_topk"),
    MegatronFlag("moe_layer_freq", freq, 1, "moe_layer_freq", config="moe_layer_freq"),
    MegatronFlag("experimental_attention_variant", str, None, "experimental_attention_variant",
                 config="experimental_attention_variant", supported=(None, "gated_delta_net"),
                 reason="of the experimental variants only the Gated DeltaNet hybrid is supported"),
    MegatronFlag("linear_attention_freq", freq, None, "linear_attention_freq", config="linear_attention_freq"),
    MegatronFlag("linear_conv_kernel_dim", int, 4, "linear_conv_kernel_dim", config="linear_conv_kernel_dim"),
    MegatronFlag("linear_key_head_dim", int, 128, "linear_key_head_dim", config="linear_key_head_dim"),
    MegatronFlag("linear_value_head_dim", int, 128, "linear_value_head_dim", config="linear_value_head_dim"),
    MegatronFlag("linear_num_key_heads", int, 16, "linear_num_key_heads", config="linear_num_key_heads"),
    MegatronFlag("linear_num_value_heads", int, 32, "linear_num_value_heads", config="linear_num_value_heads"),
    MegatronFlag("hybrid_layer_pattern", str, None, "hybrid_layer_pattern"),
    # -- beyond the shape: numerics the converters keep (Arch) ----------------------------
    MegatronFlag("norm_epsilon", float, 1e-5, dest="layernorm_epsilon", config="layernorm_epsilon",
                 arch="norm_epsilon"),
    MegatronFlag("apply_layernorm_1p", bool, False, dest="layernorm_zero_centered_gamma",
                 config="layernorm_zero_centered_gamma", arch="zero_centered_gamma"),
    MegatronFlag("rotary_base", int, 10000, arch="rotary_base"),
    MegatronFlag("rotary_percent", float, 1.0, arch="rotary_percent"),
    MegatronFlag("moe_router_pre_softmax", bool, False, config="moe_router_pre_softmax",
                 arch="moe_router_pre_softmax"),
    # -- beyond the shape: free --------------------------------------------------------
    MegatronFlag("make_vocab_size_divisible_by", int, 128),
    MegatronFlag("no_position_embedding", bool, True, how=INVERTED, dest="add_position_embedding"),
    # -- beyond the shape: pinned by the plugin (flags_from_shape writes plugin_default) ---
    MegatronFlag("normalization", str, "LayerNorm", config="normalization", supported=("RMSNorm",),
                 reason="the plugin's norms are RMSNorm variants (its specs refuse LayerNorm)"),
    MegatronFlag("rotary_interleaved", bool, False, config="rotary_interleaved", supported=(False,),
                 reason=f"{_CONVERTERS} rotate halves, not interleaved pairs"),
    MegatronFlag("multi_latent_attention", bool, False, config="multi_latent_attention", supported=(False,),
                 reason="MLA is not supported"),
    MegatronFlag("moe_router_score_function", str, "softmax", config="moe_router_score_function",
                 supported=("softmax",), reason=f"{_CONVERTERS} route with a softmax"),
    MegatronFlag("moe_router_topk_scaling_factor", float, None, config="moe_router_topk_scaling_factor",
                 supported=(None, 1.0), reason=f"{_CONVERTERS} do not scale the routing weights"),
    MegatronFlag("moe_router_enable_expert_bias", bool, False, config="moe_router_enable_expert_bias",
                 supported=(False,), reason=f"{_CONVERTERS} have no expert bias"),
    MegatronFlag("moe_router_num_groups", int, None, config="moe_router_num_groups", supported=(None, 0),
                 reason="group-limited routing is not supported"),
)

_BY_FLAG: Dict[str, MegatronFlag] = {row.flag: row for row in MEGATRON_FLAGS}
_BY_DEST: Dict[str, MegatronFlag] = {row.dest: row for row in MEGATRON_FLAGS}
_SHAPE_ROWS = tuple(row for row in MEGATRON_FLAGS if row.field)
_EXTRA_ROWS = tuple(row for row in MEGATRON_FLAGS if row.arch)
# flags outside the shape that the plugin pins (normalization='RMSNorm' ...)
_FIXED_ROWS = tuple(row for row in MEGATRON_FLAGS if not row.field and not row.arch and row.supported)


def megatron_flag(flag: str) -> MegatronFlag:
    """The row of ``flag`` (a recipe key such as ``disable_bias_linear``).

    Raises:
        ValueError: naming the flag and the valid ones.
    """
    try:
        return _BY_FLAG[flag]
    except KeyError:
        raise ValueError(f"invalid flag {flag!r}; valid: {', '.join(_BY_FLAG)}") from None


def megatron_default(flag: str):
    """Megatron-LM's default of ``flag``."""
    return megatron_flag(flag).default


def megatron_defaults() -> Dict[str, Any]:
    """``{dest: Megatron-LM's default}`` of every row (what its parser stores without flags)."""
    return {row.dest: row.default for row in MEGATRON_FLAGS}


def _plugin_default(flag: str):
    return megatron_flag(flag).plugin_default


@dataclass(frozen=True)
class ModelShape:
    """The architecture fields that determine a GPT model's parameter count. Field names are
    Megatron-LM's ``dest`` names; built directly, unset fields take Megatron-LM's default where
    the plugin supports it, else the supported value (SwiGLU, no biases, RoPE)."""

    num_layers: int
    """Transformer layers (``--num-layers``); of a HybridModel, the layers of its pattern (each
    token mixer and each FFN is a layer of its own)."""
    hidden_size: int
    """Residual-stream width h (``--hidden-size``)."""
    num_attention_heads: int
    """Query heads (``--num-attention-heads``)."""
    ffn_hidden_size: int
    """Dense MLP width (``--ffn-hidden-size``); also the expert width when ``moe_ffn_hidden_size`` is unset."""
    vocab_size: int
    """Embedding rows: the padded vocabulary (not a Megatron flag: the tokenizer's, padded)."""
    num_query_groups: Optional[int] = None
    """Key/value heads with grouped-query attention; None: one per query head."""
    kv_channels: Optional[int] = None
    """Head dimension (``--kv-channels``); None: hidden_size / num_attention_heads."""
    swiglu: bool = _plugin_default("swiglu")
    """Gated (SwiGLU) MLPs (``--swiglu``)."""
    add_bias_linear: bool = _plugin_default("disable_bias_linear")
    """Biases on every linear layer (off with ``--disable-bias-linear``)."""
    add_qkv_bias: bool = _plugin_default("add_qkv_bias")
    """Biases on the QKV projection only (``--add-qkv-bias``)."""
    untie_embeddings_and_output_weights: bool = _plugin_default("untie_embeddings_and_output_weights")
    """A separate output layer instead of the embedding's transpose."""
    qk_layernorm: bool = _plugin_default("qk_layernorm")
    """RMSNorm on queries and keys per head (``--qk-layernorm``)."""
    attention_output_gate: bool = _plugin_default("attention_output_gate")
    """Gated attention: a sigmoid gate on the attention output (``--attention-output-gate``)."""
    position_embedding_type: str = _plugin_default("position_embedding_type")
    """``rope`` or ``learned_absolute`` (the latter adds max_position_embeddings × h parameters)."""
    max_position_embeddings: int = 4096
    """Positions of a learned position embedding / RoPE table (``--max-position-embeddings``, else
    ``--seq-length``); 4096 is this class's choice when built directly, not a Megatron default."""
    num_experts: Optional[int] = None
    """Routed experts per MoE layer (``--num-experts``); None: a dense model."""
    moe_ffn_hidden_size: Optional[int] = None
    """Width of one routed expert; None: ffn_hidden_size."""
    moe_shared_expert_intermediate_size: Optional[int] = None
    """Width of the shared expert(s); None: no shared expert."""
    moe_shared_expert_gate: bool = _plugin_default("moe_shared_expert_gate")
    """A sigmoid gate (h parameters) on the shared expert's output."""
    moe_router_topk: int = _plugin_default("moe_router_topk")
    """Routed experts per token (``--moe-router-topk``)."""
    moe_layer_freq: Freq = _plugin_default("moe_layer_freq")
    """Which layers are MoE: every N-th (an int) or a 0/1 list per layer."""
    experimental_attention_variant: Optional[str] = _plugin_default("experimental_attention_variant")
    """``gated_delta_net`` for the hybrid Gated DeltaNet models; None: softmax attention everywhere."""
    linear_attention_freq: Optional[Freq] = _plugin_default("linear_attention_freq")
    """Hybrid layout: every N-th layer is softmax attention (an int), or 1 per Gated DeltaNet layer (a list)."""
    linear_conv_kernel_dim: int = _plugin_default("linear_conv_kernel_dim")
    """Gated DeltaNet's short-convolution kernel width."""
    linear_key_head_dim: int = _plugin_default("linear_key_head_dim")
    """Gated DeltaNet query/key head dimension."""
    linear_value_head_dim: int = _plugin_default("linear_value_head_dim")
    """Gated DeltaNet value head dimension."""
    linear_num_key_heads: int = _plugin_default("linear_num_key_heads")
    """Gated DeltaNet query/key heads."""
    linear_num_value_heads: int = _plugin_default("linear_num_value_heads")
    """Gated DeltaNet value heads."""
    hybrid_layer_pattern: Optional[str] = _plugin_default("hybrid_layer_pattern")
    """megatron-core >= 0.18's ``HybridModel``: one symbol per layer (:mod:`megatron_gatednorm.
    hybrid_pattern`), ``|`` between pipeline segments; it then decides every layer's kind and
    ``experimental_attention_variant`` / ``linear_attention_freq`` / ``moe_layer_freq`` are unused.
    None: a ``GPTModel``."""

    @property
    def head_dim(self) -> int:
        return self.kv_channels or self.hidden_size // self.num_attention_heads

    @property
    def query_groups(self) -> int:
        return self.num_query_groups or self.num_attention_heads

    def layer_symbols(self) -> str:
        """One HybridModel symbol per layer (``G`` Gated DeltaNet, ``*`` attention, ``E`` MoE,
        ``-`` MLP), pipeline boundaries removed; a GPTModel's layer ``i`` is the pair ``2i, 2i+1``."""
        if self.hybrid_layer_pattern:
            return hybrid_pattern.layers(self.hybrid_layer_pattern)
        return hybrid_pattern.pattern_from_gpt_layers(self.linear_attention_pattern(), self.moe_pattern())

    @property
    def gated_delta_net(self) -> bool:
        """Whether any layer is Gated DeltaNet."""
        return "G" in self.layer_symbols()

    def moe_pattern(self) -> List[int]:
        """Per GPT layer: 1 where its FFN is MoE (a HybridModel's: of its (mixer, FFN) pairs)."""
        if self.hybrid_layer_pattern:
            return hybrid_pattern.gpt_layers_from_pattern(self.hybrid_layer_pattern)[1]
        if not self.num_experts:
            return [0] * self.num_layers
        if isinstance(self.moe_layer_freq, int):
            return [1 if i % self.moe_layer_freq == 0 else 0 for i in range(self.num_layers)]
        return list(self.moe_layer_freq)

    def linear_attention_pattern(self) -> List[int]:
        """Per GPT layer: 1 where its token mixer is Gated DeltaNet (a HybridModel's: of its pairs)."""
        if self.hybrid_layer_pattern:
            return hybrid_pattern.gpt_layers_from_pattern(self.hybrid_layer_pattern)[0]
        if self.experimental_attention_variant != "gated_delta_net":
            return [0] * self.num_layers
        if isinstance(self.linear_attention_freq, int):
            return [0 if (i + 1) % self.linear_attention_freq == 0 else 1 for i in range(self.num_layers)]
        return list(self.linear_attention_freq)

    def replace(self, **changes) -> "ModelShape":
        return dataclasses.replace(self, **changes)


def hybrid_form(shape: ModelShape, pipeline_segments: int = 1) -> ModelShape:
    """The HybridModel with ``shape``'s layers (a GPTModel, hybrid or not): GPT layer ``i``
    becomes layers ``2i`` (mixer) and ``2i + 1`` (FFN) of the pattern
    (:func:`~megatron_gatednorm.hybrid_pattern.pattern_from_gpt_layers`), cut into
    ``pipeline_segments`` equal ``|`` segments of whole GPT layers. Same parameters, same norms.

    Raises:
        ValueError: ``shape`` is a HybridModel already, or the segments do not divide its layers.
    """
    if shape.hybrid_layer_pattern:
        raise ValueError(f"invalid shape: already a HybridModel (hybrid_layer_pattern={shape.hybrid_layer_pattern!r})")
    layers = shape.num_layers
    if pipeline_segments < 1 or layers % pipeline_segments:
        valid = [d for d in range(1, layers + 1) if layers % d == 0]
        raise ValueError(f"invalid pipeline segments={pipeline_segments}: they must divide num_layers={layers} "
                         f"(whole GPT layers per segment); valid: {', '.join(map(str, valid))}")
    symbols = shape.layer_symbols()
    step = len(symbols) // pipeline_segments
    pattern = hybrid_pattern.PIPE.join(symbols[i:i + step] for i in range(0, len(symbols), step))
    return shape.replace(hybrid_layer_pattern=pattern, num_layers=len(symbols), experimental_attention_variant=None,
                         linear_attention_freq=None, moe_layer_freq=megatron_default("moe_layer_freq"))


# -- reading flag values ----------------------------------------------------------------

def _given(row: MegatronFlag, values: Mapping[str, Any]):
    """The dest's value as given: under the dest, else under the flag's own name (negated for a
    switch that stores False); None when absent."""
    if values.get(row.dest) is not None:
        return values[row.dest]
    value = values.get(row.flag)
    if value is None:
        return None
    return (not value) if row.how == INVERTED else value


def _resolved(row: MegatronFlag, values: Mapping[str, Any]):
    """The dest's value, of the row's type; Megatron-LM's default when absent (freq: unparsed)."""
    value = _given(row, values)
    if value is None:
        return row.default
    return value if row.type is freq else row.type(value)


def flag_value(values: Mapping[str, Any], flag: str):
    """The value of ``flag`` in ``values`` (by dest or by flag name; Megatron-LM's default when absent)."""
    return _resolved(megatron_flag(flag), values)


def missing_required(values: Mapping[str, Any]) -> List[str]:
    """The flags Megatron-LM requires that ``values`` lacks (or has as None)."""
    return [row.flag for row in MEGATRON_FLAGS if row.required and _given(row, values) is None
            and not (row.required_unless and _given(_BY_DEST[row.required_unless], values) is not None)]


def check_supported(values: Mapping[str, Any]) -> None:
    """Refuse flag values the plugin does not support (absent flags: Megatron-LM's default).

    Raises:
        ValueError: ``unsupported <dest>=<value> (<--flag>): <reason>; valid: <values>``.
    """
    for row in MEGATRON_FLAGS:
        value = _resolved(row, values)
        if not row.accepts(value):
            valid = ", ".join(repr(v) for v in row.supported)
            raise ValueError(f"unsupported {row.dest}={value!r} ({row.option}): {row.reason}; valid: {valid}")


def shape_from_flags(values: Mapping[str, Any], vocab_size: Optional[int] = None) -> ModelShape:
    """The :class:`ModelShape` Megatron-LM builds from these flag values (keyed by dest or by flag
    name; absent or None: Megatron-LM's default). ``vocab_size``: the embedding rows (default
    ``values["vocab_size"]``, else 0). Does not refuse unsupported values (:func:`check_supported`).

    Raises:
        ValueError: a required flag missing, a value of the wrong type, a bad layer pattern.
    """
    missing = missing_required(values)
    if missing:
        raise ValueError(f"invalid {missing[0]}=None: required")
    resolved = {row.dest: _resolved(row, values) for row in MEGATRON_FLAGS}
    layers = _num_layers(resolved, values)
    for row in MEGATRON_FLAGS:
        if row.type is freq:
            resolved[row.dest] = parse_freq(row.dest, resolved[row.dest], layers)
    fields = {row.field: row.rule(resolved, values) if row.rule else resolved[row.dest] for row in _SHAPE_ROWS}
    if fields["max_position_embeddings"] is None:
        del fields["max_position_embeddings"]  # neither flag given: the class's value
    vocab = vocab_size if vocab_size is not None else values.get("vocab_size")
    return ModelShape(vocab_size=int(vocab or 0), **fields)


def extras_from_flags(values: Mapping[str, Any]) -> Dict[str, Any]:
    """``{Arch field: value}`` of the rows beyond the shape (Megatron-LM's default when absent)."""
    return {row.arch: _resolved(row, values) for row in _EXTRA_ROWS}


# -- writing flag values ----------------------------------------------------------------

def flags_from_shape(shape: ModelShape) -> Dict[str, Any]:
    """``{dest: value}`` that :func:`shape_from_flags` turns back into ``shape``, plus the flags
    the plugin fixes (``normalization='RMSNorm'`` ...) at their value. Multi-head attention (also
    ``num_query_groups == num_attention_heads``) is ``group_query_attention=False``."""
    out = {row.dest: row.plugin_default for row in _FIXED_ROWS}
    out.update({row.dest: getattr(shape, row.field) for row in _SHAPE_ROWS})
    gqa = shape.num_query_groups is not None and shape.num_query_groups != shape.num_attention_heads
    out["group_query_attention"] = gqa
    if not gqa:
        out["num_query_groups"] = megatron_default("num_query_groups")
    return out


def flags_from_extras(extras: Mapping[str, Any]) -> Dict[str, Any]:
    """``{dest: value}`` of ``Arch`` fields, renamed flags also under their 0.16–0.18 name."""
    out = {}
    for row in _EXTRA_ROWS:
        out[row.dest] = out[row.flag] = extras[row.arch]
    return out


def transformer_config_kwargs(shape: ModelShape) -> Dict[str, Any]:
    """``TransformerConfig`` fields for ``shape`` and the flags the plugin fixes (None values left
    to TransformerConfig). SwiGLU's ``activation_func`` is the caller's (it needs torch)."""
    kwargs = {row.config: row.plugin_default for row in _FIXED_ROWS if row.config}
    kwargs.update({row.config: getattr(shape, row.field) for row in _SHAPE_ROWS if row.config})
    return {k: v for k, v in kwargs.items() if v is not None}


def shape_to_argv(shape: ModelShape) -> List[str]:
    """The command-line flags of :func:`flags_from_shape` that differ from Megatron-LM's defaults."""
    values = flags_from_shape(shape)
    argv: List[str] = []
    for row in MEGATRON_FLAGS:
        value = values.get(row.dest)
        if row.dest not in values or value == row.default:
            continue
        if row.type is bool:
            argv.append(row.option)  # a switch: differs from the default, so it is set
        else:
            argv += [row.option, repr(value) if isinstance(value, float) else str(value)]
    return argv


def add_flags(parser, defaults: Optional[Mapping[str, Any]] = None):
    """Add every row as an argparse argument (Megatron-LM's option, dest, type and default;
    ``defaults``: other defaults by flag). Returns ``parser`` (a parser or an argument group)."""
    defaults = dict(defaults or {})
    unknown = sorted(set(defaults) - set(_BY_FLAG))
    if unknown:
        raise ValueError(f"invalid defaults for {', '.join(unknown)}; valid flags: {', '.join(_BY_FLAG)}")
    for row in MEGATRON_FLAGS:
        default = defaults.get(row.flag, row.default)
        if row.type is bool:
            action = "store_false" if row.how == INVERTED else "store_true"
            parser.add_argument(row.option, dest=row.dest, action=action, default=default)
        else:
            parser.add_argument(row.option, dest=row.dest, type=row.type, default=default, required=row.required)
    return parser
