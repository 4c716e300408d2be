"""Hugging Face folder → Megatron-LM torch_dist checkpoint, written from one process.

torch_dist checkpoints are layout-independent, so ``tp``/``pp``/``ep`` only go into the
saved ``args`` (checked for divisibility here); Megatron loads the tensors at any layout.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

from megatron_gatednorm.convert import hf_io
from megatron_gatednorm.convert.mapping import hf_to_megatron
from megatron_gatednorm.checkpoint import (
    Arch,
    CheckpointError,
    atomic_output_dir,
    megatron_args,
    stack,
    write_checkpoint,
)


def check_layout(arch: Arch, tp: int, pp: int, ep: int) -> None:
    s = arch.shape
    checks = [
        ("--tp", tp, "num_attention_heads", s.num_attention_heads),
        ("--tp", tp, "num_query_groups", s.query_groups),
        ("--tp", tp, "ffn_hidden_size", s.ffn_hidden_size),
        ("--pp", pp, "num_layers", s.num_layers),
    ]
    if s.num_experts:
        checks.append(("--ep", ep, "num_experts", s.num_experts))
    if any(s.linear_attention_pattern()):
        checks += [("--tp", tp, "linear_num_key_heads", s.linear_num_key_heads),
                   ("--tp", tp, "linear_num_value_heads", s.linear_num_value_heads)]
    for flag, n, field, value in checks:
        if n < 1 or value % n:
            raise CheckpointError(f"invalid {flag}={n}: {field}={value} is not divisible by it")
    if ep > 1 and not s.num_experts:
        raise CheckpointError(f"invalid --ep={ep}: the model has no experts")


def read_hf(hf_dir) -> tuple:
    """``(arch, HF class name, {hf name: tensor})`` of an HF folder of a supported architecture."""
    folder = Path(hf_dir)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{folder}: no config.json; expected a Hugging Face model folder")
    try:
        cfg = json.loads(config_path.read_text())
    except ValueError as e:
        raise CheckpointError(f"{config_path}: invalid JSON ({e})") from None
    arch = hf_io.arch_from_hf_config(cfg, where=str(config_path))
    tensors = hf_io.unfuse_experts(hf_io.read_safetensors(folder))
    if cfg["model_type"] == "qwen3_next":
        # released Qwen3-Next folders carry a multi-token-prediction head that transformers'
        # class ignores too; the Megatron GPT model built here has none
        mtp = sorted(k for k in tensors if k.startswith("mtp."))
        if mtp:
            print(f"to-megatron: not converting {len(mtp)} tensors of Qwen3-Next's multi-token-prediction "
                  f"head (mtp.*, e.g. {mtp[0]}): the Megatron model has no MTP layers", file=sys.stderr)
            tensors = {k: v for k, v in tensors.items() if not k.startswith("mtp.")}
    return arch, hf_io.hf_class_of(cfg), tensors


def convert_to_megatron(
    hf_dir,
    out,
    tp: int = 1,
    pp: int = 1,
    ep: int = 1,
    overwrite: bool = False,
    vocab_size: Optional[int] = None,
    tokenizer_type: Optional[str] = None,
) -> Arch:
    out = Path(out)
    if out.exists() and not overwrite:
        raise CheckpointError(f"{out}: output folder already exists (pass --overwrite to replace it)")
    arch, hf_class, tensors = read_hf(hf_dir)
    check_layout(arch, tp, pp, ep)
    arch = arch.replace(dtype=next(iter(tensors.values())).dtype)
    megatron = stack(hf_to_megatron(tensors, arch, hf_class), arch)
    args = megatron_args(
        arch, tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
        expert_model_parallel_size=ep, vocab_size=vocab_size, tokenizer_type=tokenizer_type,
    )
    with atomic_output_dir(out, overwrite) as tmp:
        write_checkpoint(megatron, args, tmp)
    return arch
