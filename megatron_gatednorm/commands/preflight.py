"""``mgn preflight``: what every rank of an ``mgn launch`` job runs before training.

1. reads the resolved recipe (``--recipe-json``, written by the sbatch script; or a recipe name,
   overrides and ``--nodes``) and re-derives the plan with the launcher's own code;
2. checks the world size (``WORLD_SIZE`` or ``SLURM_NTASKS``) against the recipe's layout
   before any rendezvous, so a wrong ``--ntasks`` fails on every rank at once;
3. checks the recipe's device (``launch.device``): for ``cuda``, CUDA must work and show one GPU
   per local rank — a node with broken CUDA fails here instead of falling back to CPU/gloo;
4. rendezvous: ``torch.distributed`` env:// with a timeout (gloo for ``launch.device=cpu``, NCCL
   for ``cuda``), then Megatron's model-parallel groups for the recipe's TP/PP/CP/EP;
5. builds this rank's model shard on the meta device (no memory) with the plugin's specs;
6. fused-vs-eager check of each distinct norm module of the shard on this rank's GPU, in the
   recipe's dtype (:mod:`megatron_gatednorm.fused_check`, tolerances in its ``TOLERANCES``);
   skipped with the reason on a CPU rank (the kernels run compiled only on CUDA) unless
   ``--fused-check=on`` runs it in Triton's interpreter (``TRITON_INTERPRET=1``);
7. all-gathers the shard parameter counts (each parameter counted once: data-parallel rank 0,
   tensor-parallel rank 0 for replicated tensors, no tied output copy) and the fused-check
   results, and checks the total against the launcher's count.

Any failure prints ``mgn preflight: rank R/W (host): <problem>`` and exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time

HELP = ("Per-rank job check: world size vs layout, device, rendezvous, meta-device model shards, parameter total, "
        "fused-vs-eager norms.")
FUSED_CHECK_MODES = ("auto", "on", "off")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from megatron_gatednorm.commands._common import add_recipe_dir_argument

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


def load_plan(args):
    from megatron_gatednorm.launch.recipes import Recipe, load_recipe
    from megatron_gatednorm.launch.validate import make_plan

    if args.recipe_json:
        with open(args.recipe_json) as f:
            data = json.load(f)
        recipe = Recipe.from_dict(data["recipe"])
        return make_plan(recipe, int(data["nodes"]), data.get("gpu_memory_gb"))
    if not args.recipe or not args.nodes:
        raise ValueError("preflight needs --recipe-json PATH, or --recipe NAME and --nodes N")
    recipe = load_recipe(args.recipe, args.overrides, nodes=args.nodes,
                         recipe_dirs=getattr(args, "recipe_dir", None) or ())
    return make_plan(recipe, args.nodes)


def count_local_params(model) -> int:
    """This rank's share of the global parameter count (see module doc)."""
    from megatron.core import parallel_state as ps

    tp_rank = ps.get_tensor_model_parallel_rank()
    dp_rank = ps.get_data_parallel_rank(with_context_parallel=True)
    etp_rank = ps.get_expert_tensor_parallel_rank()
    edp_rank = ps.get_expert_data_parallel_rank()
    first_stage = ps.is_pipeline_first_stage(ignore_virtual=True)
    n = 0
    for p in model.parameters():
        partitioned = getattr(p, "tensor_model_parallel", False)
        if not getattr(p, "allreduce", True):  # expert parameter
            if edp_rank != 0 or (etp_rank != 0 and not partitioned):
                continue
        elif dp_rank != 0 or (tp_rank != 0 and not partitioned):
            continue
        if getattr(p, "shared_embedding", False) and not first_stage:
            continue  # the last stage's copy of tied embeddings
        n += p.numel()
    return n


def recipe_dtype(m):
    """The training dtype of the recipe's Megatron flags (``bf16``, ``fp16``, else fp32)."""
    import torch

    return torch.bfloat16 if m.get("bf16") else torch.float16 if m.get("fp16") else torch.float32


