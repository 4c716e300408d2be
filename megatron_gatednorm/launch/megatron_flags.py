"""Which ``megatron:`` recipe keys exist, and what values they take.

A recipe's ``megatron:`` keys are Megatron-LM flags in snake_case (``--num-layers`` →
``num_layers``). They are checked against :func:`known_flags`: the flags of megatron.training
0.19.2's parser, shipped as package data (``megatron_0_19_2_flags.txt``: key, kind, nargs, choices),
plus the model-shape table :data:`megatron_gatednorm.model_shape.MEGATRON_FLAGS`. ``mgn launch``
uses only the shipped list: nothing under ``launch/`` imports Megatron, not even lazily
(``tests/test_layering.py``). :func:`flags_from_parser` turns a parser into the list;
``tests/test_launch_recipe_schema.py`` runs it on megatron.training 0.19.2's parser (in
``.venv-mcore019``) and compares the result with the shipped file.

A value is checked as Megatron's parser would check its text (``int("64.5")`` fails), against
the parser's choices, and against :data:`RANGES` (sizes ≥ 1, rates in [0, 1] …).
"""

from __future__ import annotations

import argparse
import difflib
import functools
import importlib.resources
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

FLAGS_FILE = "megatron_0_19_2_flags.txt"  # in megatron_gatednorm/launch/

_KINDS = {"int": int, "float": float, "str": str}


@dataclass(frozen=True)
class FlagSpec:
    """One Megatron flag as a recipe key."""

    kind: str
    """``bool`` (a switch: true → ``--flag``), ``int``, ``float``, ``str``, or ``any`` (a custom type)."""
    nargs: str = ""
    """argparse's nargs (``+``, ``*``, ``?``, a number) or empty for one value."""
    choices: Tuple[str, ...] = ()
    """The values the parser accepts (empty: any of the kind)."""


# Ranges Megatron-LM does not state in its parser but fails on (or divides by): (min, max), inclusive.
_SIZES = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "kv_channels", "num_query_groups",
          "seq_length", "max_position_embeddings", "micro_batch_size", "global_batch_size", "train_iters",
          "train_samples", "vocab_size", "make_vocab_size_divisible_by", "tensor_model_parallel_size",
          "pipeline_model_parallel_size", "context_parallel_size", "expert_model_parallel_size",
          "expert_tensor_parallel_size", "num_layers_per_virtual_pipeline_stage", "num_experts", "moe_router_topk",
          "moe_ffn_hidden_size", "moe_shared_expert_intermediate_size", "linear_num_key_heads",
          "linear_num_value_heads", "linear_key_head_dim", "linear_value_head_dim", "linear_conv_kernel_dim",
          "save_interval", "log_interval", "eval_interval", "decoder_seq_length")
_NONNEGATIVE = ("lr", "min_lr", "weight_decay", "clip_grad", "eval_iters", "lr_warmup_iters", "lr_warmup_samples",
                "lr_decay_iters", "seed", "distributed_timeout_minutes", "moe_aux_loss_coeff", "init_method_std",
                "rotary_base", "norm_epsilon", "adam_eps", "num_workers")
_UNIT = ("attention_dropout", "hidden_dropout", "lr_warmup_fraction", "adam_beta1", "adam_beta2", "rotary_percent")
RANGES: Dict[str, Tuple[Optional[float], Optional[float]]] = {
    **{k: (1, None) for k in _SIZES}, **{k: (0, None) for k in _NONNEGATIVE}, **{k: (0, 1) for k in _UNIT}}


def flags_from_parser(parser: argparse.ArgumentParser) -> Dict[str, FlagSpec]:
    """``{recipe key: FlagSpec}`` of every ``--option`` of an argparse parser (Megatron's)."""
    out: Dict[str, FlagSpec] = {}
    for a in parser._actions:
        if isinstance(a, argparse._HelpAction):
            continue
        if a.nargs == 0 or isinstance(a, (argparse._StoreTrueAction, argparse._StoreFalseAction,
                                          argparse._StoreConstAction)):
            kind = "bool"
        elif a.type in (int, float, str) or a.type is None:
            kind = a.type.__name__ if a.type else "str"
        else:
            kind = "any"
        nargs = "" if a.nargs is None or kind == "bool" else str(a.nargs)
        choices = tuple(map(str, a.choices)) if a.choices and kind in _KINDS else ()
        for option in a.option_strings:
            if option.startswith("--"):
                out[option[2:].replace("-", "_")] = FlagSpec(kind, nargs, choices)
    return out


