"""The per-rank job check that every rank of an ``mgn launch`` job runs before training
(``mgn preflight``; :mod:`megatron_gatednorm.commands.preflight` parses its flags and prints).

1. :func:`load_plan` reads the resolved recipe (``--recipe-json``, written by the sbatch script; or
   a recipe name, overrides and ``--nodes``) and re-derives the plan with the launcher's own code;
2. :func:`check_world_size` checks the world size (``WORLD_SIZE`` or ``SLURM_NTASKS``) against the
   recipe's layout before any rendezvous, so a wrong ``--ntasks`` fails on every rank at once;
3. :func:`check_rank_device` checks the recipe's device (``launch.device``): for ``cuda``, CUDA must
   work and show one GPU per local rank — a node with broken CUDA fails here instead of falling
   back to CPU/gloo;
4. :func:`rendezvous`: ``torch.distributed`` env:// with a timeout (gloo for ``launch.device=cpu``,
   NCCL for ``cuda``); :func:`build_shard` then creates Megatron's model-parallel groups for the
   recipe's TP/PP/CP/EP and
5. builds this rank's model shard on the meta device (no memory) with the plugin's specs;
6. :func:`fused_norm_check`: fused-vs-eager check of each distinct norm module of the shard on this
   rank's GPU, in the recipe's dtype (:mod:`megatron_gatednorm.training.fused_check`, tolerances in its
   ``TOLERANCES``); skipped with the reason on a CPU rank (the kernels run compiled only on CUDA)
   unless ``--fused-check=on`` runs it in Triton's interpreter (``TRITON_INTERPRET=1``);
7. :func:`gather` all-gathers the shard parameter counts (:func:`count_local_params`: each parameter
   counted once: data-parallel rank 0, tensor-parallel rank 0 for replicated tensors, no tied output
   copy) and the fused-check results, and the command checks the total against the launcher's count.

Any failure is a ``ValueError("rank R/W (host): <problem>")`` (the command prints it and exits
non-zero). Imports torch and Megatron only inside the functions that need them, so importing this
module (``mgn launch`` builds the whole ``mgn`` parser) stays torch-free.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any, List, Optional, Sequence, Tuple

FUSED_CHECK_MODES = ("auto", "on", "off")


def rank_and_world() -> Tuple[int, int, str]:
    """``(rank, world size, "rank R/W (host)")`` of this process; Slurm's variables are mapped to
    torch's first (:func:`~megatron_gatednorm.launch.ranks.torch_env_from_slurm`)."""
    from megatron_gatednorm.launch.ranks import torch_env_from_slurm

    torch_env_from_slurm()
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1")))
    return rank, world, f"rank {rank}/{world} ({socket.gethostname()})"


def load_plan(recipe_json: Optional[str] = None, recipe: Optional[str] = None, overrides: Sequence[str] = (),
              nodes: Optional[int] = None, recipe_dirs: Sequence[str] = ()):
    """The launcher's :class:`~megatron_gatednorm.launch.validate.Plan`, from the resolved
    ``recipe.json`` the sbatch script wrote, or from a recipe name, overrides and a node count."""
    from megatron_gatednorm.launch.recipes import Recipe, load_recipe
    from megatron_gatednorm.launch.validate import make_plan

    from megatron_gatednorm.user_input import read_json

    if recipe_json:
        data = read_json(recipe_json, "--recipe-json")
        if not isinstance(data, dict) or "recipe" not in data or "nodes" not in data:
            raise ValueError(f"--recipe-json {recipe_json}: expected the recipe.json an mgn launch job writes "
                             "(keys 'recipe' and 'nodes')")
        try:
            resolved = Recipe.from_dict(data["recipe"])
            nodes = int(data["nodes"])
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"--recipe-json {recipe_json}: not a resolved recipe ({type(e).__name__}: {e}); "
                             "use the recipe.json mgn launch wrote") from None
        return make_plan(resolved, nodes, data.get("gpu_memory_gb"))
    if nodes is not None and nodes < 1:
        raise ValueError(f"--nodes={nodes}: expected a number >= 1")
    if not recipe or not nodes:
        raise ValueError("preflight needs --recipe-json PATH, or --recipe NAME and --nodes N")
    loaded = load_recipe(recipe, overrides, nodes=nodes, recipe_dirs=recipe_dirs or ())
    return make_plan(loaded, nodes)