def fused_norm_check(model, plan, device: str, mode: str):
    """``(report, problem)`` of the fused-vs-eager check of ``model``'s norm modules on this rank's
    device (see the module doc); ``problem`` is None when the check passed or was skipped."""
    if mode == "off":
        return "fused norm check off (--fused-check=off)", None
    if device == "cpu" and mode == "auto":
        return ("fused norm check skipped: launch.device=cpu (the fused kernels run compiled only on CUDA; "
                "CPU ranks train on the eager path)"), None
    import torch

    from megatron_gatednorm.fused_check import check_fused_norms, norm_cases

    target = torch.device("cuda", torch.cuda.current_device()) if device == "cuda" else torch.device("cpu")
    try:
        results = check_fused_norms(norm_cases(model, plan.norm_config), recipe_dtype(plan.megatron), target)
    except Exception as e:  # noqa: BLE001 - e.g. the eager reference failing on a broken device
        return f"fused norm check FAILED: {type(e).__name__}: {e}", f"{type(e).__name__}: {e}"
    if not results:
        return "fused norm check: no plugin norm modules in this shard", None
    failed = "; ".join(f"{r.case.name}: {r.detail}" for r in results if r.status == "failed") or None
    where = f"{target} {recipe_dtype(plan.megatron)}".replace("torch.", "")
    return f"fused norm check {'FAILED' if failed else 'passed'} ({where}): " + "; ".join(map(str, results)), failed


def run(args) -> int:
    from megatron_gatednorm.launch.ranks import torch_env_from_slurm

    torch_env_from_slurm()
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1")))
    host = socket.gethostname()
    where = f"rank {rank}/{world} ({host})"
    try:
        plan = load_plan(args)
    except ValueError as e:
        raise ValueError(f"{where}: recipe: {e}") from None
    d, m = plan.derived, plan.megatron
    expected_world = d["world_size"]
    if world != expected_world:
        raise ValueError(
            f"{where}: world size {world} does not match recipe {plan.recipe.name}: nodes={plan.nodes} × "
            f"gpus_per_node={d['gpus_per_node']} = {expected_world} ranks; valid: run it with "
            f"--nodes={plan.nodes} --ntasks-per-node={d['gpus_per_node']} (srun) or fix launch.gpus_per_node")
    import datetime

    import torch
    import torch.distributed as dist

    from megatron_gatednorm.device import backend, check_device

    device = plan.recipe.launch["device"]  # CPU only where the recipe says so, never as a fallback
    try:
        check_device(device, int(os.environ.get("LOCAL_WORLD_SIZE", d["gpus_per_node"])), "launch.device")
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    t0 = time.time()
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    try:
        if world > 1 or "MASTER_ADDR" in os.environ:
            dist.init_process_group(backend(device), init_method="env://", rank=rank, world_size=world,
                                    timeout=datetime.timedelta(seconds=args.timeout_s))
    except Exception as e:  # noqa: BLE001 - report any rendezvous failure with the rank
        raise ValueError(f"{where}: rendezvous at {os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')} "
                         f"failed: {type(e).__name__}: {e}") from None
    t_rdzv = time.time() - t0
    try:
        from megatron_gatednorm.distributed import init_distributed
        from megatron_gatednorm.model import build_gpt_model, transformer_config

        init_distributed(
            tensor_model_parallel_size=int(m["tensor_model_parallel_size"]),
            pipeline_model_parallel_size=int(m["pipeline_model_parallel_size"]),
            expert_model_parallel_size=int(m["expert_model_parallel_size"]),
            context_parallel_size=int(m["context_parallel_size"]),
            device=device,
        )
        # perform_initialization: Megatron sets the tensor-parallel attributes only while initialising
        # (free on the meta device); count_local_params needs them.
        overrides = dict(init_model_with_meta_device=True, use_cpu_initialization=True, perform_initialization=True,
                         sequence_parallel=bool(m.get("sequence_parallel")) and m["tensor_model_parallel_size"] > 1)
        if m.get("expert_tensor_parallel_size"):
            overrides["expert_tensor_parallel_size"] = int(m["expert_tensor_parallel_size"])
        config = transformer_config(plan.shape, plan.norm_config, **overrides)
        use_te = m.get("transformer_impl") == "transformer_engine" and device == "cuda"
        with torch.device("meta"):
            model = build_gpt_model(plan.shape, config, use_transformer_engine=use_te,
                                    max_sequence_length=int(m["seq_length"]))
        local = count_local_params(model)
    except Exception as e:  # noqa: BLE001
        _say(f"mgn preflight: {where}: building the model shard failed: {type(e).__name__}: {e}", sys.stderr)
        if dist.is_initialized():
            dist.destroy_process_group()
        return 3
    fused_report, fused_problem = fused_norm_check(model, plan, device, args.fused_check)
    gathered = [(local, fused_problem)]
    if dist.is_initialized() and world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, (local, fused_problem))
    counts = [c for c, _ in gathered]
    total = sum(counts)
    expected = d["params_total"] if args.expected_params is None else args.expected_params
    _say(f"mgn preflight: {where}: rendezvous {t_rdzv:.1f} s, shard parameters {local:,}")
    _say(f"mgn preflight: {where}: {fused_report}")
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
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
