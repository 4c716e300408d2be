"""The experiment, end to end: data → train each variant → convert to HF → outliers → quant → results.

Trains each variant (see :mod:`.variants`) with each seed, the same data order and token
budget for all; converts each run to Hugging Face; analyses outliers and evaluates NVFP4 W4A4
± SmoothQuant on the held-out works; writes ``results.md`` / ``results.json`` (the figures over
seeds and the differences from the baseline with their noise, :mod:`.report`). Every number in
the table comes from this run. Layout of ``out``, ``<run>`` = ``<variant>/seed<seed>``:
``data/`` (built once, reused when ``data/data.json`` exists), ``runs/<run>`` (Megatron
checkpoints and logs), ``hf/<run>`` (with the data's tokenizer), ``reports/<run>/{outliers.json,quant.json,*.png}``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Union

if TYPE_CHECKING:
    from megatron_gatednorm.experiment.sizes import ExperimentSize


class Progress:
    """What :func:`run_experiment` reports as it goes (the trainer logs on its own). The methods
    do nothing here; ``mgn experiment`` prints what ``mgn data/outliers/quant`` would."""

    def data_built(self, built) -> None:
        """The data folder was built (a :class:`~megatron_gatednorm.data.build.BuiltData`)."""

    def outliers_written(self, run: str, report: dict, out: Path) -> None:
        """Run ``run``'s (``<variant>/seed<seed>``) outlier report was written to ``out``."""

    def quant_evaluated(self, run: str, result: dict) -> None:
        """Run ``run``'s quantization result (:func:`~megatron_gatednorm.quant.evaluate.evaluate_checkpoint`)."""


@dataclass(frozen=True)
class ExperimentResults:
    """What :func:`run_experiment` wrote."""

    results: Dict[str, Dict[str, dict]]
    """Per variant, per seed (a string): ``train`` (the trainer's summary), ``outliers`` (the
    report), ``quant`` (the result)."""
    table: List[str]
    """The lines of ``results.md``."""


@dataclass(frozen=True)
class VariantRun:
    """What :func:`train_and_analyse` made of one variant."""

    train: dict
    """The trainer's summary."""
    hf: Path
    """The Hugging Face folder it was converted to."""
    outliers: dict
    """The outlier report (:func:`~megatron_gatednorm.analysis.outlier_report.outlier_report`)."""
    reports: Path
    """The run's report folder (``outliers.json``, the figures)."""


def ensure_data(data: Path, spec, progress: Progress) -> int:
    """Build the data folder ``data`` for size ``spec`` unless ``data/data.json`` exists (what a
    killed build left is replaced: only mgn data's own files); returns the padded vocabulary."""
    from megatron_gatednorm.data.build import MANIFEST, build_datasets, read_manifest
    from megatron_gatednorm.parity import padded_vocab

    if not (Path(data) / MANIFEST).exists():
        progress.data_built(build_datasets(data, vocab_size=spec.vocab_size, max_works=spec.max_works, replace=True))
    return padded_vocab(read_manifest(data)["vocab_size"])


def run_name(variant: str, seed: int) -> str:
    """The folder of one training run below ``runs/``, ``hf/`` and ``reports/``."""
    return f"{variant}/seed{seed}"


