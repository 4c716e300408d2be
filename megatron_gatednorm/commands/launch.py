"""``mgn launch``: validate a recipe for a node count, render its sbatch script, print or submit it."""

from __future__ import annotations

import argparse
import json
import shlex

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


def add_recipe_dir_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe-dir", action="append", default=[], metavar="DIR",
                   help="directory of your own recipes (NAME.yaml, overlays/NAME.yaml), searched before "
                        "$MGN_RECIPE_DIR and the built-in recipes; repeatable. A recipe there may name a "
                        "built-in base or overlay")


def build(recipe: str, overrides, nodes: int, gpu_memory_gb=None, recipe_dirs=()):
    """(plan, script) for a recipe; raises ValueError naming the field on any problem."""
    from megatron_gatednorm.launch.recipes import load_recipe
    from megatron_gatednorm.launch.sbatch import render
    from megatron_gatednorm.launch.validate import make_plan

    r = load_recipe(recipe, overrides, nodes=nodes, recipe_dirs=recipe_dirs)
    plan = make_plan(r, nodes, gpu_memory_gb)
    return plan, render(plan)


def summary(plan) -> str:
    d = plan.derived
    mem = d["memory_gib"]
    m = plan.megatron
    lines = [
        f"recipe        {plan.recipe.name}  ({' + '.join(plan.recipe.sources)})",
        f"layout        nodes={d['nodes']} gpus_per_node={d['gpus_per_node']} world={d['world_size']} "
        f"tp={m['tensor_model_parallel_size']} pp={m['pipeline_model_parallel_size']} "
        f"cp={m['context_parallel_size']} ep={m['expert_model_parallel_size']} dp={d['data_parallel_size']}",
        f"batch         global={m['global_batch_size']} micro={m['micro_batch_size']} "
        f"microbatches/step={d['num_microbatches']} seq={m['seq_length']} tokens/step={d['tokens_per_step']:,}",
        f"budget        train_iters={d['train_iters']:,} tokens={d['train_tokens']:,}",
        f"norm          {plan.norm_config.variant} (rank {plan.norm_config.rank}, placement "
        f"{','.join(plan.norm_config.placement)})",
        f"parameters    total={d['params_total']:,} active={d['params_active']:,} "
        f"(padded vocab {d['padded_vocab_size']:,})",
    ]
    if "parity" in d:
        p = d["parity"]
        lines.append(f"parity        {p['field']} {p['baseline_width']} -> {p['width']} "
                     f"(baseline {p['baseline_params']:,}, before parity {p['params_before_parity']:,}, after {p['params']:,})")
    lines.append(
        f"memory/GPU    ~{mem['total']:.1f} GiB of {d['gpu_memory_gb']:g} (weights {mem['weights']:.1f}, grads "
        f"{mem['grads']:.1f}, optimizer {mem['optimizer']:.1f}, activations {mem['activations']:.1f}; "
        f"recompute={m.get('recompute_granularity') or 'none'})")
    lines.append(f"runtime       ~{d['estimated_hours']:.1f} h at {plan.recipe.launch['tflops_per_gpu']:g} TFLOP/s/GPU "
                 f"-> {d['chain_jobs']} chained job(s) of {plan.recipe.slurm['time']}")
    lines.append(f"run dir       {d['run_dir']}")
    for w in plan.warnings:
        lines.append(f"warning       {w}")
    return "\n".join(lines)


def run(args) -> int:
    from megatron_gatednorm.launch.argv import megatron_argv
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
