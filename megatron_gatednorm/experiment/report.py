"""The experiment's results table (``results.md``) and ``results.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

from megatron_gatednorm.experiment.sizes import ExperimentSize


def result_row(name: str, train: dict, outliers: dict, quant: dict) -> str:
    """One variant's markdown row: from the trainer's summary, the outlier report and the quantization result."""
    d = quant["delta"]
    return (f"| {name} | {train['params']:,} | {train['heldout_loss']:.4f} | {outliers['peak_abs']:.1f} | "
            f"{outliers['sink_dims'][0]['dim']} ({outliers['sink_dims'][0]['ratio_to_median']:.1f}x) | "
            f"{outliers.get('first_token_attention', {}).get('mean', float('nan')):.3f} | "
            f"{quant['perplexity']['baseline']:.2f} | {d['nvfp4']:+.2f} | {d['nvfp4+sq']:+.2f} |")


def results_table(size_name: str, size: ExperimentSize, seed: int, results: Dict[str, dict], out: Path,
                  wall_s: float) -> List[str]:
    """The lines of ``results.md``: the setup, one row per variant (``results[name]`` has ``train``,
    ``outliers`` and ``quant``), where the figures are and the wall time."""
    seq, gbs, iters = size.seq_length, size.global_batch_size, size.train_iters
    lines = [
        f"# Small-scale reproduction ({size_name}: {size.num_layers} layers, hidden {size.hidden_size}, "
        f"{iters} iterations x {gbs} x {seq} tokens = {iters * gbs * seq:,} tokens, vocab {size.vocab_size}, seed {seed})",
        "",
        f"Held-out: {size.eval_windows} windows of {seq} tokens from works never trained on. Peak |h| and sinks: "
        "`mgn outliers`; perplexity deltas: `mgn quant` (NVFP4 W4A4, SmoothQuant alpha 0.5, 4 calibration windows).",
        "",
        "| variant | params | held-out loss | peak abs(h) | top sink dim (x median) | first-token attn | ppl | W4A4 dppl | W4A4+SQ dppl |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [result_row(n, r["train"], r["outliers"], r["quant"]) for n, r in results.items()]
    lines += ["", f"Figures: {Path(out) / 'reports'}/<variant>/*.png. Wall time {wall_s:.0f} s."]
    return lines


def write_results(out: Path, lines: List[str], results: Dict[str, dict]) -> None:
    """``out/results.md`` (the table's ``lines``) and ``out/results.json`` (``results``)."""
    out = Path(out)
    (out / "results.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