def check_world_size(plan, world: int, where: str) -> None:
    """The job's world size must be the recipe's ``nodes × gpus_per_node``."""
    d = plan.derived
    expected_world = d["world_size"]
    if world != expected_world:
        raise ValueError(
            f"{where}: world size {world} does not match recipe {plan.recipe.name}: nodes={plan.nodes} × "
            f"gpus_per_node={d['gpus_per_node']} = {expected_world} ranks; valid: run it with "
            f"--nodes={plan.nodes} --ntasks-per-node={d['gpus_per_node']} (srun) or fix launch.gpus_per_node")


def check_rank_device(plan, where: str) -> str:
    """The recipe's ``launch.device``, checked on this node (CPU only where the recipe says so, never
    as a fallback)."""
    from megatron_gatednorm.device import check_device

    device = plan.recipe.launch["device"]
    try:
        check_device(device, int(os.environ.get("LOCAL_WORLD_SIZE", plan.derived["gpus_per_node"])),
                     "launch.device")
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    return device


def rendezvous(device: str, rank: int, world: int, timeout_s: float, where: str) -> float:
    """Select this rank's GPU and join the process group (env://, when there is more than one rank
    or a ``MASTER_ADDR``); returns the seconds it took."""
    import datetime

    import torch
    import torch.distributed as dist

    from megatron_gatednorm.device import backend

    t0 = time.time()
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    try:
        if world > 1 or "MASTER_ADDR" in os.environ:
            dist.init_process_group(backend(device), init_method="env://", rank=rank, world_size=world,
                                    timeout=datetime.timedelta(seconds=timeout_s))
    except Exception as e:  # noqa: BLE001 - report any rendezvous failure with the rank
        raise ValueError(f"{where}: rendezvous at {os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')} "
                         f"failed: {type(e).__name__}: {e}") from None
    return time.time() - t0


def build_shard(plan, device: str):
    """Megatron's model-parallel groups for the recipe's layout, then this rank's model shard on the
    meta device (the plugin's specs; a HybridModel, with a chunk per virtual stage, where the recipe
    has a layer pattern; Transformer Engine layers where the recipe asks for them on CUDA)."""
    import torch

    from megatron_gatednorm.distributed import init_distributed
    from megatron_gatednorm.model import build_shape_model, transformer_config

    m = plan.megatron
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
    if plan.shape.hybrid_layer_pattern:
        overrides["is_hybrid_model"] = True
    config = transformer_config(plan.shape, plan.norm_config, **overrides)
    use_te = m.get("transformer_impl") == "transformer_engine" and device == "cuda"
    with torch.device("meta"):
        return build_shape_model(plan.shape, config, use_transformer_engine=use_te,
                                 max_sequence_length=int(m["seq_length"]))


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

    from megatron_gatednorm.training.fused_check import check_fused_norms, norm_cases

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


def gather(local: int, fused_problem: Optional[str], world: int) -> List[Tuple[int, Optional[str]]]:
    """Every rank's ``(shard parameter count, fused-check problem)``, in rank order (all-gather)."""
    import torch.distributed as dist

    gathered: List[Any] = [(local, fused_problem)]
    if dist.is_initialized() and world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, (local, fused_problem))
    return gathered


def finish(barrier: bool = True) -> None:
    """Wait for every rank (``barrier``) and leave the process group, if one was joined."""
    import torch.distributed as dist

    if dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()
