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
    """Raise ``ValueError`` for a setting whose suffix is not ``+sq`` or whose scheme is unknown."""
    from megatron_gatednorm.quant.fake_quant import SCHEMES

    if not settings:
        raise ValueError(f"--settings is empty: give one or more of {', '.join(SCHEMES)} (each optionally +sq)")
    for setting in settings:
        if setting.partition("+")[2] not in ("", "sq"):
            raise ValueError(f"invalid setting {setting!r}: valid forms are SCHEME or SCHEME+sq")
        if setting.partition("+")[0] not in SCHEMES:
            raise ValueError(f"invalid setting {setting!r}: unknown scheme; valid schemes: {', '.join(SCHEMES)}")


def window_nlls_per_setting(model, settings: Sequence[str], windows, calib, alpha: float = 0.5,
                      quantize_gates: bool = False, batch_size: int = 4) -> Dict[str, "torch.Tensor"]:
    """Per-window NLL sums (:func:`~megatron_gatednorm.analysis.hf_eval.window_nlls`) of ``model``
    (unquantized, key ``baseline``) and of a quantized copy per setting, on the same windows.
    SmoothQuant's factors depend only on the unquantized model: calibrated once, on ``calib``, for
    all ``+sq`` settings."""
    import copy

    from megatron_gatednorm.analysis.hf_eval import window_nlls
    from megatron_gatednorm.quant.fake_quant import block_linears, calibrate, quantize_model, smoothing_factors

    check_settings(settings)
    smooth = None
    if any(s.endswith("+sq") for s in settings):
        linears = block_linears(model)
        act_max, groups = calibrate(model, calib.split(batch_size), linears)
        smooth = smoothing_factors(act_max, groups, linears, alpha)
    results = {"baseline": window_nlls(model, windows, batch_size)}
    for setting in settings:
        scheme, _, extra = setting.partition("+")
        quantized = quantize_model(copy.deepcopy(model), scheme, smooth if extra else None, quantize_gates)
        results[setting] = window_nlls(quantized, windows, batch_size)
    return results


def evaluate_checkpoint(
    checkpoint: Path,
    data: Path,
    settings: List[str],
    seq_length: Optional[int] = None,
    num_sequences: int = 16,
    calib_sequences: int = 8,
    alpha: float = 0.5,
    quantize_gates: bool = False,
    batch_size: int = 4,
    json_path: Optional[Path] = None,
) -> dict:
    """:func:`window_nlls_per_setting` for a checkpoint (an HF folder, or a Megatron checkpoint converted
    on the fly) on the held-out dataset ``data`` (a .bin/.idx prefix): ``num_sequences`` evaluation
    windows of ``seq_length`` tokens, then ``calib_sequences`` calibration windows. ``seq_length``
    defaults to 256 clipped to the model's ``max_position_embeddings`` (a note on stderr when
    clipped); a longer one is refused.

    Returns (and writes to ``json_path`` when given) ``checkpoint``, ``perplexity`` and ``delta``
    (per setting, minus the unquantized perplexity), ``delta_interval`` (per setting, the 95%
    paired bootstrap interval of the delta over the evaluation windows,
    :func:`megatron_gatednorm.analysis.intervals.paired_bootstrap_delta`), ``window_nll`` (per
    setting, each window's NLL sum), ``seq_length``, ``num_sequences``, ``alpha`` and
    ``quantize_gates``."""
    from megatron_gatednorm.analysis import intervals
    from megatron_gatednorm.analysis.hf_eval import (check_token_ids, evaluation_seq_length, hf_folder, load_hf_model,
                                                     read_hf_config)
    from megatron_gatednorm.data.windows import open_indexed_dataset, token_windows
    from megatron_gatednorm.user_input import at_least, check_output_file

    # every input checked before the conversion and the data reads
    check_settings(settings)
    at_least(num_sequences, 1, "--num-sequences")
    at_least(calib_sequences, 1 if any(s.endswith("+sq") for s in settings) else 0, "--calib-sequences")
    at_least(batch_size, 1, "--batch-size")
    if seq_length is not None:
        at_least(seq_length, 2, "--seq-length")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"--alpha={alpha}: expected a number in [0, 1]")
    if json_path is not None:
        check_output_file(json_path, "--json", {"checkpoint": checkpoint, "--data": Path(str(data) + ".bin"),
                                                "--data index": Path(str(data) + ".idx")})
    open_indexed_dataset(data)
    with hf_folder(checkpoint) as folder:
        config = read_hf_config(folder)
        seq_length = evaluation_seq_length(config, seq_length, "quant")
        windows = token_windows(data, seq_length, num_sequences + calib_sequences)
        check_token_ids(windows, config, data)
        evaluation, calib = windows[:num_sequences], windows[num_sequences:]
        model = load_hf_model(folder)
        nlls = window_nlls_per_setting(model, settings, evaluation, calib, alpha, quantize_gates, batch_size)
    scored = seq_length - 1
    ppl = {k: intervals.perplexity(v, scored) for k, v in nlls.items()}
    base = ppl["baseline"]
    result = dict(checkpoint=str(checkpoint), perplexity=ppl, delta={k: v - base for k, v in ppl.items()},
                  delta_interval={k: intervals.paired_bootstrap_delta(nlls["baseline"], v, scored)
                                  for k, v in nlls.items() if k != "baseline"},
                  window_nll={k: [round(float(x), 6) for x in v] for k, v in nlls.items()},
                  seq_length=seq_length, num_sequences=num_sequences, alpha=alpha,
                  quantize_gates=quantize_gates)
    if json_path:
        from megatron_gatednorm.user_input import write_text_atomic

        write_text_atomic(json_path, json.dumps(result, indent=1))
    return result
