"""Stack specs for megatron-core's ``HybridModel`` (megatron-core >= 0.18; formerly ``MambaModel``)
with the plugin's norms in every residual-stream slot.

``HybridModel`` takes one ``ModuleSpec`` of a ``HybridStack`` whose ``HybridStackSubmodules``
hold one layer spec per layer symbol of ``hybrid_layer_pattern`` (megatron-core's
``hybrid_layer_allocation.Symbols``). This module fills the four the paper's MoE models use:

=====  ==========================  ==========================================================
``G``  ``gdn_layer``               ``TransformerLayer``: input norm → Gated DeltaNet (its
                                   internal output norm untouched) → residual add
``*``  ``attention_layer``         ``TransformerLayer``: input norm → softmax attention
                                   (QK-norm as the GPT specs: plain RMSNorm / ``TENorm``, the
                                   plugin's norm with the ``qk`` placement) → residual add
``-``  ``mlp_layer``               ``MLPLayer``: pre-MLP norm → dense MLP → residual add
``E``  ``moe_layer``               ``MoETransformerLayer``: pre-MLP norm → MoE → residual add
=====  ==========================  ==========================================================

``|`` (pipeline stage boundary) is handled by ``HybridModel`` itself. Mamba (``M``), DeepSeek
sparse attention (``D``), MLA (``+``) and multi-token prediction (``/...``) are refused with a
clear error (:func:`megatron_gatednorm.hybrid_pattern.check_hybrid_pattern`; building such a
layer raises too).

Each layer spec is cut out of the plugin's own GPT layer spec (:func:`megatron_gatednorm.specs.
_transform_layer`), so a hybrid layer gets exactly what the same sublayer gets in a GPT model:
``attn`` / ``mlp`` placement, TE unfusing of a replaced norm, the baseline's TE-compatible
checkpoint keys (``self_attention.linear_qkv.layer_norm_weight``, ``self_attention.in_proj.
layer_norm_weight``, ``mlp.linear_fc1.layer_norm_weight``), ``residual_clip``.

The final norm: megatron-core 0.19's ``HybridStack.__init__`` builds ``self.final_norm =
TENorm(...)`` unconditionally (no spec field). :class:`GatedNormHybridStack` replaces it by
subclassing: it calls ``HybridStack.__init__`` with ``post_layer_norm=False`` (so no ``TENorm``
is ever constructed — it would fail without Transformer Engine), then restores
``post_layer_norm`` and builds ``final_norm`` from its ``final_norm`` spec param. ``forward``
and ``sharded_state_dict`` are upstream's (they read ``self.post_layer_norm`` /
``self.final_norm`` at call time), the checkpoint key stays ``decoder.final_norm.*``. Chosen
over a patch of megatron-core (nothing to apply at install time, works with the wheel) and
over replacing the module after construction (that would build a ``TENorm`` first). The
constructor checks that upstream really left ``final_norm`` unbuilt, so a change of
``HybridStack`` fails loudly instead of silently keeping ``TENorm``.

megatron-core 0.16 has no ``megatron.core.models.hybrid``: this module imports it lazily, so
``import megatron_gatednorm.hybrid_specs`` works everywhere and only the functions need >= 0.18.
"""

from __future__ import annotations

import functools
from typing import Optional

from megatron.core.transformer.identity_op import IdentityFuncOp, IdentityOp
from megatron.core.transformer.spec_utils import ModuleSpec, build_module

from megatron_gatednorm import specs as _specs
from megatron_gatednorm.hybrid_pattern import UNSUPPORTED, check_hybrid_pattern
from megatron_gatednorm.norm_config import NormConfig

SUPPORTED_SYMBOLS = {"G": "gdn_layer", "*": "attention_layer", "-": "mlp_layer", "E": "moe_layer"}


def _hybrid():
    """megatron-core's hybrid package (>= 0.18), or a ValueError naming the requirement."""
    try:
        from megatron.core.models.hybrid import hybrid_block, hybrid_model
    except ImportError as e:
        from megatron.core import package_info

        raise ValueError(
            f"megatron-core {package_info.__version__} has no megatron.core.models.hybrid "
            "(HybridModel needs megatron-core >= 0.18); use megatron_gatednorm.specs' GPT specs with "
            "experimental_attention_variant='gated_delta_net' instead"
        ) from e
    return hybrid_block, hybrid_model


