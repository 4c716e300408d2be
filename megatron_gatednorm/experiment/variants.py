"""The experiment's variants: the plugin flags of each, and its model at parameter parity.

Every variant but ``vanilla`` has gated attention (the paper's baseline); ``vanilla`` is the
baseline without the attention output gate (plain softmax attention), the control for gated
attention's known suppression of attention sinks and massive activations. FFN width is set per
variant for parameter parity with the baseline of the same attention (parity.parity_ffn), as the
paper does; ``vanilla`` has the baseline's FFN and fewer parameters (no gate projection).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

from megatron_gatednorm.experiment.sizes import ExperimentSize
from megatron_gatednorm.model_shape import ModelShape

VARIANTS: Dict[str, List[str]] = {
    "baseline": ["--norm-variant", "rmsnorm"],
    "preaffine": ["--norm-variant", "preaffine"],
    "gatednorm": ["--norm-variant", "gatednorm"],
    "clip100": ["--norm-variant", "rmsnorm", "--residual-clip", "100"],
    "vanilla": ["--norm-variant", "rmsnorm"],
}

SHAPE_CHANGES: Dict[str, dict] = {"vanilla": dict(attention_output_gate=False)}
"""Per variant, the :class:`ModelShape` fields that differ from the size's baseline shape (besides the FFN width)."""


def check_variants(names: Sequence[str]) -> None:
    """Raise ``ValueError`` for a name that is not a key of :data:`VARIANTS`, or for no name."""
    if not names:
        raise ValueError(f"--variants is empty; valid choices: {', '.join(VARIANTS)}")
    for n in names:
        if n not in VARIANTS:
            raise ValueError(f"invalid variant {n!r}; valid choices: {', '.join(VARIANTS)}")


def variant_norm_config(variant_flags: Sequence[str]):
    """The NormConfig that the plugin's flags ``variant_flags`` describe."""
    import argparse

    from megatron_gatednorm.norm_flags import add_gatednorm_args, norm_config_from_args

    return norm_config_from_args(add_gatednorm_args(argparse.ArgumentParser()).parse_args(list(variant_flags)))


def parity_shape(size: ExperimentSize, padded_vocab: int, name: str,
                 shape_changes: Optional[dict] = None) -> ModelShape:
    """Variant ``name``'s model: the size's baseline shape with the variant's :data:`SHAPE_CHANGES`
    (then ``shape_changes``, :class:`ModelShape` fields: a search's ablation) and its parity FFN
    width (the parameter count of that shape with RMSNorm)."""
    from megatron_gatednorm.parity import parity_ffn

    check_variants([name])
    shape = size.shape(padded_vocab).replace(**SHAPE_CHANGES.get(name, {}), **(shape_changes or {}))
    return shape.replace(ffn_hidden_size=parity_ffn(shape, variant_norm_config(VARIANTS[name])).width)
