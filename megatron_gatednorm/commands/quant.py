"""``mgn quant``: held-out perplexity of a checkpoint in BF16/FP32 and under fake W4A4/W8A8.

The flags and the printed table; :func:`megatron_gatednorm.quant.evaluate.evaluate_checkpoint`
does the work."""

from __future__ import annotations

import argparse
from pathlib import Path

from megatron_gatednorm.quant.evaluate import DEFAULT_SETTINGS

HELP = "Low-bit robustness: perplexity under NVFP4 W4A4 / INT4 / INT8 fake quantization, ± SmoothQuant."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", type=Path, help="HF folder or Megatron checkpoint folder")
    p.add_argument("--data", required=True, type=Path, help="held-out .bin/.idx prefix (mgn data)")
    p.add_argument("--settings", default=DEFAULT_SETTINGS,
                   help="comma-separated schemes (nvfp4, int4, int8), '+sq' adds SmoothQuant")
    p.add_argument("--seq-length", type=int, default=None,
                   help="window length (default: 256, or the model's max_position_embeddings if shorter; "
                        "longer than the model's positions is refused)")
    p.add_argument("--num-sequences", type=int, default=16, help="evaluation windows")
    p.add_argument("--calib-sequences", type=int, default=8,
                   help="SmoothQuant calibration windows (taken after the evaluation windows)")
    p.add_argument("--alpha", type=float, default=0.5, help="SmoothQuant migration strength")
    p.add_argument("--quantize-gates", action="store_true", help="also quantize GatedNorm's W_down/W_up")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--json", type=Path, default=None, help="write the results here")


def print_result(result: dict) -> None:
    """The table ``mgn quant`` prints for an :func:`~megatron_gatednorm.quant.evaluate.evaluate_checkpoint` result."""
    ppl, intervals = result["perplexity"], result["delta_interval"]
    base = ppl["baseline"]
    print(f"{'setting':<12}{'perplexity':>12}{'delta':>10}  95% interval (bootstrap over {result['num_sequences']} windows)")
    for name, value in ppl.items():
        lo, hi = intervals.get(name, (0.0, 0.0))
        interval = f"[{lo:+.3f}, {hi:+.3f}]" if name in intervals else ""
        print(f"{name:<12}{value:>12.3f}{value - base:>+10.3f}  {interval}")


def run(args) -> int:
    from megatron_gatednorm.quant.evaluate import evaluate_checkpoint

    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    print_result(evaluate_checkpoint(
        args.checkpoint, args.data, settings, seq_length=args.seq_length, num_sequences=args.num_sequences,
        calib_sequences=args.calib_sequences, alpha=args.alpha, quantize_gates=args.quantize_gates,
        batch_size=args.batch_size, json_path=args.json,
    ))
    return 0
