"""``mgn preflight``: what every rank of an ``mgn launch`` job runs before training.

Argument parsing, printing and exit codes; the checks (world size vs layout, device, rendezvous,
meta-device model shard, fused-vs-eager norms, parameter all-gather) are
:mod:`megatron_gatednorm.training.preflight`, whose docstring lists them in order.

Any failure prints ``mgn preflight: rank R/W (host): <problem>`` and exits non-zero: 2 (a
``ValueError``, printed by ``mgn``), 3 (building the model shard failed), 4 (rank 0: the fused
norm check failed on other ranks).
"""

from __future__ import annotations

import argparse
import sys

from megatron_gatednorm.commands._common import add_recipe_dir_argument
from megatron_gatednorm.training.preflight import FUSED_CHECK_MODES

HELP = ("Per-rank job check: world size vs layout, device, rendezvous, meta-device model shards, parameter total, "
        "fused-vs-eager norms.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe-json", help="resolved recipe written by the sbatch script ($RUN_DIR/recipe.json)")
    p.add_argument("--recipe", help="recipe name (instead of --recipe-json; see --recipe-dir)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--nodes", type=int, help="with --recipe")
    add_recipe_dir_argument(p)
    p.add_argument("--timeout-s", type=float, default=120.0, help="rendezvous timeout")
    p.add_argument("--rtol", type=float, default=0.0,
                   help="allowed relative difference of the built total from the expected count")
    p.add_argument("--expected-params", type=int, default=None,
                   help="expected parameter total (default: the launcher's count for the recipe)")
    p.add_argument("--fused-check", choices=FUSED_CHECK_MODES, default="auto",
                   help="fused-vs-eager norm check: auto = on CUDA ranks, skipped on CPU ranks; on = also on CPU "
                        "ranks, in Triton's interpreter (needs TRITON_INTERPRET=1); off")


def _say(message: str, stream=None) -> None:
    """One write per line: ranks share stdout, and a print may write the text and its newline
    separately (unbuffered output under torchrun), interleaving lines of different ranks."""
    stream = stream or sys.stdout
    stream.write(message + "\n")
    stream.flush()


def run(args) -> int:
    from megatron_gatednorm.training import preflight as pf

    rank, world, where = pf.rank_and_world()
    try:
        plan = pf.load_plan(args.recipe_json, args.recipe, args.overrides, args.nodes,
                            getattr(args, "recipe_dir", None) or ())
    except ValueError as e:
        raise ValueError(f"{where}: recipe: {e}") from None
    d, m = plan.derived, plan.megatron
    pf.check_world_size(plan, world, where)
    device = pf.check_rank_device(plan, where)
    t_rdzv = pf.rendezvous(device, rank, world, args.timeout_s, where)
    try:
        model = pf.build_shard(plan, device)
        local = pf.count_local_params(model)
    except Exception as e:  # noqa: BLE001
        _say(f"mgn preflight: {where}: building the model shard failed: {type(e).__name__}: {e}", sys.stderr)
        pf.finish(barrier=False)
        return 3
    fused_report, fused_problem = pf.fused_norm_check(model, plan, device, args.fused_check)
    gathered = pf.gather(local, fused_problem, world)
    counts = [c for c, _ in gathered]
    total = sum(counts)
    expected = d["params_total"] if args.expected_params is None else args.expected_params
    _say(f"mgn preflight: {where}: rendezvous {t_rdzv:.1f} s, shard parameters {local:,}")
    _say(f"mgn preflight: {where}: {fused_report}")
    pf.finish()
    if fused_problem:
        raise ValueError(f"{where}: fused norm check failed (fused kernels vs eager reference): {fused_problem}")
    failed_ranks = [r for r, (_, problem) in enumerate(gathered) if problem]
    if failed_ranks:  # this rank passed; the failing ranks name their problem
        if rank == 0:
            _say(f"mgn preflight: {where}: fused norm check failed on rank(s) {', '.join(map(str, failed_ranks))}",
                 sys.stderr)
            return 4
        return 0
    if abs(total - expected) > args.rtol * expected:
        raise ValueError(
            f"{where}: built parameter total {total:,} (per rank: {', '.join(f'{c:,}' for c in counts)}) != "
            f"expected {expected:,} for {plan.recipe.name}; the recipe's shape and the built model disagree")
    if rank == 0:
        _say(f"mgn preflight: OK {plan.recipe.name}: world {world} (tp {m['tensor_model_parallel_size']} pp "
             f"{m['pipeline_model_parallel_size']} ep {m['expert_model_parallel_size']} dp {d['data_parallel_size']}), "
             f"parameters {total:,} = launcher count")
    return 0
