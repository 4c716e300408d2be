"""mgn: the megatron-gatednorm command line.

Each subcommand lives in ``megatron_gatednorm.commands`` and imports its heavy dependencies
(torch, Megatron) only when it runs, so ``mgn launch`` works on a login node without them."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from megatron_gatednorm.user_input import OneLineArgumentParser

# Commands with their own complete argument parser: ``mgn NAME ...`` calls ``module.main(argv)``.
PASSTHROUGH = {
    "small-train": "megatron_gatednorm.training.small_trainer",
}

# name -> module defining HELP, add_arguments(parser) and run(args) -> int
COMMANDS = {
    "params": "megatron_gatednorm.commands.params",
    "data": "megatron_gatednorm.commands.data",
    "convert": "megatron_gatednorm.commands.convert",
    "outliers": "megatron_gatednorm.commands.outliers",
    "quant": "megatron_gatednorm.commands.quant",
    "experiment": "megatron_gatednorm.commands.experiment",
    "launch": "megatron_gatednorm.commands.launch",
    "preflight": "megatron_gatednorm.commands.preflight",
    "train": "megatron_gatednorm.commands.train",
}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="mgn", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in PASSTHROUGH.items():
        sub.add_parser(name, help=f"(own flags: mgn {name} --help)", add_help=False)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in PASSTHROUGH:
        return importlib.import_module(PASSTHROUGH[argv[0]]).main(argv[1:])
    if argv and argv[0] in COMMANDS:
        module = importlib.import_module(COMMANDS[argv[0]])
        if getattr(module, "PASSTHROUGH", False):  # `mgn train <Megatron flags>`: Megatron parses them
            return _run(module.run, argparse.Namespace(command=argv[0], megatron_args=argv[1:]))
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may follow options (mgn launch R --nodes 4 lr=1e-3): argparse leaves
    # positionals after an option unparsed, so collect them here.
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = list(args.overrides or []) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return _run(args._run, args)


def _run(run, args) -> int:
    """``run(args)``; a ``ValueError`` (a user error, raised where the input is read, naming it) is
    one line on stderr and exit 2. Any other exception is an internal error: its traceback stays."""
    try:
        return run(args) or 0
    except ValueError as e:  # user errors: one clear line, no traceback
        message = " ".join(str(e).split("\n")).strip() or type(e).__name__
        print(f"mgn {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
