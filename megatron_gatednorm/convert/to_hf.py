"""Megatron torch_dist checkpoint → Hugging Face folder (offline, CPU, no process group)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Tuple

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


def _load_tokenizer(folder):
    """``AutoTokenizer`` of a local folder; raises what transformers raises (assorted errors)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def checkpoint_tokenizer(args, out: Path) -> Tuple[object, str]:
    """``(tokenizer, note)``: the tokenizer the checkpoint's ``args`` name (``--tokenizer-model``,
    a local HF folder), loaded, or None, and one line saying which tokenizer the export gets and
    why. ``out`` must lie outside that folder. A missing or unloadable folder is not an error
    (the checkpoint may have moved since training, or used a tokenizer of another kind)."""
    named = getattr(args, "tokenizer_model", None)
    none = "the export has no tokenizer: the checkpoint's args name "
    add = "; pass --tokenizer DIR to add one"
    if not named:
        kind = getattr(args, "tokenizer_type", None)
        return None, f"{none}no tokenizer folder (tokenizer_model None, tokenizer_type {kind!r}){add}"
    if not Path(named).is_dir():
        return None, (f"{none}tokenizer_model {named}, which is not a folder here (moved since training, "
                      f"or not a Hugging Face tokenizer folder){add}")
    check_outside_inputs(out, {"tokenizer_model (named in the checkpoint's args)": named})
    try:
        tok = _load_tokenizer(named)
    except Exception as e:  # noqa: BLE001 - transformers raises assorted errors for a folder it cannot load
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return None, f"{none}tokenizer_model {named}, which AutoTokenizer cannot load ({type(e).__name__}: {first}){add}"
    return tok, f"copied the tokenizer the checkpoint's args name: {named} (pass --tokenizer DIR for another)"


def special_token_ids(config, tok) -> None:
    """bos/eos/pad ids of ``tok`` into ``config``. A tokenizer without a pad token pads with
    EOS (the usual Hugging Face choice, as for GPT-2 and Llama): ``generate`` then needs no
    ``pad_token_id`` argument and gives no warning."""
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(tok, attr, None) is not None:
            setattr(config, attr, getattr(tok, attr))
    if config.pad_token_id is None:
        config.pad_token_id = config.eos_token_id


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
    notes: Optional[Callable[[str], None]] = None,
) -> str:
    """Convert; returns the HF architecture name written to ``config.json``.

    Every input is checked before the checkpoint is read: ``out`` must not be, contain or lie
    inside ``load`` or ``tokenizer``, may exist only with ``overwrite`` and then only as a folder
    mgn wrote (its ``.mgn-manifest.json`` lists every file in it); ``dtype``, ``max_shard_size``
    and ``tokenizer`` must be valid. With ``verify`` the checkpoint's files are checked against
    its integrity manifest, if it has one. Without ``tokenizer`` the export gets the tokenizer
    the checkpoint's args name, if that folder is there (:func:`checkpoint_tokenizer`, checked
    once the args are read, before anything is written), and ``notes`` (``mgn convert`` prints
    to stderr) is called, once the export is there, with one line saying which tokenizer it got.
    The export gets its own manifest."""
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
        try:
            tok = _load_tokenizer(tokenizer)
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"--tokenizer {tokenizer}: cannot be loaded ({type(e).__name__}: {e})") from None
    arch, args, tensors = read_checkpoint(load, verify=verify)
    note = None
    if not tokenizer:
        tok, note = checkpoint_tokenizer(args, out)
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
        special_token_ids(config, tok)
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
    if note and notes:  # once the export is there: a failed conversion says only why it failed
        notes(note)
    return name
