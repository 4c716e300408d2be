"""Build a Megatron ``GPTModel`` with the plugin's specs from a :class:`ModelShape`.

Used by the CLI, the tests, the small trainer and the converters so that all of them build
the same model code as production training. ``megatron.core.parallel_state`` must already be
initialised (tensor/pipeline/expert layout); :func:`init_distributed` does that for one
process or a torchrun group.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_gatednorm.config import NormConfig
from megatron_gatednorm.model_shape import ModelShape, megatron_default, transformer_config_kwargs
from megatron_gatednorm.specs import get_gatednorm_block_spec

def transformer_config(shape: ModelShape, norm_config: Optional[NormConfig] = None, **overrides) -> TransformerConfig:
    """A TransformerConfig for ``shape`` (RMSNorm, no dropout unless overridden).

    ``norm_config`` is attached as ``config.norm_config``, where the plugin's specs find it.
    """
    fields = {f.name for f in dataclasses.fields(TransformerConfig)}
    kwargs = dict(
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bias_activation_fusion=False,
        tensor_model_parallel_size=parallel_state.get_tensor_model_parallel_world_size(),
        pipeline_model_parallel_size=parallel_state.get_pipeline_model_parallel_world_size(),
        expert_model_parallel_size=parallel_state.get_expert_model_parallel_world_size(),
        context_parallel_size=parallel_state.get_context_parallel_world_size(),
    )
    # the shape's fields and the plugin's fixed flags (RMSNorm ...), where this megatron-core has them
    kwargs.update({k: v for k, v in transformer_config_kwargs(shape).items() if k in fields})
    if shape.swiglu:
        kwargs["activation_func"] = F.silu
    if shape.num_experts:
        kwargs.setdefault("moe_token_dispatcher_type", "alltoall")
        kwargs.setdefault("moe_grouped_gemm", False)
    kwargs.update(overrides)
    kwargs.setdefault("pipeline_dtype", kwargs.get("params_dtype", torch.float32))
    config = TransformerConfig(**kwargs)
    config.norm_config = norm_config if norm_config is not None else NormConfig()
    return config


def build_gpt_model(
    shape: ModelShape,
    config: TransformerConfig,
    use_transformer_engine: bool = False,
    max_sequence_length: Optional[int] = None,
    vp_stage: Optional[int] = None,
    rotary_percent: float = megatron_default("rotary_percent"),
    rotary_base: int = megatron_default("rotary_base"),
) -> GPTModel:
    """This pipeline stage's GPTModel with the plugin's block spec (``config.norm_config``)."""
    pre = parallel_state.is_pipeline_first_stage(ignore_virtual=vp_stage is None, vp_stage=vp_stage)
    post = parallel_state.is_pipeline_last_stage(ignore_virtual=vp_stage is None, vp_stage=vp_stage)
    spec = get_gatednorm_block_spec(
        config, use_transformer_engine=use_transformer_engine, vp_stage=vp_stage
    )
    return GPTModel(
        config=config,
        transformer_layer_spec=spec,
        vocab_size=shape.vocab_size,
        max_sequence_length=max_sequence_length or shape.max_position_embeddings,
        position_embedding_type=shape.position_embedding_type,
        rotary_percent=rotary_percent,
        rotary_base=rotary_base,
        share_embeddings_and_output_weights=not shape.untie_embeddings_and_output_weights,
        pre_process=pre,
        post_process=post,
        vp_stage=vp_stage,
    )


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
