"""A validated :class:`~.validate.Plan` as Megatron-LM command-line flags.

Recipe keys are Megatron's flag names in snake_case: ``True`` → ``--flag``, ``False``/``None`` →
omitted (so a ``store_false`` flag is written under its own name, ``no_masked_softmax_fusion:
true``), a list → ``--flag a b``, anything else → ``--flag value``. Plugin flags come from
:func:`megatron_gatednorm.norm_flags.norm_config_to_argv` (``--norm-variant`` always, the others only
where they differ from NormConfig's defaults) and :data:`megatron_gatednorm.training.flags.TRAIN_FLAGS`.
"""

from __future__ import annotations

from typing import Any, Dict, List

from megatron_gatednorm.norm_flags import norm_config_to_argv
from megatron_gatednorm.training.flags import TRAIN_FLAGS, dest


def flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _value(v: Any) -> str:
    return repr(v) if isinstance(v, float) else str(v)


def flags_to_argv(values: Dict[str, Any]) -> List[str]:
    argv: List[str] = []
    for key, v in values.items():
        if v is None or v is False:
            continue
        if v is True:
            argv.append(flag(key))
        elif isinstance(v, (list, tuple)):
            argv += [flag(key)] + [_value(x) for x in v]
        else:
            argv += [flag(key), _value(v)]
    return argv


def plugin_argv(plan) -> List[str]:
    argv = norm_config_to_argv(plan.norm_config)
    if "--norm-variant" not in argv:  # always explicit: a job must not depend on a default
        argv = ["--norm-variant", plan.norm_config.variant] + argv
    for f, kwargs in TRAIN_FLAGS:
        v = plan.recipe.gatednorm.get(dest(f))
        if v is not None and v != kwargs.get("default"):
            argv += [f, _value(v)]
    return argv


def megatron_argv(plan) -> List[str]:
    """The full argument list of ``python -m megatron_gatednorm.training.pretrain`` for this plan."""
    return flags_to_argv(plan.megatron) + plugin_argv(plan)
