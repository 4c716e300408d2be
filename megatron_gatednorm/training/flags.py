"""Flags of the training entry point (``mgn train``): the plugin's norm flags
(:data:`megatron_gatednorm.norm_flags.FLAGS`) plus the few model switches Megatron-LM has no flag
for. Imports neither torch nor Megatron, so the launcher validates recipes against the same
table that the entry point hands to argparse."""

from __future__ import annotations

import argparse
from typing import List, Tuple

from megatron_gatednorm.norm_flags import FLAGS, add_gatednorm_args, dest

# (flag, argparse kwargs). Defaults are the Megatron behaviour, so omitting a flag changes nothing.
TRAIN_FLAGS: List[Tuple[str, dict]] = [
    ("--ffn-activation", dict(
        choices=("swiglu", "glu"), default="swiglu",
        help="Gated FFN nonlinearity with --swiglu: 'swiglu' (SiLU, Megatron's) or 'glu' "
             "(sigmoid; the paper's Table 1 GLU ablation).")),
]


def plugin_flag_dests() -> List[str]:
    """Every plugin flag's argparse ``dest``, i.e. the keys of a recipe's ``gatednorm:`` section."""
    return [dest(f) for f, _, _ in FLAGS] + [dest(f) for f, _ in TRAIN_FLAGS]


def add_train_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``extra_args_provider`` of ``mgn train``: the plugin's flags and :data:`TRAIN_FLAGS`."""
    add_gatednorm_args(parser)
    group = parser.add_argument_group(title="gatednorm-train", description="megatron-gatednorm model switches")
    for flag, kwargs in TRAIN_FLAGS:
        group.add_argument(flag, dest=dest(flag), **kwargs)
    return parser
