"""Process groups and gradients for runs outside Megatron-LM's ``pretrain()`` (the small
trainer, the CLI, tests, the converters): ``torch.distributed`` + Megatron's model-parallel state
for one process, a torchrun group or srun-native Slurm tasks, and gradient finalisation
without Megatron's DDP.

The device is chosen explicitly (``device=`` or ``$MGN_DEVICE``; :mod:`megatron_gatednorm.device`):
NCCL on ``cuda``, gloo on ``cpu``; a CPU process enters the CPU shim here.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
from megatron.core import parallel_state
from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed


def init_distributed(
    tensor_model_parallel_size: int = 1,
    pipeline_model_parallel_size: int = 1,
    expert_model_parallel_size: int = 1,
    context_parallel_size: int = 1,
    seed: int = 1234,
    device: Optional[str] = None,
) -> str:
    """Initialise torch.distributed (env:// under torchrun or srun-native Slurm tasks, else a
    1-process group) and Megatron's model-parallel state; apply the CPU shim without CUDA.

    ``device`` (``cuda`` | ``cpu``; default ``$MGN_DEVICE``, else cuda where CUDA is available)
    chooses the backend explicitly: NCCL with this rank's GPU for ``cuda``, gloo for ``cpu`` —
    also on a machine that has a GPU, so CPU tensors never meet NCCL. ``cuda`` on a node whose
    CUDA is broken raises ValueError (:func:`megatron_gatednorm.device.check_device`) instead of
    falling back to the CPU. Returns the device.
    """
    import torch.distributed as dist

    from megatron_gatednorm.device import backend, check_device, requested_device
    from megatron_gatednorm.launch.ranks import torch_env_from_slurm

    torch_env_from_slurm()
    device, setting = requested_device(device)
    check_device(device, int(os.environ.get("LOCAL_WORLD_SIZE", "1")), setting)

    if device == "cpu" and not torch.cuda.is_available():
        # This process trains on CPU from here on (a worker, a CLI command, a demo): enter the
        # shim for the process. (pytest enters it at session start, tests/conftest.py.)
        from megatron_gatednorm.cpu_shim import apply_cpu_shim

        apply_cpu_shim()
    if not dist.is_initialized():
        if device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        if "RANK" in os.environ:
            dist.init_process_group(backend(device))
        else:
            from torch.distributed import FileStore
            import tempfile

            store = FileStore(tempfile.mktemp(prefix="mgn-store-"), 1)
            dist.init_process_group(backend(device), store=store, rank=0, world_size=1)
    sizes = (tensor_model_parallel_size, pipeline_model_parallel_size, expert_model_parallel_size,
             context_parallel_size)
    if _model_parallel_sizes() != sizes:
        # megatron-core's destroy_model_parallel drops its groups without destroying them, and
        # each gloo group keeps its threads: re-create the groups only for a new layout
        if parallel_state.model_parallel_is_initialized():
            parallel_state.destroy_model_parallel()
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=tensor_model_parallel_size,
            pipeline_model_parallel_size=pipeline_model_parallel_size,
            expert_model_parallel_size=expert_model_parallel_size,
            context_parallel_size=context_parallel_size,
        )
    model_parallel_cuda_manual_seed(seed)
    torch.manual_seed(seed)
    return device


def _model_parallel_sizes():
    """(TP, PP, EP, CP) of megatron-core's current groups, or None before they exist."""
    if not parallel_state.model_parallel_is_initialized():
        return None
    return (parallel_state.get_tensor_model_parallel_world_size(),
            parallel_state.get_pipeline_model_parallel_world_size(),
            parallel_state.get_expert_model_parallel_world_size(),
            parallel_state.get_context_parallel_world_size())


def finalize_grads(model, config) -> None:
    """Gradient finalisation without Megatron's DDP (which needs CUDA buffers): Megatron's own
    all-reduce of sequence-parallel / QK-norm gradients over the tensor-parallel group, then the
    data-parallel average (dense parameters over DP, expert parameters over expert-DP)."""
    import torch.distributed as dist
    from megatron.core.distributed import DistributedDataParallelConfig
    from megatron.core.distributed.finalize_model_grads import _allreduce_non_tensor_model_parallel_grads

    model.ddp_config = DistributedDataParallelConfig()  # read by the function
    _allreduce_non_tensor_model_parallel_grads([model], config)
    groups = {
        True: parallel_state.get_data_parallel_group(),
        False: parallel_state.get_expert_data_parallel_group(),
    }
    for p in model.parameters():
        if p.grad is None:
            continue
        group = groups[getattr(p, "allreduce", True)]
        if dist.get_world_size(group) > 1:
            dist.all_reduce(p.grad, group=group)
            p.grad /= dist.get_world_size(group)
