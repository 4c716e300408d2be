"""Command-line flags of the plugin, for Megatron-LM's ``extra_args_provider``.

``add_gatednorm_args(parser)`` adds a ``gatednorm`` argument group; ``norm_config_from_args``
turns the parsed namespace into a :class:`NormConfig`. Defaults are read from
``NormConfig`` (the one source of truth); argparse only carries them. Imports neither torch
nor Megatron.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple, Union

from megatron_gatednorm.norm_config import (
    DEFAULTS,
    GATE_ACTIVATIONS,
    GATE_UP_INITS,
    GRANULARITIES,
    PLACEMENTS,
    VARIANTS,
    NormConfig,
    NormConfigError,
)

# (flag, NormConfig field, argparse kwargs)
FLAGS: List[Tuple[str, str, dict]] = [
    ("--norm-variant", "variant", dict(choices=VARIANTS, help="Normalization of the residual-stream norm slots.")),
    ("--gatednorm-rank", "rank", dict(type=int, help="Rank r of the low-rank gate.")),
    ("--gatednorm-gate-activation", "gate_activation", dict(choices=GATE_ACTIVATIONS, help="Gate output nonlinearity.")),
    ("--gatednorm-granularity", "granularity", dict(choices=GRANULARITIES, help="One gate score per dimension or per token.")),
    ("--gatednorm-placement", "placement", dict(
        type=str, help=f"Comma-separated norm slots to replace, from {','.join(PLACEMENTS)}.")),
    ("--gatednorm-gate-up-init", "gate_up_init", dict(choices=GATE_UP_INITS, help="Initialisation of W_up.")),
    ("--preaffine-init", "preaffine_init", dict(type=float, help="Initial value of the PreAffine vector.")),
    ("--dyt-alpha-init", "dyt_alpha_init", dict(type=float, help="Initial DyT alpha.")),
    ("--residual-clip", "residual_clip", dict(
        type=float, help="Clamp the residual stream to [-T, T] after every residual add (off if unset).")),
]


def _default(field: str):
    return _flag_value(getattr(DEFAULTS, field))


def add_gatednorm_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the plugin's flags to ``parser``; usable as Megatron's ``extra_args_provider``."""
    group = parser.add_argument_group(title="gatednorm", description="megatron-gatednorm plugin")
    for flag, field, kwargs in FLAGS:
        default = _default(field)
        group.add_argument(flag, dest=dest(flag), default=default, **kwargs)
    return parser


def dest(flag: str) -> str:
    """argparse's ``dest`` of a flag (``--gatednorm-rank`` → ``gatednorm_rank``)."""
    return flag.lstrip("-").replace("-", "_")


def norm_config_from_values(values: Mapping[str, Any], name: Callable[[str], str] = lambda flag: flag) -> NormConfig:
    """The plugin config of flag values keyed by ``dest`` (absent or None: the default).

    Raises:
        ValueError: ``invalid <name(flag)>=<value>: <valid choices>``.
    """
    fields = {}
    for flag, field, _ in FLAGS:
        value = values.get(dest(flag))
        if value is not None:
            fields[field] = value
    try:
        return NormConfig(**fields)
    except NormConfigError as e:
        flag = next(f for f, field, _ in FLAGS if field == e.field)
        raise ValueError(f"invalid {name(flag)}={e.value!r}: {e.reason}") from None


def norm_config_from_args(args: argparse.Namespace) -> NormConfig:
    """The plugin config of a parsed namespace (flags absent from it keep their defaults).

    Raises:
        ValueError: naming the bad flag value and the valid choices.
    """
    return norm_config_from_values(vars(args))


def norm_config_dests(nc: NormConfig) -> dict:
    """``{dest: value}`` of every plugin flag for ``nc`` (lists as comma-separated strings)."""
    return {dest(flag): _flag_value(getattr(nc, field)) for flag, field, _ in FLAGS}


def _flag_value(value):
    return ",".join(value) if isinstance(value, tuple) else value


def norm_config_to_argv(nc: NormConfig) -> List[str]:
    """The flags that reproduce ``nc`` (only the ones that differ from the defaults)."""
    argv: List[str] = []
    for flag, field, _ in FLAGS:
        value, default = getattr(nc, field), getattr(DEFAULTS, field)
        if value != default:
            argv += [flag, str(_flag_value(value))]
    return argv


def _as_list(value: Union[None, str, Sequence[str]]) -> List[str]:
    """A Megatron list flag's value: None, a list, or text (``"layernorm,mlp"``, ``"layernorm mlp"``)."""
    if value is None:
        return []
    if isinstance(value, str):
        return value.replace(",", " ").split()
    return [str(v) for v in value]


# Megatron settings that fuse a residual-stream norm into another module: a slot the plugin replaces
# holds a separate norm module, so they cannot apply there. {setting: why}
FUSED_NORM_FLAGS = {
    "fused_residual_rmsnorm": "Transformer Engine's fused residual RMSNorm (TENorm(has_residual=True), "
                              "megatron-core >= 0.17) returns (output, residual) from a TE RMSNorm",
    "use_te_op_fuser": "Transformer Engine's op fuser reads the norm weight out of the fused linear layers",
    "inference_fuse_tp_communication": "the fused reduce-scatter + add + norm + all-gather of inference runs TE's norm",
}


def check_fused_norm_flags(nc: NormConfig, value: Callable[[str], Any], prefix: str = "") -> None:
    """Refuse a setting of :data:`FUSED_NORM_FLAGS` when ``nc`` replaces residual-stream norms.

    ``value(setting)`` reads a setting (from a ``TransformerConfig`` or a recipe's ``megatron``
    mapping); ``prefix`` is how the message names it (``megatron.`` for a recipe). The RMSNorm
    baseline keeps Megatron's own norms, so there every setting is Megatron's business.

    Raises:
        ValueError: naming the setting, the slots the variant replaces and the fix.
    """
    if nc.variant == "rmsnorm":
        return
    for setting, why in FUSED_NORM_FLAGS.items():
        if value(setting):
            raise ValueError(
                f"invalid {prefix}{setting}=True with norm variant {nc.variant!r}: {why}, and the variant "
                f"replaces the norms of {','.join(nc.placement)} with its own module; set {setting}=False "
                "(or use norm variant 'rmsnorm')"
            )


def check_recompute_modules(granularity: Optional[str], modules, transformer_engine: bool,
                            name: str = "recompute_modules") -> None:
    """Refuse selective recompute of ``layernorm`` without Transformer Engine.

    megatron-core (0.16.1 to 0.19.2) recomputes the norms through ``CheckpointWithoutOutput``,
    which calls Transformer Engine's ``FP8GlobalStateManager`` and fails with ``NameError``
    when TE is absent — after the job has started. ``transformer_engine`` is whether the run uses
    TE layers (``--transformer-impl transformer_engine``, Megatron's default); ``name`` is the
    setting's name in the message (``megatron.recompute_modules`` for a recipe).

    Raises:
        ValueError: naming ``recompute_modules`` and the two fixes.
    """
    mods = _as_list(modules)
    if granularity != "selective" or "layernorm" not in mods or transformer_engine:
        return
    raise ValueError(
        f"invalid {name}={mods!r} with recompute_granularity='selective' and the local "
        "(non-Transformer-Engine) layers: megatron-core recomputes 'layernorm' through CheckpointWithoutOutput, "
        "which calls Transformer Engine's FP8GlobalStateManager (NameError without TE); valid: "
        "--transformer-impl transformer_engine, or drop layernorm from --recompute-modules")
