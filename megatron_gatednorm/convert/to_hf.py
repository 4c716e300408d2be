"""Megatron torch_dist checkpoint → Hugging Face folder (offline, CPU, no process group)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from megatron_gatednorm.convert import hf_io
from megatron_gatednorm.convert.mapping import megatron_to_hf
from megatron_gatednorm.checkpoint import (
    CheckpointError,
    atomic_output_dir,
    read_checkpoint,
    unstack,
)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def convert_to_hf(
    load,
    out,
    tokenizer: Optional[str] = None,
    dtype: Optional[str] = None,
    max_shard_size="5GB",
    overwrite: bool = False,
    force_gatednorm: bool = False,
    progress: bool = True,
) -> str:
    """Convert; returns the HF architecture name written to ``config.json``."""
    from transformers import GenerationConfig

    out = Path(out)
    if out.exists() and not overwrite:
        raise CheckpointError(f"{out}: output folder already exists (pass --overwrite to replace it)")
    arch, _, tensors = read_checkpoint(load)
    target = DTYPES[dtype] if dtype else next(iter(tensors.values())).dtype
    config, name = hf_io.hf_config(arch, target, force_gatednorm=force_gatednorm)
    tensors = megatron_to_hf(unstack(tensors, arch), arch, name)
    tensors = {k: v.to(target) for k, v in tensors.items()}
    expected = hf_io.expected_parameters(config, name)
    if expected is not None:
        got = {k: tuple(v.shape) for k, v in tensors.items()}
        if got != expected:
            diff = sorted(set(got) ^ set(expected)) or sorted(k for k in got if got[k] != expected[k])
            raise CheckpointError(f"{load}: converted tensors do not fit {name}: {', '.join(diff[:5])}")
    tok = None
    if tokenizer:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(tokenizer, local_files_only=True)
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"--tokenizer {tokenizer}: cannot be loaded ({type(e).__name__}: {e})") from None
        for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if getattr(tok, attr, None) is not None:
                setattr(config, attr, getattr(tok, attr))
    with atomic_output_dir(out, overwrite) as tmp:
        hf_io.write_safetensors(tensors, tmp, max_shard_size, progress)
        config.save_pretrained(tmp)
        GenerationConfig(
            bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
            pad_token_id=config.pad_token_id,
        ).save_pretrained(tmp)
        if name == "GatedNormForCausalLM":
            hf_io.copy_code(tmp)
        if tok is not None:
            tok.save_pretrained(tmp)
    return name
