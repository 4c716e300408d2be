"""Megatron-core layer and block specs with the plugin's norms in the residual-stream slots.

The specs start from megatron-core's own GPT specs (local or Transformer Engine backend,
dense and MoE layers, the ``moe_layer_freq`` pattern, pipeline/virtual-pipeline slicing) and
change only what the variant needs:

* ``input_layernorm`` / ``pre_mlp_layernorm`` / the block's final norm (and, opt-in, the
  per-head ``q_layernorm``/``k_layernorm``) become the variant's module;
* with Transformer Engine, a replaced norm cannot stay fused in ``linear_qkv`` / dense
  ``linear_fc1`` / Gated DeltaNet's ``in_proj`` (``TELayerNormColumnParallelLinear``): those
  become plain ``TEColumnParallelLinear`` behind the separate norm module;
* a replaced norm is checkpointed under its own slot name (``input_layernorm.*``,
  ``pre_mlp_layernorm.*``) in both backends, so TE and local checkpoints are interchangeable;
* with ``residual_clip`` the residual add of every sublayer is followed by a symmetric clamp.

Slots a variant does not replace keep Megatron's module with Transformer Engine, and use the
plugin's sequence-parallel-aware :class:`~megatron_gatednorm.norms.RMSNorm` with the local
backend (Megatron's torch fallback norm refuses sequence parallelism).

Hybrid models (the paper's MoE layout): with ``experimental_attention_variant=
"gated_delta_net"`` and ``linear_attention_freq=N`` every N-th layer keeps softmax attention
and the others use Gated DeltaNet; its internal output norm is left untouched. Its unreplaced
input norm is checkpointed as ``self_attention.in_proj.layer_norm_weight`` in both backends.
Running it needs the ``fla`` package (flash-linear-attention) at model construction (on CPU
the CPU shim substitutes megatron-core's torch reference of fla's kernels).

Gated attention (the paper's baseline) is Megatron's ``attention_output_gate=True``; it
composes with every spec here.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from typing import List, Optional

from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.models.gpt import gpt_layer_specs as _gpt_specs
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.enums import LayerType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import (
    TransformerBlockSubmodules,
    get_num_layers_to_build,
)
from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

from megatron_gatednorm.norm_flags import check_fused_norm_flags, check_recompute_modules
from megatron_gatednorm.norm_config import NormConfig
from megatron_gatednorm.norms import norm_class
from megatron_gatednorm.ops.reference import residual_clip

# Megatron's TE wrapper classes import without Transformer Engine (they fail when built),
# which lets the TE specs be assembled and inspected anywhere; HAVE_TE says if they can run.
try:
    from megatron.core.extensions.transformer_engine import (
        TEColumnParallelLinear,
        TELayerNormColumnParallelLinear,
        TENorm,
        TERowParallelLinear,
    )
except ImportError:  # pragma: no cover - megatron-core without the extensions module
    TEColumnParallelLinear = TELayerNormColumnParallelLinear = TENorm = TERowParallelLinear = None

try:
    import transformer_engine  # noqa: F401

    HAVE_TE = TENorm is not None
except ImportError:  # CPU machines and GPU images without Transformer Engine
    HAVE_TE = False

try:
    from megatron.core.ssm.gated_delta_net import GatedDeltaNet, GatedDeltaNetSubmodules

    HAVE_GATED_DELTA_NET = True
except ImportError:
    HAVE_GATED_DELTA_NET = False

def norm_module_spec(norm_config: NormConfig, variant: Optional[str] = None) -> ModuleSpec:
    """A ``ModuleSpec`` building ``variant``'s module (default: the config's) with its config."""
    return ModuleSpec(
        module=norm_class(variant or norm_config.variant), params={"norm_config": norm_config}
    )


def _replaces(nc: NormConfig, slot: str) -> bool:
    return nc.variant != "rmsnorm" and slot in nc.placement


def spec_submodules(spec):
    """``submodules`` of a ModuleSpec (0.16) or of a ``functools.partial`` builder (0.19)."""
    return spec.keywords["submodules"] if hasattr(spec, "keywords") else spec.submodules


def spec_module(spec):
    """The module class a spec builds: a class, a ``ModuleSpec``'s module, or the class behind a
    ``functools.partial`` builder (``partial(MoELayer, ...)``, ``partial(MLP.as_mlp_submodule, ...)``)."""
    if isinstance(spec, functools.partial):
        func = spec.func
        return func.__self__ if isinstance(getattr(func, "__self__", None), type) else func
    return getattr(spec, "module", spec)


def _copy_spec(spec):
    """Copy a spec's tree of ModuleSpecs / builder partials / submodule dataclasses (what the
    transform mutates); module classes and functions are shared, not copied."""
    if isinstance(spec, functools.partial):
        kwargs = dict(spec.keywords)
        if "submodules" in kwargs:
            kwargs["submodules"] = _copy_submodules(kwargs["submodules"])
        return functools.partial(spec.func, *spec.args, **kwargs)
    if isinstance(spec, ModuleSpec):
        new = copy.copy(spec)
        new.params = dict(spec.params)
        new.submodules = _copy_submodules(spec.submodules)
        return new
    return spec


def _copy_submodules(sub):
    if not dataclasses.is_dataclass(sub) or isinstance(sub, type):
        return sub
    new = copy.copy(sub)
    for f in dataclasses.fields(sub):
        setattr(new, f.name, _copy_spec(getattr(sub, f.name)))
    return new


def _unfuse(submodules, field: str) -> None:
    if TELayerNormColumnParallelLinear is not None and getattr(submodules, field, None) is TELayerNormColumnParallelLinear:
        setattr(submodules, field, TEColumnParallelLinear)


def _clipped_bda(threshold: float):
    """A bias-dropout-add getter whose result is clamped to ``[-threshold, threshold]``."""

    def get_clipped_bias_dropout_add(training, fused):
        bda = get_bias_dropout_add(training, fused)

        def clipped_bias_dropout_add(x_with_bias, residual, prob):
            return residual_clip(bda(x_with_bias, residual, prob), threshold)

        return clipped_bias_dropout_add

    return get_clipped_bias_dropout_add


def _gated_delta_net_attention(use_te: bool, input_fused: bool) -> ModuleSpec:
    if not HAVE_GATED_DELTA_NET:
        raise ValueError(
            "experimental_attention_variant='gated_delta_net' needs megatron-core with "
            "megatron.core.ssm.gated_delta_net (0.16 or newer)"
        )
    if use_te:
        in_proj = TELayerNormColumnParallelLinear if input_fused else TEColumnParallelLinear
        out_norm, out_proj = TENorm, TERowParallelLinear
    else:
        in_proj, out_proj = ColumnParallelLinear, RowParallelLinear
        out_norm = norm_class("rmsnorm")
    return ModuleSpec(
        module=GatedDeltaNet,
        submodules=GatedDeltaNetSubmodules(in_proj=in_proj, out_norm=out_norm, out_proj=out_proj),
    )


def _transform_layer(spec, nc: NormConfig, use_te: bool, gated_delta_net: bool = False):
    """Copy of an upstream layer spec with the plugin's norms in place (see module doc)."""
    spec = _copy_spec(spec)
    sub = spec_submodules(spec)
    keys = dict(sub.sharded_state_dict_keys_map)
    is_moe = spec_module(sub.mlp).__name__ == "MoELayer"
    plain = norm_module_spec(nc, "rmsnorm")

    if gated_delta_net:
        sub.self_attention = _gated_delta_net_attention(use_te, input_fused=not _replaces(nc, "attn"))
        sub.input_layernorm = IdentityOp if use_te else plain
        # checkpoint the local norm where TE's fused in_proj keeps it (as upstream does for linear_qkv)
        keys["input_layernorm."] = "self_attention.in_proj.layer_norm_"
    attn = spec_submodules(sub.self_attention)
    if _replaces(nc, "attn"):
        sub.input_layernorm = norm_module_spec(nc)
        _unfuse(attn, "linear_qkv")  # Gated DeltaNet's in_proj was built unfused above
        keys.pop("input_layernorm.", None)
    elif not use_te and not gated_delta_net:
        sub.input_layernorm = plain

    qk_norm = norm_module_spec(nc) if _replaces(nc, "qk") else (None if use_te else plain)
    for field in ("q_layernorm", "k_layernorm"):
        # Only per-head QK-norms of softmax attention (MLA's latent norms and L2Norm stay).
        current = getattr(attn, field, IdentityOp)
        if qk_norm is not None and hasattr(attn, "linear_qkv") and current not in (IdentityOp, None):
            if spec_module(current).__name__ != "L2Norm":
                setattr(attn, field, qk_norm)

    if _replaces(nc, "mlp"):
        sub.pre_mlp_layernorm = norm_module_spec(nc)
        if not is_moe:
            _unfuse(spec_submodules(sub.mlp), "linear_fc1")
        keys.pop("pre_mlp_layernorm.", None)
    elif not use_te:
        sub.pre_mlp_layernorm = plain
        if is_moe:  # TE checkpoints MoE pre-MLP norms as pre_mlp_layernorm.*; match it
            keys.pop("pre_mlp_layernorm.", None)

    if nc.residual_clip is not None:
        sub.self_attn_bda = _clipped_bda(nc.residual_clip)
        sub.mlp_bda = _clipped_bda(nc.residual_clip)
    sub.sharded_state_dict_keys_map = keys
    return spec


