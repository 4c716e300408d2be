"""A saved ``args`` Namespace ⇄ the architecture the converters rebuild (:class:`Arch`).

``args`` is what Megatron-LM pickles into every checkpoint: its flags' dests plus the plugin's.
:func:`arch_from_args` reads one (any megatron-core version: absent flags take Megatron's
defaults from :data:`~megatron_gatednorm.model_shape.MEGATRON_FLAGS`); :func:`megatron_args`
writes one for a model at a given parallel layout.

A megatron-core ``HybridModel`` checkpoint (args with ``hybrid_layer_pattern``, megatron-core >=
0.18) is read as its GPT-hybrid form plus the pattern (:attr:`Arch.hybrid_layer_pattern`), and
written back with the HybridModel's args (:mod:`.hybrid_keys`).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch

from megatron_gatednorm.norm_flags import norm_config_dests, norm_config_from_args
from megatron_gatednorm.checkpoint.errors import CheckpointError
from megatron_gatednorm.checkpoint.hybrid_keys import gpt_shape
from megatron_gatednorm.hybrid_pattern import layers
from megatron_gatednorm.norm_config import NormConfig
from megatron_gatednorm.model_shape import (
    MEGATRON_FLAGS,
    ModelShape,
    check_supported,
    extras_from_flags,
    flags_from_extras,
    flags_from_shape,
    hybrid_form,
    megatron_defaults,
    missing_required,
    shape_from_flags,
)

_EXTRA = {row.arch: row for row in MEGATRON_FLAGS if row.arch}


@dataclass(frozen=True)
class Arch:
    """Everything the converters need to rebuild a model: Megatron's fields beyond ModelShape
    (defaults: Megatron-LM's, from :data:`~megatron_gatednorm.model_shape.MEGATRON_FLAGS`)."""

    shape: ModelShape
    norm_config: NormConfig
    norm_epsilon: float = _EXTRA["norm_epsilon"].default
    zero_centered_gamma: bool = _EXTRA["zero_centered_gamma"].default
    rotary_base: float = float(_EXTRA["rotary_base"].default)
    rotary_percent: float = _EXTRA["rotary_percent"].default
    moe_router_pre_softmax: bool = _EXTRA["moe_router_pre_softmax"].default
    dtype: torch.dtype = torch.float32
    hybrid_layer_pattern: Optional[str] = None
    """Set for megatron-core's ``HybridModel``: its ``--hybrid-layer-pattern`` (``|`` splits kept);
    ``shape`` is then the model's GPT-hybrid form (:mod:`.hybrid_keys`). None: a ``GPTModel``."""

    def replace(self, **changes) -> "Arch":
        return dataclasses.replace(self, **changes)

    def extras(self) -> dict:
        """``{field: value}`` of the fields beyond the shape that Megatron flags set."""
        return {name: getattr(self, name) for name in _EXTRA}

    def transformer_config_overrides(self) -> dict:
        """``model.transformer_config`` overrides reproducing these fields."""
        overrides = {row.config: getattr(self, name) for name, row in _EXTRA.items() if row.config}
        return dict(overrides, params_dtype=self.dtype)


def megatron_args(
    arch: Arch,
    tensor_model_parallel_size: int = 1,
    pipeline_model_parallel_size: int = 1,
    expert_model_parallel_size: int = 1,
    vocab_size: Optional[int] = None,
    tokenizer_type: Optional[str] = None,
    **extra,
) -> argparse.Namespace:
    """The ``args`` Namespace Megatron-LM saves in ``common.pt`` for this model (Megatron's arg
    names plus the plugin flags' dests), at the given parallel layout."""
    s = arch.shape
    ns = megatron_defaults()  # every flag of the table, by dest
    if arch.hybrid_layer_pattern:  # a HybridModel's args: its own layer count, no per-layer frequencies
        written = hybrid_form(s)
        if layers(arch.hybrid_layer_pattern) != written.hybrid_layer_pattern:
            raise ValueError(f"invalid hybrid_layer_pattern={arch.hybrid_layer_pattern!r}: the model's "
                             f"layers are {written.hybrid_layer_pattern!r}")
        ns.update(flags_from_shape(written.replace(hybrid_layer_pattern=arch.hybrid_layer_pattern)))
    else:
        ns.update(flags_from_shape(s))
    ns.update(flags_from_extras(arch.extras()))  # 0.19's names and the older ones
    ns.update(
        vocab_size=vocab_size or s.vocab_size,
        padded_vocab_size=s.vocab_size,
        # as Megatron-LM's validate_args leaves them
        num_query_groups=s.query_groups,
        kv_channels=s.head_dim,
        moe_ffn_hidden_size=(s.moe_ffn_hidden_size or s.ffn_hidden_size) if s.num_experts else None,
        use_rotary_position_embeddings=s.position_embedding_type == "rope",
        seq_length=s.max_position_embeddings,
        # megatron.training compares tokenizer_type (with a vocab file) when loading without --finetune
        tokenizer_type=tokenizer_type,
        moe_grouped_gemm=False,
        transformer_impl="local",
        tensor_model_parallel_size=tensor_model_parallel_size,
        pipeline_model_parallel_size=pipeline_model_parallel_size,
        expert_model_parallel_size=expert_model_parallel_size,
        ckpt_format="torch_dist",
        use_dist_ckpt=True,
        params_dtype=arch.dtype,
        bf16=arch.dtype == torch.bfloat16,
        fp16=arch.dtype == torch.float16,
    )
    ns.update(norm_config_dests(arch.norm_config))
    ns.update(extra)
    return argparse.Namespace(**ns)


def arch_from_args(args, where: str = "common.pt") -> Arch:
    """Rebuild the architecture from a saved ``args`` Namespace (vocab = padded_vocab_size).
    Absent args take Megatron-LM's defaults; values the plugin does not support are refused
    (:func:`~megatron_gatednorm.model_shape.check_supported`)."""
    values = vars(args)
    missing = missing_required(values) + (["padded_vocab_size"] if values.get("padded_vocab_size") is None else [])
    if missing:
        raise CheckpointError(f"{where}: args has no {missing[0]!r}; expected a Megatron-LM checkpoint's args")
    try:
        check_supported(values)
        shape = shape_from_flags(values, vocab_size=int(values["padded_vocab_size"]))
        pattern = values.get("hybrid_layer_pattern")
        if pattern:
            shape = gpt_shape(shape, pattern)
        nc = norm_config_from_args(args)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: {e}") from None
    extras = extras_from_flags(values)
    dtype = getattr(args, "params_dtype", None)
    if not isinstance(dtype, torch.dtype):
        dtype = torch.bfloat16 if getattr(args, "bf16", False) else torch.float16 if getattr(args, "fp16", False) else torch.float32
    return Arch(
        shape=shape,
        norm_config=nc,
        norm_epsilon=float(extras["norm_epsilon"]),
        zero_centered_gamma=bool(extras["zero_centered_gamma"]),
        rotary_base=float(extras["rotary_base"]),
        rotary_percent=float(extras["rotary_percent"]),
        moe_router_pre_softmax=bool(extras["moe_router_pre_softmax"]),
        dtype=dtype,
        hybrid_layer_pattern=pattern or None,
    )


