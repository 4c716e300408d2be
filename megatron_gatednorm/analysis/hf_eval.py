"""Loading a checkpoint as a Hugging Face model, and what the analysis tools run on it:
perplexity over fixed windows and the outlier statistics of :mod:`.outliers`.

A Megatron checkpoint folder (it has ``latest_checkpointed_iteration.txt``, or is an iteration dir) is
converted to a temporary HF folder first (``mgn convert to-hf``), so both tools always analyse
the exported model — the artefact users evaluate and serve.
"""

from __future__ import annotations

import contextlib
import math
import sys
import tempfile
from pathlib import Path
from typing import Iterator, Optional

import torch

from megatron_gatednorm.analysis.outliers import OutlierStats, norm_parameter_extremes
from megatron_gatednorm.checkpoint import TRACKER
from megatron_gatednorm.ops import reference


def is_megatron_checkpoint(path) -> bool:
    p = Path(path)
    return any((p / name).exists() for name in (TRACKER, "common.pt", ".metadata"))


@contextlib.contextmanager
def hf_folder(path) -> Iterator[Path]:
    """``path`` itself for an HF folder; a temporary conversion for a Megatron checkpoint."""
    from megatron_gatednorm.user_input import existing_dir

    existing_dir(path, "checkpoint", "checkpoint folder")
    if not is_megatron_checkpoint(path):
        if not (Path(path) / "config.json").exists():
            raise ValueError(f"checkpoint {path}: neither a Hugging Face folder (config.json) nor a Megatron checkpoint")
        yield Path(path)
        return
    from megatron_gatednorm.convert.to_hf import convert_to_hf

    with tempfile.TemporaryDirectory(prefix="mgn-hf-") as tmp:
        out = Path(tmp) / "hf"
        convert_to_hf(path, out, dtype="fp32", progress=False)
        yield out


def read_hf_config(folder) -> dict:
    """``config.json`` of an HF folder; a ``ValueError`` naming it when it is missing or corrupted."""
    from megatron_gatednorm.user_input import read_json

    config = read_json(Path(folder) / "config.json", "checkpoint config")
    if not isinstance(config, dict):
        raise ValueError(f"checkpoint config {Path(folder) / 'config.json'}: expected a JSON object")
    return config


DEFAULT_SEQ_LENGTH = 256


def evaluation_seq_length(config: dict, seq_length: Optional[int], command: str) -> int:
    """The window length to evaluate with: ``seq_length`` if given (refused above the model's
    ``max_position_embeddings``), else :data:`DEFAULT_SEQ_LENGTH` clipped to the model's positions
    (with a one-line note on stderr when clipped)."""
    positions = config.get("max_position_embeddings")
    if seq_length is not None:
        if isinstance(positions, int) and seq_length > positions:
            raise ValueError(f"--seq-length={seq_length} is longer than the model's max_position_embeddings="
                             f"{positions}; use --seq-length {positions} or less")
        return seq_length
    if isinstance(positions, int) and positions < DEFAULT_SEQ_LENGTH:
        print(f"mgn {command}: note: --seq-length defaults to {positions}, the model's max_position_embeddings "
              f"(not {DEFAULT_SEQ_LENGTH})", file=sys.stderr)
        return positions
    return DEFAULT_SEQ_LENGTH


def check_token_ids(windows: torch.Tensor, config: dict, data) -> None:
    """Refuse data whose token ids do not fit the model's vocabulary (tokenized for another model)."""
    vocab = config.get("vocab_size")
    top = int(windows.max()) if windows.numel() else 0
    if isinstance(vocab, int) and top >= vocab:
        raise ValueError(f"--data {data}: token id {top} >= the model's vocab_size={vocab}; the data was tokenized "
                         "for another model: build it with this model's tokenizer (mgn data --tokenizer)")


def load_hf_model(folder, dtype=torch.float32, device: str = "cpu"):
    """The model of an HF folder, eager attention (so attention maps can be returned)."""
    import megatron_gatednorm.hf  # noqa: F401  (registers the GatedNorm architecture)
    from transformers import AutoModelForCausalLM

    read_hf_config(folder)  # a corrupted config.json is named, not a transformers traceback
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(folder), dtype=dtype, attn_implementation="eager", trust_remote_code=False,
        )
    except Exception as e:  # noqa: BLE001  (the folder's files: missing, truncated, corrupted weights)
        if type(e).__name__ not in ("OSError", "SafetensorError", "ValueError", "EnvironmentError", "KeyError",
                                    "HeaderTooLarge", "JSONDecodeError", "UnicodeDecodeError", "RuntimeError"):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(f"checkpoint {folder}: cannot load the model ({type(e).__name__}: {first}); its files are "
                         "missing, truncated or corrupted: convert or download it again") from None
    return model.to(device).eval()


@torch.no_grad()
def window_nlls(model, windows: torch.Tensor, batch_size: int = 4) -> torch.Tensor:
    """Per window, the summed next-token NLL of its ``len - 1`` scored tokens (float64, ``[n]``;
    each window scored independently)."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(windows), batch_size):
        batch = windows[i : i + batch_size].to(device)
        logits = model(input_ids=batch).logits.float()
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="none"
        )
        out.append(nll.double().view(batch.shape[0], -1).sum(dim=1).cpu())
    return torch.cat(out)


def _gate_of(module, x: torch.Tensor) -> torch.Tensor:
    """The gate a GatedNorm-family module applies to input ``x`` (recomputed from its weights)."""
    zc = getattr(module, "zero_centered_gamma", False)
    if getattr(module, "dyt", False):
        y = reference.dyt(x.float(), module.alpha, module.weight, module.bias, zc)
    else:
        y = reference.rms_norm(x.float(), module.weight, module.eps, zc, pre_scale=getattr(module, "pre_scale", None))
    return reference.low_rank_gate(y, module.gate_down, module.gate_up, module.gate_activation)


@torch.no_grad()
def outlier_statistics(model, windows: torch.Tensor, batch_size: int = 4, top_k: int = 8):
    """Run the windows through ``model``; returns (OutlierStats, report dict)."""
    stats = OutlierStats(top_k=top_k)
    handles = []
    for name, module in model.named_modules():
        if getattr(module, "gated", False) and hasattr(module, "gate_down"):
            handles.append(module.register_forward_hook(
                lambda m, inputs, out, name=name: stats.add_gate(name, _gate_of(m, inputs[0]))
            ))
    # Residual states H_0..H_D from hooks (embeddings, every decoder layer): transformers'
    # hidden_states end with the final-norm output instead of H_D.
    states = []
    record = lambda m, inputs, out: states.append(out[0] if isinstance(out, tuple) else out)  # noqa: E731
    decoder = model.model
    handles.append(decoder.embed_tokens.register_forward_hook(record))
    handles += [layer.register_forward_hook(record) for layer in decoder.layers]
    device = next(model.parameters()).device
    try:
        for i in range(0, len(windows), batch_size):
            states.clear()
            out = model(input_ids=windows[i : i + batch_size].to(device), output_attentions=True)
            stats.add_hidden_states(states)
            if out.attentions is not None:
                stats.add_attentions(out.attentions)
    finally:
        for h in handles:
            h.remove()
    return stats, stats.report(norm_parameter_extremes(model))
