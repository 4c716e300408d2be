"""``mgn quant``: held-out perplexity of a checkpoint in BF16/FP32 and under fake W4A4/W8A8."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "Low-bit robustness: perplexity under NVFP4 W4A4 / INT4 / INT8 fake quantization, ± SmoothQuant."
DEFAULT_SETTINGS = "nvfp4,nvfp4+sq,int4,int4+sq,int8"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", type=Path, help="HF folder or Megatron checkpoint folder")
    p.add_argument("--data", required=True, type=Path, help="held-out .bin/.idx prefix (mgn data)")
    p.add_argument("--settings", default=DEFAULT_SETTINGS,
                   help="comma-separated schemes (nvfp4, int4, int8), '+sq' adds SmoothQuant")
    p.add_argument("--seq-length", type=int, default=256)
    p.add_argument("--num-sequences", type=int, default=16, help="evaluation windows")
    p.add_argument("--calib-sequences", type=int, default=8,
                   help="SmoothQuant calibration windows (taken after the evaluation windows)")
    p.add_argument("--alpha", type=float, default=0.5, help="SmoothQuant migration strength")
    p.add_argument("--quantize-gates", action="store_true", help="also quantize GatedNorm's W_down/W_up")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--json", type=Path, default=None, help="write the results here")


def _check_settings(settings) -> None:
    for setting in settings:
        if setting.partition("+")[2] not in ("", "sq"):
            raise ValueError(f"invalid setting {setting!r}: valid forms are SCHEME or SCHEME+sq")


def evaluate_settings(model, settings, windows, calib, alpha=0.5, quantize_gates=False, batch_size=4) -> dict:
    """Perplexity of ``model`` (unquantized) and of a quantized copy per setting. SmoothQuant's
    factors depend only on the unquantized model: calibrated once for all ``+sq`` settings."""
    import copy

    from megatron_gatednorm.analysis.hf_eval import perplexity
    from megatron_gatednorm.quant.fake_quant import block_linears, calibrate, quantize_model, smoothing_factors

    _check_settings(settings)
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


def run(args) -> int:
    from megatron_gatednorm.analysis.hf_eval import hf_folder, load_hf_model
    from megatron_gatednorm.data.windows import token_windows

    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    _check_settings(settings)  # before the conversion and the data reads
    windows = token_windows(args.data, args.seq_length, args.num_sequences + args.calib_sequences)
    evaluation, calib = windows[: args.num_sequences], windows[args.num_sequences :]
    with hf_folder(args.checkpoint) as folder:
        model = load_hf_model(folder)
        ppl = evaluate_settings(model, settings, evaluation, calib, args.alpha, args.quantize_gates, args.batch_size)
    base = ppl["baseline"]
    print(f"{'setting':<12}{'perplexity':>12}{'delta':>10}")
    for name, value in ppl.items():
        print(f"{name:<12}{value:>12.3f}{value - base:>+10.3f}")
    result = dict(checkpoint=str(args.checkpoint), perplexity=ppl, delta={k: v - base for k, v in ppl.items()},
                  seq_length=args.seq_length, num_sequences=args.num_sequences, alpha=args.alpha,
                  quantize_gates=args.quantize_gates)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return 0
