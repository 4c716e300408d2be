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
    check_outside_inputs,
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
    verify: bool = True,
) -> str:
    """Convert; returns the HF architecture name written to ``config.json``.

    Every input is checked before the checkpoint is read: ``out`` must not be, contain or lie
    inside ``load`` or ``tokenizer``, may exist only with ``overwrite`` and then only as a folder
    mgn wrote (its ``.mgn-manifest.json`` lists every file in it); ``dtype``, ``max_shard_size``
    and ``tokenizer`` must be valid. With ``verify`` the checkpoint's files are checked against
    its integrity manifest, if it has one. The export gets its own manifest."""
    from transformers import GenerationConfig

    from megatron_gatednorm.checkpoint.manifest import check_replaceable

    out = Path(out)
    check_outside_inputs(out, {"--load": load, "--tokenizer": tokenizer})
    if out.exists() and not overwrite:
        raise CheckpointError(f"{out}: output folder already exists (pass --overwrite to replace it)")
    if out.exists():
        check_replaceable(out)
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"invalid --dtype={dtype!r}; valid choices: {', '.join(DTYPES)}")
    hf_io.parse_size(max_shard_size)
    tok = None
    if tokenizer:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(tokenizer, local_files_only=True)
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"--tokenizer {tokenizer}: cannot be loaded ({type(e).__name__}: {e})") from None
    arch, _, tensors = read_checkpoint(load, verify=verify)
    target = DTYPES[dtype] if dtype else next(iter(tensors.values())).dtype
    config, name = hf_io.hf_config(arch, target, force_gatednorm=force_gatednorm)
    tensors = megatron_to_hf(unstack(tensors, arch), arch, name)
    tensors = {k: v.to(target) for k, v in tensors.items()}
    expected = hf_io.expected_parameters(config, name)
    if expected is not None:
        diff = hf_io.shape_mismatch({k: tuple(v.shape) for k, v in tensors.items()}, expected)
        if diff:
            raise CheckpointError(f"{load}: converted tensors do not fit {name}: {diff}")
    if tok is not None:
        for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if getattr(tok, attr, None) is not None:
                setattr(config, attr, getattr(tok, attr))
    with atomic_output_dir(out, overwrite, kind="hf-export") as tmp:
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
