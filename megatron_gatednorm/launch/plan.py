"""The launcher's entry point: a recipe name → validated :class:`~.validate.Plan` and its sbatch
script (:func:`build`), and the plan's human-readable summary (:func:`summary`), as ``mgn launch``
prints it. Imports neither torch nor Megatron."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

from megatron_gatednorm.launch.recipes import load_recipe
from megatron_gatednorm.launch.sbatch import render
from megatron_gatednorm.launch.validate import Plan, make_plan


def build(recipe: str, overrides, nodes: int, gpu_memory_gb: Optional[float] = None,
          recipe_dirs: Sequence[str] = ()) -> Tuple[Plan, str]:
    """(plan, script) for a recipe; raises ValueError naming the field on any problem."""
    r = load_recipe(recipe, overrides, nodes=nodes, recipe_dirs=recipe_dirs)
    plan = make_plan(r, nodes, gpu_memory_gb)
    return plan, render(plan)


def summary(plan: Plan) -> str:
    """The derived numbers, one ``label  values`` line each: recipe, layout, batch, budget, norm,
    parameters (and parity), memory per GPU, runtime and chained jobs, run directory, warnings."""
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
