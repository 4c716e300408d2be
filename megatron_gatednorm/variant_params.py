"""A model's parameters per norm variant: norm overhead, parity FFN width, total and active counts.

Counts are analytic (:mod:`megatron_gatednorm.parity`); with ``build`` each variant's model is
also built from the plugin's specs on the meta device (no memory, no GPU) and its parameters
counted, which checks the analytic counts the launcher uses. GPTModel hybrids with Gated DeltaNet
are only built when the ``fla`` package is installed, HybridModels (a shape with a layer pattern,
:func:`megatron_gatednorm.model_shape.hybrid_form`) with megatron-core >= 0.18.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

from megatron_gatednorm.model_shape import ModelShape
from megatron_gatednorm.norm_config import VARIANTS, NormConfig


@dataclass(frozen=True)
class VariantParams:
    """One variant's row."""

    variant: str
    """The norm variant (``NormConfig.variant``)."""
    norm_overhead: int
    """Parameters the variant's norms add to the baseline's, before the parity adjustment."""
    params_before_parity: int
    """The variant's total at the baseline's FFN width."""
    parity_field: str
    """The FFN width lowered for parity (``ffn_hidden_size`` or an MoE width)."""
    width: int
    """That width after the adjustment."""
    params: int
    """The variant's total at parity."""
    delta_vs_baseline: int
    """``params`` minus the baseline's total (≤ 0)."""
    active_params: int
    """Parameters active per token at parity (MoE: the routed top-k experts only)."""
    built_params: Optional[int]
    """Parameters of the model (GPTModel or HybridModel) built on the meta device; ``None`` when not built."""


@dataclass(frozen=True)
class VariantParamsTable:
    """:func:`variant_params` of one model."""

    baseline_params: int
    """The baseline's (RMSNorm) total."""
    rows: List[VariantParams]
    """One per variant, in the order asked for."""
    built: bool
    """Whether the models were built on the meta device (``built_params`` is set)."""
    not_built: Optional[str] = None
    """Why not, where they could not be built (None: built, or not asked for)."""


def built_params(shape: ModelShape, nc: NormConfig) -> int:
    """Parameters of the model the specs build for ``shape`` and ``nc`` (a GPTModel, or a
    HybridModel for a shape with a layer pattern), on the meta device."""
    from megatron_gatednorm.distributed import init_distributed
    from megatron_gatednorm.model import build_shape_model, transformer_config

    init_distributed()
    extra = dict(is_hybrid_model=True) if shape.hybrid_layer_pattern else {}
    config = transformer_config(
        shape, nc, init_model_with_meta_device=True, use_cpu_initialization=True,
        perform_initialization=False, **extra,
    )
    model = build_shape_model(shape, config)
    return sum(p.numel() for p in model.parameters())


def cannot_build(shape: ModelShape) -> Optional[str]:
    """Why :func:`built_params` cannot build ``shape`` here, or None: a HybridModel needs
    megatron-core >= 0.18, a GPTModel's Gated DeltaNet layers the ``fla`` package."""
    import importlib.util

    if shape.hybrid_layer_pattern:
        if importlib.util.find_spec("megatron.core.models.hybrid") is None:
            return "HybridModel needs megatron-core >= 0.18"
        return None
    if shape.experimental_attention_variant is not None and importlib.util.find_spec("fla") is None:
        return "Gated DeltaNet layers need the 'fla' package"
    return None


def variant_params(shape: ModelShape, variants: Sequence[str], rank: int, build: bool = True) -> VariantParamsTable:
    """The rows for ``variants`` (GatedNorm rank ``rank``) of ``shape``; with ``build``, also the
    meta-device counts unless :func:`cannot_build`. An unknown variant raises ``ValueError``."""
    from megatron_gatednorm.parity import count_params, parity_ffn

    if not variants:
        raise ValueError(f"--variants is empty; valid choices: {', '.join(VARIANTS)}")
    reason = cannot_build(shape) if build else None
    built = build and reason is None
    baseline = count_params(shape)["total"]
    rows = []
    for variant in variants:
        nc = NormConfig(variant=variant, rank=rank)
        report = parity_ffn(shape, nc)
        adjusted = shape.replace(**{report.field: report.width})
        rows.append(VariantParams(
            variant=variant,
            norm_overhead=report.norm_overhead,
            params_before_parity=report.variant_params_before,
            parity_field=report.field,
            width=report.width,
            params=report.params,
            delta_vs_baseline=report.params - baseline,
            active_params=count_params(adjusted, nc, active=True)["total"],
            built_params=built_params(adjusted, nc) if built else None,
        ))
    return VariantParamsTable(baseline_params=baseline, rows=rows, built=built, not_built=reason)