class UnsupportedHybridLayer:
    """Placeholder for the layer kinds the plugin does not provide; building one raises."""

    def __init__(self, *args, symbol: str = "?", **kwargs):
        raise ValueError(
            f"layer symbol {symbol!r} ({UNSUPPORTED.get(symbol, 'unknown')}) is not supported by "
            "megatron-gatednorm's hybrid specs; valid: G * - E"
        )


def _unsupported(symbol: str) -> ModuleSpec:
    return ModuleSpec(module=UnsupportedHybridLayer, params={"symbol": symbol})


@functools.lru_cache(maxsize=None)
def _stack_class():
    hybrid_block, _ = _hybrid()

    class GatedNormHybridStack(hybrid_block.HybridStack):
        """``HybridStack`` whose final norm is built from the ``final_norm`` spec param
        (see the module docstring for why a subclass)."""

        def __init__(self, config, submodules, *args, final_norm=None, post_layer_norm: bool = True, **kwargs):
            super().__init__(config, submodules, *args, post_layer_norm=False, **kwargs)
            if hasattr(self, "final_norm"):
                raise RuntimeError(
                    "HybridStack built final_norm with post_layer_norm=False: this megatron-core's "
                    "HybridStack changed; megatron_gatednorm.hybrid_specs cannot place its final norm"
                )
            self.post_layer_norm = post_layer_norm
            if self.post_process and post_layer_norm:
                self.final_norm = build_module(
                    final_norm, config=self.config, hidden_size=self.config.hidden_size,
                    eps=self.config.layernorm_epsilon,
                )

    GatedNormHybridStack.__module__ = __name__
    GatedNormHybridStack.__qualname__ = "GatedNormHybridStack"
    return GatedNormHybridStack


def __getattr__(name):  # ``GatedNormHybridStack`` as a module attribute, resolved lazily
    if name == "GatedNormHybridStack":
        return _stack_class()
    raise AttributeError(name)


def _strip(spec, keep: str):
    """A TransformerLayer spec cut down to one sublayer (``keep``: "attention" or "mlp")."""
    sub = _specs.spec_submodules(spec)
    if keep == "attention":
        sub.pre_mlp_layernorm, sub.mlp, sub.mlp_bda = IdentityOp, IdentityOp, IdentityFuncOp
        dropped = ("pre_mlp_layernorm.", "mlp.")
    else:
        sub.input_layernorm, sub.self_attention, sub.self_attn_bda = IdentityOp, IdentityOp, IdentityFuncOp
        dropped = ("input_layernorm.", "self_attention.")
    sub.sharded_state_dict_keys_map = {
        k: v for k, v in sub.sharded_state_dict_keys_map.items() if not k.startswith(dropped)
    }
    return spec


def _with_module(spec, module):
    """``spec`` (a ModuleSpec) building ``module`` instead."""
    return ModuleSpec(module=module, params=dict(spec.params), submodules=_specs.spec_submodules(spec))