def train_and_analyse(out: Path, spec, name: str, data: Path, seed: int,
                      progress: Optional[Progress] = None, shape_changes: Optional[dict] = None) -> VariantRun:
    """Train variant ``name`` (a key of :data:`~.variants.VARIANTS`; ``shape_changes``: model fields
    changed beyond it, see :func:`~.variants.parity_shape`) at size ``spec`` (an
    :class:`~.sizes.ExperimentSize`) on the data folder ``data`` with ``seed`` into
    ``out/runs/<run>`` (``<run>`` = :func:`run_name`), convert it to ``out/hf/<run>`` and write its
    outlier report on ``spec.eval_windows`` held-out windows to ``out/reports/<run>``."""
    from megatron_gatednorm.analysis.outlier_report import outlier_report
    from megatron_gatednorm.convert.to_hf import convert_to_hf
    from megatron_gatednorm.experiment.trainer_argv import trainer_argv
    from megatron_gatednorm.experiment.variants import VARIANTS, parity_shape
    from megatron_gatednorm.training.small_trainer import train

    progress = progress or Progress()
    out, data = Path(out), Path(data)
    padded = ensure_data(data, spec, progress)
    run = run_name(name, seed)
    run_dir = out / "runs" / run
    summary = train(trainer_argv(spec, parity_shape(spec, padded, name, shape_changes), data, run_dir, seed) + VARIANTS[name])
    report_dir = out / "reports" / run
    hf_dir = out / "hf" / run  # converted once, analysed by both tools
    convert_to_hf(run_dir, hf_dir, tokenizer=data / "tokenizer", dtype="fp32", overwrite=True, progress=False)
    outliers = outlier_report(hf_dir, data / "heldout_text_document", report_dir, seq_length=spec.seq_length,
                              num_sequences=spec.eval_windows, title=run)
    progress.outliers_written(run, outliers, report_dir)
    return VariantRun(train=summary, hf=hf_dir, outliers=outliers, reports=report_dir)


def _require_cuda(size_name: str) -> None:
    import torch

    if not torch.cuda.is_available():
        from megatron_gatednorm.experiment.sizes import SIZES

        cpu = ", ".join(n for n, s in SIZES.items() if not s.gpu)
        raise ValueError(f"--size {size_name} is meant for one GPU and this process sees no CUDA device; "
                         f"on CPU use --size {cpu}")


def run_experiment(out: Path, size: Union[str, "ExperimentSize"], variants: Sequence[str], seed: int = 1234,
                   seeds: Optional[int] = None, progress: Optional[Progress] = None) -> ExperimentResults:
    """Run the experiment at ``size`` (a key of :data:`~.sizes.SIZES`, or an
    :class:`~.sizes.ExperimentSize`: a smaller budget for tests) for ``variants`` (keys of
    :data:`~.variants.VARIANTS`), each with the ``seeds`` seeds ``seed, seed + 1, ...`` (default:
    the size's), in the folder ``out``. Unknown names and ``seeds < 1`` raise ``ValueError``
    before anything runs. ``progress`` hears of each step's result."""
    from megatron_gatednorm.experiment.report import results_table, summarize, write_results
    from megatron_gatednorm.experiment.sizes import experiment_size
    from megatron_gatednorm.experiment.variants import check_variants
    from megatron_gatednorm.quant.evaluate import evaluate_checkpoint
    from megatron_gatednorm.user_input import at_least, check_output_dir

    progress = progress or Progress()
    size_name, spec = (size, experiment_size(size)) if isinstance(size, str) else ("custom", size)
    check_variants(variants)
    seeds = at_least(spec.seeds if seeds is None else seeds, 1, "--seeds")
    if spec.gpu:
        _require_cuda(size_name)
    out = Path(out)
    check_output_dir(out, "--out")
    data = out / "data"
    t0 = time.time()
    ensure_data(data, spec, progress)
    results: Dict[str, Dict[str, dict]] = {name: {} for name in variants}
    for s in range(seed, seed + seeds):
        for name in variants:
            run = train_and_analyse(out, spec, name, data, s, progress)
            quant = evaluate_checkpoint(run.hf, data / "heldout_text_document", ["nvfp4", "nvfp4+sq"],
                                        seq_length=spec.seq_length, num_sequences=spec.eval_windows, calib_sequences=4,
                                        json_path=run.reports / "quant.json")
            progress.quant_evaluated(run_name(name, s), quant)
            results[name][str(s)] = dict(train=run.train, outliers=run.outliers, quant=quant)
    summary = summarize(results)
    table = results_table(size_name, spec, results, summary, out, time.time() - t0)
    write_results(out, table, results, summary)
    return ExperimentResults(results=results, table=table)