def _linear_attention_pattern(config) -> List[int]:
    """1 for Gated DeltaNet layers, 0 for softmax-attention layers (Megatron's convention)."""
    variant = getattr(config, "experimental_attention_variant", None)
    if variant is None:
        return [0] * config.num_layers
    if variant != "gated_delta_net":
        raise ValueError(
            f"invalid experimental_attention_variant={variant!r} for megatron-gatednorm specs; "
            "valid choices: None, 'gated_delta_net'"
        )
    from megatron.core.models.gpt.experimental_attention_variant_module_specs import (
        get_linear_attention_pattern,
    )

    return get_linear_attention_pattern(config)


def _stage_layer_ids(config, vp_stage: Optional[int], pp_rank: Optional[int]) -> List[int]:
    layout = getattr(config, "pipeline_model_parallel_layout", None)
    if layout is not None:
        return list(
            layout.get_layer_id_list(layer_type=LayerType.decoder, vp_stage=vp_stage, pp_rank=pp_rank)
        )
    offset = get_transformer_layer_offset(config, vp_stage=vp_stage, pp_rank=pp_rank)
    return list(range(offset, offset + get_num_layers_to_build(config, vp_stage=vp_stage, pp_rank=pp_rank)))


def validate_spec_config(config, nc: NormConfig, use_te: bool) -> None:
    """Raise ValueError for TransformerConfig settings the plugin's specs cannot honour."""
    if config.normalization != "RMSNorm":
        raise ValueError(
            f"invalid normalization={config.normalization!r}: megatron-gatednorm variants are "
            "RMSNorm-based; valid choices: 'RMSNorm'"
        )
    if use_te and not HAVE_TE:
        raise ValueError(
            "transformer_impl='transformer_engine' needs Transformer Engine, which is not "
            "importable here; valid choices without it: transformer_impl='local'"
        )
    check_fused_norm_flags(nc, lambda setting: getattr(config, setting, False))
    check_recompute_modules(
        getattr(config, "recompute_granularity", None), getattr(config, "recompute_modules", None), use_te
    )
    nc.check_hidden_size(config.hidden_size)
    if "qk" in nc.placement and config.qk_layernorm:
        nc.check_hidden_size(config.kv_channels)


