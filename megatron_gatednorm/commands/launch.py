"""``mgn launch``: validate a recipe for a node count, render its sbatch script, print or submit it.

Argument parsing and printing only; the plan, script and summary come from
:mod:`megatron_gatednorm.launch.plan`."""

from __future__ import annotations

import argparse
import json
import shlex

from megatron_gatednorm.commands._common import add_recipe_dir_argument

HELP = "Validate a recipe for N nodes and print (--dry-run) or submit (--submit) its sbatch script."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe name or path, optionally with overlays: dense2b_gatednorm+clip100 "
                                  "(built-in recipes: megatron_gatednorm/recipes; see --recipe-dir)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="override a recipe key (section.key=value for a key the recipe does not have)")
    p.add_argument("--nodes", type=int, required=True, help="number of nodes")
    add_recipe_dir_argument(p)
    p.add_argument("--gpu-memory-gb", type=float, default=None,
                   help="memory per GPU to check the estimate against (default: launch.gpu_memory_gb)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print the script, numbers and Megatron command (default)")
    mode.add_argument("--submit", action="store_true", help="submit with sbatch and print the job id(s)")
    p.add_argument("--json", action="store_true", help="with --dry-run: print the derived numbers and argv as JSON")


def run(args) -> int:
    from megatron_gatednorm.launch.argv import megatron_argv
    from megatron_gatednorm.launch.plan import build, summary
    from megatron_gatednorm.launch.sbatch import submit
    from megatron_gatednorm.launch.validate import check_submittable

    plan, script = build(args.recipe, args.overrides, args.nodes, args.gpu_memory_gb, args.recipe_dir)
    argv = megatron_argv(plan)
    if args.submit:
        check_submittable(plan)
        ids = submit(plan, script)
        print(summary(plan))
        print(f"submitted job {' -> '.join(ids)}" if len(ids) > 1 else f"submitted job {ids[0]}")
        return 0
    if args.json:
        print(json.dumps(dict(derived=plan.derived, megatron_argv=argv, warnings=plan.warnings), indent=1, default=str))
        return 0
    print("# ---- derived ----")
    print("\n".join(f"# {line}" for line in summary(plan).splitlines()))
    if plan.recipe.choices:
        print("# ---- choices (hyper-parameters the paper does not state; override with key=value) ----")
        for key, why in plan.recipe.choices.items():
            print(f"# {key}: {why}")
    print("# ---- megatron command ----")
    entry = plan.recipe.launch["entrypoint"]
    print("# " + " ".join([plan.recipe.launch["python"], entry] + [shlex.quote(a) for a in argv]))
    print("# ---- sbatch script ----")
    print(script, end="")
    return 0
