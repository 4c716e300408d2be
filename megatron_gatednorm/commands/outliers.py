"""``mgn outliers``: residual/attention-sink analysis of a checkpoint on held-out text.

The flags and the printed summary; :func:`megatron_gatednorm.analysis.outlier_report.outlier_report`
does the work."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "Outlier analysis (residual sinks, massive activations, attention sinks, λ/λ1, gates) → JSON + PNG."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", type=Path, help="HF folder or Megatron checkpoint folder")
    p.add_argument("--data", required=True, type=Path, help="held-out .bin/.idx prefix (mgn data)")
    p.add_argument("--out", required=True, type=Path, help="folder for outliers.json and the figures")
    p.add_argument("--seq-length", type=int, default=None,
                   help="window length (default: 256, or the model's max_position_embeddings if shorter; "
                        "longer than the model's positions is refused)")
    p.add_argument("--num-sequences", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--top-k", type=int, default=8, help="residual-sink dimensions to report")
    p.add_argument("--title", default=None)


def print_report(report: dict, title: str, out: Path) -> None:
    """The summary ``mgn outliers`` prints for a report written to ``out``."""
    top = report["sink_dims"][0]
    print(f"{title}: peak |h| {report['peak_abs']:.1f}; top residual-sink dim {top['dim']} "
          f"(H_avg {top['h_avg']:.2f} = {top['ratio_to_median']:.1f}x median, persistence {top['persistence']:.2f})")
    if "first_token_attention" in report:
        att = report["first_token_attention"]
        print(f"first-token attention mass {att['mean']:.3f}, sink rate {att['sink_rate']:.2f}")
    print(f"wrote {out / 'outliers.json'} and {len(report['figures'])} figures")


def run(args) -> int:
    from megatron_gatednorm.analysis.outlier_report import outlier_report

    title = args.title or args.checkpoint.name
    report = outlier_report(
        args.checkpoint, args.data, args.out, seq_length=args.seq_length, num_sequences=args.num_sequences,
        batch_size=args.batch_size, top_k=args.top_k, title=title,
    )
    print_report(report, title, args.out)
    return 0
