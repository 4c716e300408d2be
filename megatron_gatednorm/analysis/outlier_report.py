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
    seq_length: Optional[int] = None,
    num_sequences: int = 16,
    batch_size: int = 4,
    top_k: int = 8,
    title: Optional[str] = None,
) -> dict:
    """Analyse ``checkpoint`` (an HF folder, or a Megatron checkpoint converted on the fly) on
    ``num_sequences`` windows of ``seq_length`` tokens of ``data`` (a .bin/.idx prefix), reporting
    the ``top_k`` residual-sink dimensions; writes ``out/outliers.json`` and the figures (titled
    ``title``, default: the checkpoint folder's name) and returns the report. ``seq_length``
    defaults to 256 clipped to the model's ``max_position_embeddings`` (a note on stderr when
    clipped); a longer one is refused.

    The files are written in a temporary sibling of ``out`` and moved in at the end,
    ``outliers.json`` last: a killed run leaves nothing partial under ``out``."""
    from megatron_gatednorm.analysis.figures import write_figures
    from megatron_gatednorm.analysis.hf_eval import (check_token_ids, evaluation_seq_length, hf_folder, load_hf_model,
                                                     outlier_statistics, read_hf_config)
    from megatron_gatednorm.checkpoint.atomic_dir import files_into
    from megatron_gatednorm.data.windows import open_indexed_dataset, token_windows
    from megatron_gatednorm.user_input import at_least, check_output_dir

    checkpoint, out = Path(checkpoint), Path(out)
    at_least(num_sequences, 1, "--num-sequences")
    at_least(batch_size, 1, "--batch-size")
    at_least(top_k, 1, "--top-k")
    if seq_length is not None:
        at_least(seq_length, 2, "--seq-length")
    check_output_dir(out, "--out", {"checkpoint": checkpoint, "--data": Path(data).parent}, contains=False)
    open_indexed_dataset(data)
    with hf_folder(checkpoint) as folder:
        config = read_hf_config(folder)
        seq_length = evaluation_seq_length(config, seq_length, "outliers")
        windows = token_windows(data, seq_length, num_sequences)
        check_token_ids(windows, config, data)
        model = load_hf_model(folder)
        stats, report = outlier_statistics(model, windows, batch_size, top_k)
    report.update(checkpoint=str(checkpoint), data=str(data), seq_length=seq_length)
    with files_into(out, last=REPORT) as tmp:
        figures = write_figures(stats, report, tmp, title or checkpoint.name)
        report["figures"] = [str(out / Path(f).name) for f in figures]
        (tmp / REPORT).write_text(json.dumps(report, indent=1))
    return report
