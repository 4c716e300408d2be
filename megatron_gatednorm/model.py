"""Build a Megatron ``GPTModel`` (or, for a shape with a layer pattern, megatron-core >= 0.18's
``HybridModel``) with the plugin's specs from a :class:`ModelShape`.

Used by the CLI, the tests, the small trainer and the converters so that all of them build
the same model code as production training. ``megatron.core.parallel_state`` must already be
initialised (tensor/pipeline/expert layout);
:func:`megatron_gatednorm.distributed.init_distributed` does that for one process or a torchrun
group.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_gatednorm.norm_config import NormConfig
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


def build_shape_model(shape: ModelShape, config: TransformerConfig, use_transformer_engine: bool = False,
                      max_sequence_length: Optional[int] = None):
    """This pipeline stage's model of ``shape``: :func:`build_gpt_model`, or for a shape with
    ``hybrid_layer_pattern`` the ``HybridModel`` of :func:`megatron_gatednorm.hybrid_specs.
    build_hybrid_model` (megatron-core >= 0.18), with ``config.norm_config``. A pattern with more
    ``|`` segments than pipeline stages gives this rank one chunk per virtual stage (segment
    ``vp · pp + pp_rank``, as megatron-core assigns them), as a ``ModuleList``."""
    if not shape.hybrid_layer_pattern:
        return build_gpt_model(shape, config, use_transformer_engine, max_sequence_length)
    from megatron_gatednorm.hybrid_pattern import segments
    from megatron_gatednorm.hybrid_specs import build_hybrid_model

    pp = parallel_state.get_pipeline_model_parallel_world_size()
    virtual = max(1, len(segments(shape.hybrid_layer_pattern)) // pp)
    if virtual > 1:  # as megatron.training sets it from the pattern's segments (HybridModel checks vp_stage by it)
        config.virtual_pipeline_model_parallel_size = virtual
    first = parallel_state.is_pipeline_first_stage(ignore_virtual=True)
    last = parallel_state.is_pipeline_last_stage(ignore_virtual=True)
    chunks = [build_hybrid_model(
        config, shape.hybrid_layer_pattern, shape.vocab_size, max_sequence_length or shape.max_position_embeddings,
        config.norm_config, use_transformer_engine=use_transformer_engine, vp_stage=i if virtual > 1 else None,
        pre_process=first and i == 0, post_process=last and i == virtual - 1,
        position_embedding_type=shape.position_embedding_type,
        share_embeddings_and_output_weights=not shape.untie_embeddings_and_output_weights,
    ) for i in range(virtual)]
    return chunks[0] if virtual == 1 else torch.nn.ModuleList(chunks)
