"""Low-bit robustness of a checkpoint: held-out perplexity unquantized and under fake W4A4/W8A8.

A setting is ``SCHEME`` (a key of :data:`~.fake_quant.SCHEMES`: nvfp4, int4, int8) or
``SCHEME+sq`` (SmoothQuant first, with factors calibrated on windows that are not evaluated).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

DEFAULT_SETTINGS = "nvfp4,nvfp4+sq,int4,int4+sq,int8"


def check_settings(settings: Sequence[str]) -> None:
    """Raise ``ValueError`` for a setting whose suffix is not ``+sq``."""
    for setting in settings:
        if setting.partition("+")[2] not in ("", "sq"):
            raise ValueError(f"invalid setting {setting!r}: valid forms are SCHEME or SCHEME+sq")


def evaluate_settings(model, settings: Sequence[str], windows, calib, alpha: float = 0.5,
                      quantize_gates: bool = False, batch_size: int = 4) -> Dict[str, float]:
    """Perplexity of ``model`` (unquantized, key ``baseline``) and of a quantized copy per setting.
    SmoothQuant's factors depend only on the unquantized model: calibrated once, on ``calib``, for
    all ``+sq`` settings."""
    import copy

    from megatron_gatednorm.analysis.hf_eval import perplexity
    from megatron_gatednorm.quant.fake_quant import block_linears, calibrate, quantize_model, smoothing_factors

    check_settings(settings)
    smooth = None
    if any(s.endswith("+sq") for s in settings):
        linears = block_linears(model)
        act_max, groups = calibrate(model, calib.split(batch_size), linears)
        smooth = smoothing_factors(act_max, groups, linears, alpha)
    results = {"baseline": perplexity(model, windows, batch_size)}
    for setting in settings:
        scheme, _, extra = setting.partition("+")
        quantized = quantize_model(copy.deepcopy(model), scheme, smooth if extra else None, quantize_gates)
        results[setting] = perplexity(quantized, windows, batch_size)
    return results


def evaluate_checkpoint(
    checkpoint: Path,
    data: Path,
    settings: List[str],
    seq_length: int = 256,
    num_sequences: int = 16,
    calib_sequences: int = 8,
    alpha: float = 0.5,
    quantize_gates: bool = False,
    batch_size: int = 4,
    json_path: Optional[Path] = None,
) -> dict:
    """:func:`evaluate_settings` for a checkpoint (an HF folder, or a Megatron checkpoint converted
    on the fly) on the held-out dataset ``data`` (a .bin/.idx prefix): ``num_sequences`` evaluation
    windows of ``seq_length`` tokens, then ``calib_sequences`` calibration windows.

    Returns (and writes to ``json_path`` when given) ``checkpoint``, ``perplexity`` and ``delta``
    (per setting, minus the unquantized perplexity), ``seq_length``, ``num_sequences``, ``alpha``
    and ``quantize_gates``."""
    from megatron_gatednorm.analysis.hf_eval import hf_folder, load_hf_model
    from megatron_gatednorm.data.windows import token_windows

    check_settings(settings)  # before the conversion and the data reads
    windows = token_windows(data, seq_length, num_sequences + calib_sequences)
    evaluation, calib = windows[:num_sequences], windows[num_sequences:]
    with hf_folder(checkpoint) as folder:
        model = load_hf_model(folder)
        ppl = evaluate_settings(model, settings, evaluation, calib, alpha, quantize_gates, batch_size)
    base = ppl["baseline"]
    result = dict(checkpoint=str(checkpoint), perplexity=ppl, delta={k: v - base for k, v in ppl.items()},
                  seq_length=seq_length, num_sequences=num_sequences, alpha=alpha,
                  quantize_gates=quantize_gates)
    if json_path:
        json_path = Path(json_path)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=1))
    return result
