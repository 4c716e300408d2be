"""The experiment's variants: the plugin flags of each, and its model at parameter parity.

Every variant has gated attention (the paper's baseline); FFN width is set per variant for
parameter parity with the baseline (parity.parity_ffn), as the paper does.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

from megatron_gatednorm.experiment.sizes import ExperimentSize
from megatron_gatednorm.model_shape import ModelShape

VARIANTS: Dict[str, List[str]] = {
    "baseline": ["--norm-variant", "rmsnorm"],
    "preaffine": ["--norm-variant", "preaffine"],
    "gatednorm": ["--norm-variant", "gatednorm"],
    "clip100": ["--norm-variant", "rmsnorm", "--residual-clip", "100"],
}


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


def parity_shape(size: ExperimentSize, padded_vocab: int, variant_flags: Sequence[str]) -> ModelShape:
    """The baseline shape with this variant's parity FFN width (the baseline's parameter count)."""
    from megatron_gatednorm.parity import parity_ffn

    shape = size.shape(padded_vocab)
    return shape.replace(ffn_hidden_size=parity_ffn(shape, variant_norm_config(variant_flags)).width)