def format_flags(flags: Dict[str, FlagSpec], version: str) -> str:
    """The shipped file's text for ``flags`` (megatron.training ``version``)."""
    lines = [f"# Megatron-LM flags of megatron.training {version}'s parser (add_megatron_arguments), as recipe keys.",
             "# Columns (tab-separated): key, kind (bool: a switch; int, float, str; any: a custom type), nargs, "
             "choices (comma-separated).",
             "# Regenerate: see tests/test_launch_recipe_schema.py (it compares this file with an installed "
             "megatron.training)."]
    for key in sorted(flags):
        f = flags[key]
        lines.append("\t".join((key, f.kind, f.nargs, ",".join(f.choices))).rstrip("\t"))
    return "\n".join(lines) + "\n"


def parse_flags(text: str) -> Dict[str, FlagSpec]:
    out: Dict[str, FlagSpec] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, kind, nargs, choices = (line.split("\t") + ["", "", ""])[:4]
        out[key] = FlagSpec(kind, nargs, tuple(choices.split(",")) if choices else ())
    return out


@functools.lru_cache(maxsize=None)
def shipped_flags() -> Dict[str, FlagSpec]:
    """megatron.training 0.19.2's flags, from the package data (no Megatron import)."""
    text = (importlib.resources.files("megatron_gatednorm.launch") / FLAGS_FILE).read_text(encoding="utf-8")
    return parse_flags(text)


def known_flags() -> Dict[str, FlagSpec]:
    """Every valid ``megatron:`` key: Megatron's parser's flags (the shipped list) and the model-shape table's."""
    from megatron_gatednorm.model_shape import MEGATRON_FLAGS, freq

    flags = dict(shipped_flags())
    for row in MEGATRON_FLAGS:
        if row.flag not in flags:
            kind = "bool" if row.type is bool else ("any" if row.type is freq else row.type.__name__)
            flags[row.flag] = FlagSpec(kind if kind in ("bool", "any", *_KINDS) else "any")
    return flags


def _fmt_range(key: str, kind: str) -> str:
    lo, hi = RANGES[key]
    what = "an integer" if kind == "int" else "a number"
    if hi is None:
        return f"{what} >= {lo:g}"
    return f"{what} in [{lo:g}, {hi:g}]"


def _bound(key: str) -> str:
    lo, hi = RANGES[key]
    return f">= {lo:g}" if hi is None else f"in [{lo:g}, {hi:g}]"


def _valid(spec: FlagSpec, key: str) -> str:
    if spec.kind == "bool":
        return "true or false"
    if spec.choices:
        return ", ".join(spec.choices)
    if key in RANGES and spec.kind in ("int", "float"):
        return _fmt_range(key, spec.kind)
    return {"int": "an integer", "float": "a number", "str": "a string", "any": "a value"}[spec.kind]


def check_value(key: str, value: Any, spec: FlagSpec) -> Optional[str]:
    """None if Megatron's parser accepts ``value`` for ``key`` (as the launcher renders it), else
    what is wrong, to follow ``key=value``: ``": expected int; valid: an integer >= 1"``,
    ``"; valid: a, b"`` (not a choice), ``": must be >= 1"``."""
    if value is None or value is False:  # omitted
        return None
    valid = _valid(spec, key)
    if spec.kind == "bool":
        return None if value is True else f": expected a switch; valid: {valid}"
    if isinstance(value, dict):
        return f": expected {spec.kind}, got a mapping; valid: {valid}"
    many = spec.nargs in ("+", "*") or spec.nargs.isdigit()
    if isinstance(value, (list, tuple)):
        if not many and spec.kind != "any":
            return f": expected one {spec.kind}, got a list; valid: {valid}"
        items = list(value)
    else:
        items = [value]
    for item in items:
        if spec.kind == "any":
            continue
        text = repr(item) if isinstance(item, float) else str(item)
        if isinstance(item, bool):
            return f": expected {spec.kind}, got {item}; valid: {valid}"
        try:
            number = _KINDS[spec.kind](text)
        except ValueError:
            return f": expected {spec.kind}; valid: {valid}"
        if spec.choices and text not in spec.choices:
            return f"; valid: {valid}"
        if key in RANGES and spec.kind in ("int", "float"):
            lo, hi = RANGES[key]
            if (lo is not None and number < lo) or (hi is not None and number > hi):
                return f": must be {_bound(key)}"
    return None


def unknown_flag_hint(key: str, flags: Dict[str, FlagSpec]) -> str:
    close = difflib.get_close_matches(key, list(flags), n=3, cutoff=0.6)
    return f"did you mean {', '.join(close)}?" if close else "valid: Megatron-LM 0.19.2's flags in snake_case"
