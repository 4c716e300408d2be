"""``mgn outliers``: residual/attention-sink analysis of a checkpoint on held-out text."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "Outlier analysis (residual sinks, massive activations, attention sinks, λ/λ1, gates) → JSON + PNG."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", type=Path, help="HF folder or Megatron checkpoint folder")
    p.add_argument("--data", required=True, type=Path, help="held-out .bin/.idx prefix (mgn data)")
    p.add_argument("--out", required=True, type=Path, help="folder for outliers.json and the figures")
    p.add_argument("--seq-length", type=int, default=256)
    p.add_argument("--num-sequences", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--top-k", type=int, default=8, help="residual-sink dimensions to report")
    p.add_argument("--title", default=None)


def run(args) -> int:
    from megatron_gatednorm.analysis.figures import write_figures
    from megatron_gatednorm.analysis.hf_eval import hf_folder, load_hf_model, outlier_statistics
    from megatron_gatednorm.data.windows import token_windows

    windows = token_windows(args.data, args.seq_length, args.num_sequences)
    with hf_folder(args.checkpoint) as folder:
        model = load_hf_model(folder)
        stats, report = outlier_statistics(model, windows, args.batch_size, args.top_k)
    title = args.title or args.checkpoint.name
    report.update(checkpoint=str(args.checkpoint), data=str(args.data), seq_length=args.seq_length)
    report["figures"] = write_figures(stats, report, args.out, title)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "outliers.json").write_text(json.dumps(report, indent=1))
    top = report["sink_dims"][0]
    print(f"{title}: peak |h| {report['peak_abs']:.1f}; top residual-sink dim {top['dim']} "
          f"(H_avg {top['h_avg']:.2f} = {top['ratio_to_median']:.1f}x median, persistence {top['persistence']:.2f})")
    if "first_token_attention" in report:
        att = report["first_token_attention"]
        print(f"first-token attention mass {att['mean']:.3f}, sink rate {att['sink_rate']:.2f}")
    print(f"wrote {args.out / 'outliers.json'} and {len(report['figures'])} figures")
    return 0
