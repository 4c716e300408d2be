"""Argument definitions shared by several subcommands (argparse only)."""

from __future__ import annotations

import argparse


def add_recipe_dir_argument(p: argparse.ArgumentParser) -> None:
    """``--recipe-dir DIR`` (repeatable), for the commands that load a recipe (launch, preflight)."""
    p.add_argument("--recipe-dir", action="append", default=[], metavar="DIR",
                   help="directory of your own recipes (NAME.yaml, overlays/NAME.yaml), searched before "
                        "$MGN_RECIPE_DIR and the built-in recipes; repeatable. A recipe there may name a "
                        "built-in base or overlay")