def get_gatednorm_layer_specs(
    config, norm_config: NormConfig, use_transformer_engine: bool
) -> List[ModuleSpec]:
    """Per-layer specs of the whole decoder (all pipeline stages), in layer order."""
    # Upstream builds the dense/MoE softmax-attention layers; the Gated DeltaNet layers of a
    # hybrid model are swapped in below (megatron-core 0.19 refuses the hybrid config here).
    softmax_only = copy.copy(config)
    softmax_only.experimental_attention_variant = None
    upstream = _gpt_specs.get_gpt_decoder_layer_specs(
        softmax_only,
        use_transformer_engine,
        normalization="RMSNorm",
        qk_l2_norm=getattr(config, "qk_l2_norm", False),
    )
    cache = {}
    specs = []
    for spec, linear in zip(upstream, _linear_attention_pattern(config)):
        key = (id(spec), linear)
        if key not in cache:
            cache[key] = _transform_layer(spec, norm_config, use_transformer_engine, bool(linear))
        specs.append(cache[key])
    return specs


def get_gatednorm_block_spec(
    config,
    norm_config: Optional[NormConfig] = None,
    use_transformer_engine: Optional[bool] = None,
    vp_stage: Optional[int] = None,
    pp_rank: Optional[int] = None,
) -> TransformerBlockSubmodules:
    """The decoder block spec of this pipeline stage, final norm included.

    Args:
        config: Megatron ``TransformerConfig`` (``normalization="RMSNorm"``).
        norm_config: the plugin config; defaults to ``config.norm_config`` if set, else defaults.
        use_transformer_engine: backend; defaults to ``config.transformer_impl ==
            "transformer_engine"``.
        vp_stage, pp_rank: as in ``get_gpt_decoder_block_spec``.

    Raises:
        ValueError: for settings the plugin cannot honour (naming the field and the choices).
    """
    nc = norm_config if norm_config is not None else getattr(config, "norm_config", None) or NormConfig()
    use_te = (
        config.transformer_impl == "transformer_engine"
        if use_transformer_engine is None
        else use_transformer_engine
    )
    validate_spec_config(config, nc, use_te)
    layer_specs = get_gatednorm_layer_specs(config, nc, use_te)
    local_specs = [layer_specs[i] for i in _stage_layer_ids(config, vp_stage, pp_rank)]
    if _replaces(nc, "final"):
        final = norm_module_spec(nc)
    else:
        final = TENorm if use_te else norm_module_spec(nc, "rmsnorm")
    return TransformerBlockSubmodules(layer_specs=local_specs, layer_norm=final)


