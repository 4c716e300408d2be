"""``mgn launch``: validate a recipe for a node count, render its sbatch script, print or submit it.

Argument parsing and printing only; the plan, script and summary come from
:mod:`megatron_gatednorm.launch.plan`."""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from megatron_gatednorm.commands._common import add_recipe_dir_argument

HELP = "Validate a recipe for N nodes and print (--dry-run) or submit (--submit) its sbatch script."
EPILOG = ("--dry-run prints the derived numbers, the choices and the Megatron command as '# ' comment lines, "
          "then the script. --script-only prints the script alone on stdout, byte-identical to what --submit "
          "would submit (warnings go to stderr), so that "
          "'mgn launch tiny --nodes 1 --script-only > job.sbatch && sbatch job.sbatch' works.")


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
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="with --dry-run: print the derived numbers and argv as JSON")
    out.add_argument("--script-only", action="store_true",
                     help="with --dry-run (implied): print only the sbatch script on stdout, exactly what --submit "
                          "would submit (warnings on stderr): mgn launch R --nodes N --script-only > job.sbatch")
    p.epilog = EPILOG


def run(args) -> int:
    from megatron_gatednorm.launch.argv import megatron_argv
    from megatron_gatednorm.launch.plan import build, summary
    from megatron_gatednorm.launch.sbatch import submit
    from megatron_gatednorm.launch.validate import check_submittable

    if args.submit and (args.script_only or args.json):
        raise ValueError(f"invalid {'--script-only' if args.script_only else '--json'} with --submit; valid: "
                         "--dry-run --script-only, --dry-run --json, or --submit alone")
    plan, script = build(args.recipe, args.overrides, args.nodes, args.gpu_memory_gb, args.recipe_dir)
    argv = megatron_argv(plan)
    if args.script_only:  # stdout is the script and nothing else
        for w in plan.warnings:
            print(f"mgn launch: warning: {w}", file=sys.stderr)
        sys.stdout.write(script)
        return 0
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
