"""The experiment's results: figures over seeds, differences from the baseline and their noise
(``results.md``, ``results.json``).

Each run (variant × seed) gives the figures of :data:`FIGURES`. Per variant the table shows
``mean ± sd`` over seeds (sample standard deviation). The two noise measures
(:mod:`megatron_gatednorm.analysis.intervals`):

* **seeds**: a variant minus the baseline, seed by seed (both trained with the same seed and data
  order), gives ``n`` paired differences; their 95% Student-t interval excluding 0 marks the
  difference as larger than the seed noise (needs ≥ 2 seeds);
* **held-out windows**: each run's W4A4 perplexity delta has a 95% paired bootstrap interval over
  the evaluation windows; the table counts the seeds whose interval excludes 0.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Dict, List, Tuple

from megatron_gatednorm.analysis import intervals
from megatron_gatednorm.experiment.sizes import ExperimentSize

QUANT_SETTINGS = ("nvfp4", "nvfp4+sq")

FIGURES: Dict[str, Tuple[str, str, Callable[[dict], float]]] = {
    "heldout_loss": ("held-out loss", ".4f", lambda r: r["train"]["heldout_loss"]),
    "peak_abs": ("peak abs(h)", ".1f", lambda r: r["outliers"]["peak_abs"]),
    "top_dim_ratio": ("top dim / median", ".2f", lambda r: r["outliers"]["sink_dims"][0]["ratio_to_median"]),
    "first_token_attention": ("first-token attn", ".3f",
                              lambda r: r["outliers"].get("first_token_attention", {}).get("mean", math.nan)),
    "ppl": ("ppl", ".2f", lambda r: r["quant"]["perplexity"]["baseline"]),
    "nvfp4": ("W4A4 dppl", "+.3f", lambda r: r["quant"]["delta"]["nvfp4"]),
    "nvfp4+sq": ("W4A4+SQ dppl", "+.3f", lambda r: r["quant"]["delta"]["nvfp4+sq"]),
}
"""Figure key → (column title, format, how to read it from one run's ``train``/``outliers``/``quant``)."""


def summarize(results: Dict[str, Dict[str, dict]]) -> dict:
    """From ``results[variant][seed]`` (``train``, ``outliers``, ``quant``): ``spread`` (per variant,
    per figure: :func:`~megatron_gatednorm.analysis.intervals.seed_spread`), ``window_noise`` (per
    variant, per quantization setting: seeds whose bootstrap interval excludes 0) and ``vs_baseline``
    (per other variant, per figure, with ≥ 2 common seeds: the mean paired difference, its 95%
    interval over seeds and whether that excludes 0)."""
    spread, window_noise, vs_baseline = {}, {}, {}
    for name, runs in results.items():
        spread[name] = {k: intervals.seed_spread([read(r) for r in runs.values()]) for k, (_, _, read) in FIGURES.items()}
        window_noise[name] = {s: sum(intervals.exceeds_noise(r["quant"]["delta_interval"][s]) for r in runs.values())
                              for s in QUANT_SETTINGS}
    base = results.get("baseline", {})
    for name, runs in results.items():
        seeds = [s for s in runs if s in base]
        if name == "baseline" or len(seeds) < 2:
            continue
        vs_baseline[name] = {}
        for key, (_, _, read) in FIGURES.items():
            diffs = [read(runs[s]) - read(base[s]) for s in seeds]
            interval = intervals.seed_interval(diffs)
            vs_baseline[name][key] = dict(mean=sum(diffs) / len(diffs), interval=interval,
                                          exceeds_noise=intervals.exceeds_noise(interval), n=len(diffs))
    return dict(spread=spread, window_noise=window_noise, vs_baseline=vs_baseline)


def _cell(spread: dict, fmt: str) -> str:
    if spread["n"] == 1:
        return format(spread["mean"], fmt)
    return f"{spread['mean']:{fmt}} ± {spread['std']:{fmt.lstrip('+')}}"


def results_table(size_name: str, size: ExperimentSize, results: Dict[str, Dict[str, dict]], summary: dict,
                  out: Path, wall_s: float) -> List[str]:
    """The lines of ``results.md``: the setup, one row per variant (figures over its seeds), the
    differences from the baseline with their seed noise (``summary``: :func:`summarize` of
    ``results``), where the figures are and the wall time."""
    seeds = sorted({int(s) for runs in results.values() for s in runs})
    seq, gbs, iters = size.seq_length, size.global_batch_size, size.train_iters
    lines = [
        f"# Small-scale reproduction ({size_name}: {size.num_layers} layers, hidden {size.hidden_size}, "
        f"{iters} iterations x {gbs} x {seq} tokens = {iters * gbs * seq:,} tokens, lr {size.lr:g}, "
        f"vocab {size.vocab_size}, seeds {', '.join(map(str, seeds))})",
        "",
        f"Held-out: {size.eval_windows} windows of {seq} tokens from works never trained on. Peak |h| and sinks: "
        "`mgn outliers`; perplexity deltas: `mgn quant` (NVFP4 W4A4, SmoothQuant alpha 0.5, 4 calibration windows). "
        f"Cells: mean ± sd over {len(seeds)} seed(s); (k/n) after a W4A4 delta: seeds whose 95% bootstrap "
        "interval over the held-out windows excludes 0.",
        "",
        "| variant | params | " + " | ".join(title for title, _, _ in FIGURES.values()) + " |",
        "|---|---|" + "---|" * len(FIGURES),
    ]
    for name, runs in results.items():
        params = next(iter(runs.values()))["train"]["params"]
        cells = []
        for key, (_, fmt, _) in FIGURES.items():
            cell = _cell(summary["spread"][name][key], fmt)
            if key in QUANT_SETTINGS:
                cell += f" ({summary['window_noise'][name][key]}/{len(runs)})"
            cells.append(cell)
        lines.append(f"| {name} | {params:,} | " + " | ".join(cells) + " |")
    if summary["vs_baseline"]:
        lines += [
            "",
            "Difference from the baseline, paired by seed: mean [95% interval over seeds]; **bold**: the "
            "interval excludes 0, the difference is larger than the seed noise.",
            "",
            "| variant | " + " | ".join(title for title, _, _ in FIGURES.values()) + " |",
            "|---|" + "---|" * len(FIGURES),
        ]
        for name, diffs in summary["vs_baseline"].items():
            cells = []
            for key, (_, fmt, _) in FIGURES.items():
                d, signed = diffs[key], "+" + fmt.lstrip("+")
                lo, hi = d["interval"]
                text = f"{d['mean']:{signed}} [{lo:{signed}}, {hi:{signed}}]"
                cells.append(f"**{text}**" if d["exceeds_noise"] else text)
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    elif len(seeds) < 2:
        lines += ["", "One seed: no seed noise to compare differences with (--seeds 3 gives it)."]
    paths = sorted({p for runs in results.values() for r in runs.values() for p in r["train"].get("norm_paths", [])})
    lines += ["", f"Plugin norms in training: {'; '.join(paths) or 'none recorded'}. Figures: "
              f"{Path(out) / 'reports'}/<variant>/seed<seed>/*.png. Wall time {wall_s:.0f} s."]
    return lines


def write_results(out: Path, lines: List[str], results: Dict[str, Dict[str, dict]], summary: dict) -> None:
    """``out/results.md`` (the table's ``lines``) and ``out/results.json`` (``runs``: ``results``;
    ``summary``: their :func:`summarize`)."""
    out = Path(out)
    (out / "results.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(dict(runs=results, summary=summary), indent=1, default=str))
