"""The experiment, end to end: data → train each variant → convert to HF → outliers → quant → results.

Trains each variant (see :mod:`.variants`) with the same seed, data order and token budget;
converts each to Hugging Face (``hf/<variant>``); analyses outliers and evaluates NVFP4 W4A4
± SmoothQuant on the held-out works (``reports/<variant>/``); writes ``results.md`` /
``results.json``. Every number in the table comes from this run. Layout of ``out``:
``data/`` (built once, reused when ``data/data.json`` exists), ``runs/<variant>`` (Megatron
checkpoints and logs), ``hf/<variant>`` (with the data's tokenizer), ``reports/<variant>/{outliers.json,quant.json,*.png}``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence


class Progress:
    """What :func:`run_experiment` reports as it goes (the trainer logs on its own). The methods
    do nothing here; ``mgn experiment`` prints what ``mgn data/outliers/quant`` would."""

    def data_built(self, built) -> None:
        """The data folder was built (a :class:`~megatron_gatednorm.data.build.BuiltData`)."""

    def outliers_written(self, variant: str, report: dict, out: Path) -> None:
        """``variant``'s outlier report was written to ``out``."""

    def quant_evaluated(self, variant: str, result: dict) -> None:
        """``variant``'s quantization result (:func:`~megatron_gatednorm.quant.evaluate.evaluate_checkpoint`)."""


@dataclass(frozen=True)
class ExperimentResults:
    """What :func:`run_experiment` wrote."""

    results: Dict[str, dict]
    """Per variant: ``train`` (the trainer's summary), ``outliers`` (the report), ``quant`` (the result)."""
    table: List[str]
    """The lines of ``results.md``."""


def run_experiment(out: Path, size: str, variants: Sequence[str], seed: int = 1234,
                   progress: Optional[Progress] = None) -> ExperimentResults:
    """Run the experiment at ``size`` (a key of :data:`~.sizes.SIZES`) for ``variants`` (keys of
    :data:`~.variants.VARIANTS`) with ``seed``, in the folder ``out``. Unknown names raise
    ``ValueError`` before anything runs. ``progress`` hears of each step's result."""
    from megatron_gatednorm.analysis.outlier_report import outlier_report
    from megatron_gatednorm.convert.to_hf import convert_to_hf
    from megatron_gatednorm.data.build import MANIFEST, build_datasets, read_manifest
    from megatron_gatednorm.experiment.report import results_table, write_results
    from megatron_gatednorm.experiment.sizes import experiment_size
    from megatron_gatednorm.experiment.trainer_argv import trainer_argv
    from megatron_gatednorm.experiment.variants import VARIANTS, check_variants, parity_shape
    from megatron_gatednorm.parity import padded_vocab
    from megatron_gatednorm.quant.evaluate import evaluate_checkpoint
    from megatron_gatednorm.training.small_trainer import train
    from megatron_gatednorm.user_input import check_output_dir

    progress = progress or Progress()
    spec = experiment_size(size)
    check_variants(variants)
    out = Path(out)
    check_output_dir(out, "--out")
    data = out / "data"
    t0 = time.time()
    if not (data / MANIFEST).exists():
        # no data.json: nothing there, or what a killed build left (replaced: only mgn data's own files)
        progress.data_built(build_datasets(data, vocab_size=spec.vocab_size, max_works=spec.max_works, replace=True))
    results = {}
    padded = padded_vocab(read_manifest(data)["vocab_size"])
    for name in variants:
        run_dir = out / "runs" / name
        shape = parity_shape(spec, padded, VARIANTS[name])
        summary = train(trainer_argv(spec, shape, data, run_dir, seed) + VARIANTS[name])
        report_dir = out / "reports" / name
        hf_dir = out / "hf" / name  # converted once, analysed by both tools
        convert_to_hf(run_dir, hf_dir, tokenizer=data / "tokenizer", dtype="fp32", overwrite=True, progress=False)
        heldout = data / "heldout_text_document"
        outliers = outlier_report(hf_dir, heldout, report_dir, seq_length=spec.seq_length,
                                  num_sequences=spec.eval_windows, title=name)
        progress.outliers_written(name, outliers, report_dir)
        quant = evaluate_checkpoint(hf_dir, heldout, ["nvfp4", "nvfp4+sq"], seq_length=spec.seq_length,
                                    num_sequences=spec.eval_windows, calib_sequences=4,
                                    json_path=report_dir / "quant.json")
        progress.quant_evaluated(name, quant)
        results[name] = dict(train=summary, outliers=outliers, quant=quant)
    table = results_table(size, spec, seed, results, out, time.time() - t0)
    write_results(out, table, results)
    return ExperimentResults(results=results, table=table)
