"""The outlier report of a checkpoint on held-out text: ``outliers.json`` and its figures.

What it contains is :func:`~.hf_eval.outlier_statistics`' report (residual sinks, massive
activations, attention sinks, λ/λ1, gates, norm parameters) plus ``checkpoint``, ``data``,
``seq_length`` and ``figures`` (the PNG paths of :func:`~.figures.write_figures`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

REPORT = "outliers.json"


def outlier_report(
    checkpoint: Path,
    data: Path,
    out: Path,
    seq_length: int = 256,
    num_sequences: int = 16,
    batch_size: int = 4,
    top_k: int = 8,
    title: Optional[str] = None,
) -> dict:
    """Analyse ``checkpoint`` (an HF folder, or a Megatron checkpoint converted on the fly) on
    ``num_sequences`` windows of ``seq_length`` tokens of ``data`` (a .bin/.idx prefix), reporting
    the ``top_k`` residual-sink dimensions; writes ``out/outliers.json`` and the figures (titled
    ``title``, default: the checkpoint folder's name) and returns the report."""
    from megatron_gatednorm.analysis.figures import write_figures
    from megatron_gatednorm.analysis.hf_eval import hf_folder, load_hf_model, outlier_statistics
    from megatron_gatednorm.data.windows import token_windows

    checkpoint, out = Path(checkpoint), Path(out)
    windows = token_windows(data, seq_length, num_sequences)
    with hf_folder(checkpoint) as folder:
        model = load_hf_model(folder)
        stats, report = outlier_statistics(model, windows, batch_size, top_k)
    report.update(checkpoint=str(checkpoint), data=str(data), seq_length=seq_length)
    report["figures"] = write_figures(stats, report, out, title or checkpoint.name)
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT).write_text(json.dumps(report, indent=1))
    return report
