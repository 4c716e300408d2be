"""``mgn train``: Megatron-LM's ``pretrain()`` with the plugin's flags and specs
(the same as ``python -m megatron_gatednorm.training.pretrain``)."""

from __future__ import annotations

import argparse

PASSTHROUGH = True  # every argument after `mgn train` goes to Megatron-LM's parser unchanged
HELP = "Train a GPT model with Megatron-LM's pretrain() and the plugin's layer specs (all arguments go to Megatron)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("megatron_args", nargs=argparse.REMAINDER, help="Megatron-LM and plugin flags")


def run(args) -> int:
    from megatron_gatednorm.training.pretrain import main

    return main(args.megatron_args)
