"""Hugging Face folder → Megatron-LM torch_dist checkpoint, written from one process.

torch_dist checkpoints are layout-independent, so ``tp``/``pp``/``ep`` only go into the
saved ``args`` (checked for divisibility here); Megatron loads the tensors at any layout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

from megatron_gatednorm.convert import hf_io
from megatron_gatednorm.hybrid_pattern import PIPE, pattern_from_gpt_layers
from megatron_gatednorm.convert.mapping import hf_to_megatron
from megatron_gatednorm.checkpoint import (
    Arch,
    CheckpointError,
    atomic_output_dir,
    check_outside_inputs,
    megatron_args,
    stack,
    verify_manifest,
    write_checkpoint,
)


def check_layout(arch: Arch, tp: int, pp: int, ep: int) -> None:
    """Refuse parallel sizes below 1 or that do not divide the model's sizes."""
    for flag, n in (("--tp", tp), ("--pp", pp), ("--ep", ep)):
        if not isinstance(n, int) or n < 1:
            raise CheckpointError(f"invalid {flag}={n}: expected a whole number >= 1")
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


def hybrid_model_pattern(arch: Arch, pp: int) -> str:
    """The ``hybrid_layer_pattern`` of ``arch`` as a megatron-core ``HybridModel``: GPT layer i →
    the symbols of layers 2i (mixer) and 2i+1 (FFN), with ``pp - 1`` ``|`` splitting the GPT layers
    into ``pp`` equal pipeline stages (``check_layout`` checked that ``pp`` divides them)."""
    s = arch.shape
    pattern = pattern_from_gpt_layers(s.linear_attention_pattern(), s.moe_pattern())
    per_stage = 2 * s.num_layers // pp
    return PIPE.join(pattern[k: k + per_stage] for k in range(0, len(pattern), per_stage))


def read_hf_config(hf_dir) -> tuple:
    """``(config.json dict, arch)`` of an HF folder of a supported architecture (cheap: no tensors)."""
    folder = Path(hf_dir)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{folder}: no config.json; expected a Hugging Face model folder")
    try:
        cfg = json.loads(config_path.read_text())
    except ValueError as e:
        raise CheckpointError(f"{config_path}: invalid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{config_path}: expected a JSON object")
    return cfg, hf_io.arch_from_hf_config(cfg, where=str(config_path))


def verify_hf(hf_dir) -> bool:
    """Check an HF folder against its integrity manifest (False: it has none): config.json,
    the index and every safetensors file must be listed and unchanged."""
    folder = Path(hf_dir)
    used = ["config.json"] + sorted(p.name for p in folder.glob("*.safetensors"))
    if (folder / "model.safetensors.index.json").is_file():
        used.append("model.safetensors.index.json")
    return verify_manifest(folder, used)


def read_hf(hf_dir, verify: bool = True, notes: Optional[Callable[[str], None]] = None) -> tuple:
    """``(arch, HF class name, {hf name: tensor})`` of an HF folder of a supported architecture.

    With ``verify`` the files are first checked against the folder's integrity manifest (if it
    has one). The tensors' names and shapes are checked against what config.json implies (all
    disagreements in one message). ``notes`` hears of tensors left out (Qwen3-Next's MTP head)."""
    folder = Path(hf_dir)
    cfg, arch = read_hf_config(folder)
    if verify:
        verify_hf(folder)
    tensors = hf_io.unfuse_experts(hf_io.read_safetensors(folder))
    if cfg["model_type"] == "qwen3_next":
        # released Qwen3-Next folders carry a multi-token-prediction head that transformers'
        # class ignores too; the Megatron GPT model built here has none
        mtp = sorted(k for k in tensors if k.startswith("mtp."))
        if mtp and notes:
            notes(f"not converting {len(mtp)} tensors of Qwen3-Next's multi-token-prediction "
                  f"head (mtp.*, e.g. {mtp[0]}): the Megatron model has no MTP layers")
            tensors = {k: v for k, v in tensors.items() if not k.startswith("mtp.")}
    hf_class = hf_io.hf_class_of(cfg)
    check_tensors_fit_config(folder, cfg, hf_class, tensors)
    return arch, hf_class, tensors


def check_tensors_fit_config(folder: Path, cfg: dict, hf_class: str, tensors) -> None:
    """Refuse tensors whose names/shapes disagree with config.json (hidden size, FFN size,
    vocabulary, layer count, a missing or an extra tensor), naming every disagreement."""
    config = hf_io.config_from_dict(cfg, where=str(folder / "config.json"))
    expected = hf_io.saved_parameters(config, hf_class)
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if config.tie_word_embeddings:  # a tied head saved anyway is ignored (as hf_to_megatron does)
        got.pop("lm_head.weight", None)
    diff = hf_io.shape_mismatch(got, expected)
    if diff:
        raise CheckpointError(
            f"{folder}: the tensors do not match config.json ({hf_class}): {diff}; "
            "fix config.json or the safetensors files"
        )


def convert_to_megatron(
    hf_dir,
    out,
    tp: int = 1,
    pp: int = 1,
    ep: int = 1,
    overwrite: bool = False,
    vocab_size: Optional[int] = None,
    tokenizer_type: Optional[str] = None,
    verify: bool = True,
    hybrid_model: bool = False,
    notes: Optional[Callable[[str], None]] = None,
) -> Arch:
    """Convert the HF folder ``hf_dir`` into a Megatron-LM checkpoint in ``out``.

    Every input is checked before the tensors are read: ``out`` must not be, contain or lie
    inside ``hf_dir``, may exist only with ``overwrite`` and then only as a folder mgn wrote;
    config.json must describe a supported model that ``tp``/``pp``/``ep`` divide. With ``verify``
    the folder's files are checked against its integrity manifest (if any). The checkpoint gets
    an integrity manifest in its iteration folder and one for the whole folder.

    With ``hybrid_model`` the checkpoint is megatron-core's ``HybridModel`` (>= 0.18) of the same
    weights: args with ``hybrid_layer_pattern`` (:func:`hybrid_model_pattern`) and ``num_layers``
    = its layer count, keys renamed by :mod:`megatron_gatednorm.checkpoint.hybrid_keys`.
    ``notes`` hears of HF tensors not converted (``mgn convert`` prints them to stderr)."""
    from megatron_gatednorm.checkpoint.manifest import check_replaceable

    out = Path(out)
    check_outside_inputs(out, {"--hf": hf_dir})
    if out.exists() and not overwrite:
        raise CheckpointError(f"{out}: output folder already exists (pass --overwrite to replace it)")
    if out.exists():
        check_replaceable(out)
    if vocab_size is not None and vocab_size < 1:
        raise ValueError(f"invalid --vocab-size={vocab_size}: expected a positive number")
    _, arch = read_hf_config(hf_dir)
    check_layout(arch, tp, pp, ep)
    arch, hf_class, tensors = read_hf(hf_dir, verify=verify, notes=notes)
    arch = arch.replace(dtype=next(iter(tensors.values())).dtype)
    if hybrid_model:
        arch = arch.replace(hybrid_layer_pattern=hybrid_model_pattern(arch, pp))
    megatron = stack(hf_to_megatron(tensors, arch, hf_class), arch)
    args = megatron_args(
        arch, tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
        expert_model_parallel_size=ep, vocab_size=vocab_size, tokenizer_type=tokenizer_type,
    )
    with atomic_output_dir(out, overwrite, kind="megatron-checkpoint") as tmp:
        write_checkpoint(megatron, args, tmp)
    return arch