def get_gatednorm_hybrid_stack_spec(
    config,
    norm_config: Optional[NormConfig] = None,
    use_transformer_engine: Optional[bool] = None,
) -> ModuleSpec:
    """The ``hybrid_stack_spec`` for ``HybridModel`` with the plugin's norms.

    Args:
        config: Megatron ``TransformerConfig`` (``normalization="RMSNorm"``; ``num_moe_experts`` for
            ``E`` layers, ``linear_*`` for ``G`` layers, ``qk_layernorm``).
        norm_config: the plugin config; defaults to ``config.norm_config`` if set, else defaults.
        use_transformer_engine: backend; defaults to ``config.transformer_impl ==
            "transformer_engine"``.

    Raises:
        ValueError: settings the plugin cannot honour, or megatron-core < 0.18.
    """
    _hybrid()
    from megatron.core.models.gpt import gpt_layer_specs as gpt
    from megatron.core.ssm.mlp_layer import MLPLayer
    from megatron.core.transformer.transformer_layer import MoETransformerLayer, TransformerLayer

    nc = norm_config if norm_config is not None else getattr(config, "norm_config", None) or NormConfig()
    use_te = (
        config.transformer_impl == "transformer_engine" if use_transformer_engine is None else use_transformer_engine
    )
    _specs.validate_spec_config(config, nc, use_te)

    def gpt_layer(num_experts=None):
        kwargs = dict(
            num_experts=num_experts, moe_grouped_gemm=bool(getattr(config, "moe_grouped_gemm", False)),
            qk_layernorm=bool(config.qk_layernorm), qk_l2_norm=bool(getattr(config, "qk_l2_norm", False)),
        )
        if use_te:
            return gpt.get_gpt_layer_with_transformer_engine_spec(**kwargs)
        return gpt.get_gpt_layer_local_spec(normalization="RMSNorm", **kwargs)

    dense = gpt_layer()
    attention = _strip(_specs._transform_layer(dense, nc, use_te), "attention")
    gdn = _strip(_specs._transform_layer(dense, nc, use_te, gated_delta_net=True), "attention")
    mlp = _strip(_specs._transform_layer(dense, nc, use_te), "mlp")
    if config.num_moe_experts:
        moe = _strip(_specs._transform_layer(gpt_layer(config.num_moe_experts), nc, use_te), "mlp")
        moe = _with_module(moe, MoETransformerLayer)
    else:
        moe = _unsupported("E")
    if _specs._replaces(nc, "final"):
        final = _specs.norm_module_spec(nc)
    else:
        final = _specs.TENorm if use_te else _specs.norm_module_spec(nc, "rmsnorm")

    hybrid_block, _ = _hybrid()
    return ModuleSpec(
        module=_stack_class(),
        params={"final_norm": final},
        submodules=hybrid_block.HybridStackSubmodules(
            mamba_layer=_unsupported("M"),
            gdn_layer=_with_module(gdn, TransformerLayer),
            attention_layer=_with_module(attention, TransformerLayer),
            dsa_layer=_unsupported("D"),
            mla_layer=_unsupported("+"),
            mlp_layer=_with_module(mlp, MLPLayer),
            moe_layer=moe,
            mtp_block_spec=None,
        ),
    )


def build_hybrid_model(
    config,
    hybrid_layer_pattern: str,
    vocab_size: int,
    max_sequence_length: int,
    norm_config: Optional[NormConfig] = None,
    use_transformer_engine: bool = False,
    vp_stage: Optional[int] = None,
    **model_kwargs,
):
    """This pipeline stage's ``HybridModel`` with :func:`get_gatednorm_hybrid_stack_spec`.

    ``model_kwargs`` go to ``HybridModel`` (``position_embedding_type`` defaults to ``rope``,
    ``share_embeddings_and_output_weights`` to True, as in the plugin's GPT models;
    ``pre_process`` / ``post_process`` to this rank's pipeline position). Pipeline stages come
    from ``|`` in the pattern (or megatron-core's even split), as upstream.
    """
    from megatron.core import parallel_state

    check_hybrid_pattern(hybrid_layer_pattern)
    _, hybrid_model = _hybrid()
    ignore_virtual = vp_stage is None
    model_kwargs.setdefault(
        "pre_process", parallel_state.is_pipeline_first_stage(ignore_virtual=ignore_virtual, vp_stage=vp_stage)
    )
    model_kwargs.setdefault(
        "post_process", parallel_state.is_pipeline_last_stage(ignore_virtual=ignore_virtual, vp_stage=vp_stage)
    )
    spec = get_gatednorm_hybrid_stack_spec(config, norm_config, use_transformer_engine)
    model_kwargs.setdefault("position_embedding_type", "rope")
    model_kwargs.setdefault("share_embeddings_and_output_weights", True)
    return hybrid_model.HybridModel(
        config=config,
        hybrid_stack_spec=spec,
        vocab_size=vocab_size,
        max_sequence_length=max_sequence_length,
        hybrid_layer_pattern=hybrid_layer_pattern,
        vp_stage=vp_stage,
        **model_kwargs,
    )


__all__ = [
    "SUPPORTED_SYMBOLS",
    "build_hybrid_model",
    "check_hybrid_pattern",
    "get_gatednorm_hybrid_stack_spec",
]