def get_gatednorm_layer_spec(
    norm_config: Optional[NormConfig] = None,
    use_transformer_engine: bool = False,
    num_experts: Optional[int] = None,
    moe_grouped_gemm: bool = False,
    qk_layernorm: bool = False,
) -> ModuleSpec:
    """A single (dense or MoE) layer spec, like ``get_gpt_layer_local_spec``.

    Prefer :func:`get_gatednorm_block_spec`: a bare layer spec given to ``GPTModel`` gets
    Megatron's default final norm, so the ``final`` placement cannot apply.
    """
    nc = norm_config or NormConfig()
    kwargs = dict(num_experts=num_experts, moe_grouped_gemm=moe_grouped_gemm, qk_layernorm=qk_layernorm)
    if use_transformer_engine:
        if not HAVE_TE:
            raise ValueError("use_transformer_engine=True needs Transformer Engine, which is not importable")
        spec = _gpt_specs.get_gpt_layer_with_transformer_engine_spec(**kwargs)
    else:
        spec = _gpt_specs.get_gpt_layer_local_spec(normalization="RMSNorm", **kwargs)
    return _transform_layer(spec, nc, use_transformer_engine)


def gatednorm_block_spec_from_args(config, vp_stage: Optional[int] = None):
    """``--spec megatron_gatednorm.specs gatednorm_block_spec_from_args`` target (megatron-core
    >= 0.19, where Megatron-LM calls the spec with the model config). The plugin config comes
    from Megatron's parsed arguments, which need the plugin flags (``add_gatednorm_args``)."""
    from megatron.training import get_args

    from megatron_gatednorm.norm_flags import norm_config_from_args

    args = get_args()
    if not hasattr(args, "norm_variant"):
        raise ValueError(
            "Megatron's arguments have no --norm-variant: launch through megatron_gatednorm.training.pretrain "
            "(or pass extra_args_provider=megatron_gatednorm.norm_flags.add_gatednorm_args)"
        )
    transformer_config = getattr(config, "transformer", config)
    return get_gatednorm_block_spec(
        transformer_config, norm_config_from_args(args), vp_stage=vp_stage
    )


__all__ = [
    "HAVE_TE",
    "get_gatednorm_block_spec",
    "get_gatednorm_layer_spec",
    "get_gatednorm_layer_specs",
    "gatednorm_block_spec_from_args",
    "norm_module_spec",
    "spec_module",
    "spec_submodules",
    "validate_spec_config",
]
