"""``mgn experiment``: the paper's comparison at small scale, end to end, on the PyPI corpus.

Trains baseline (RMSNorm + gated attention), +PreAffine, +GatedNorm, clip-100 (baseline with
the residual stream clamped to ±100) and vanilla (baseline without the attention output gate),
each with the size's seeds (``--seeds``), the same data order and token budget; converts each run
to Hugging Face (``hf/<variant>/seed<seed>``); runs the outlier analysis and the quantization
evaluation (NVFP4 W4A4 ± SmoothQuant) on the held-out works; writes ``results.md`` /
``results.json`` (mean ± sd over seeds, differences from the baseline with their noise) and the figures. The flags and the printing are here;
:func:`megatron_gatednorm.experiment.pipeline.run_experiment` does the work.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from megatron_gatednorm.commands.data import print_built
from megatron_gatednorm.commands.outliers import print_report
from megatron_gatednorm.commands.quant import print_result
from megatron_gatednorm.experiment.pipeline import Progress
from megatron_gatednorm.experiment.sizes import SIZES
from megatron_gatednorm.experiment.variants import VARIANTS

HELP = "Reproduce the paper's comparison at small scale (train 5 variants, outliers, W4A4) → results.md."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("runs/experiment"))
    p.add_argument("--size", choices=sorted(SIZES), default="default",
                   help="quick: < 1 min on 2 CPU cores, 1 seed; default: the sink search's strongest setting, "
                        "3 seeds, < 20 min; base: the previous default, 1 seed, ~15 min; gpu: for one GPU")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {','.join(VARIANTS)}")
    p.add_argument("--seed", type=int, default=1234, help="the first seed (default 1234)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per variant: --seed, --seed + 1, ... (default: the size's)")


class PrintProgress(Progress):
    """Prints each step's result as ``mgn data``, ``mgn outliers`` and ``mgn quant`` do."""

    def data_built(self, built) -> None:
        print_built(built)

    def outliers_written(self, run: str, report: dict, out: Path) -> None:
        print_report(report, run, out)

    def quant_evaluated(self, run: str, result: dict) -> None:
        print_result(result)


def run(args) -> int:
    from megatron_gatednorm.experiment.pipeline import run_experiment

    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    done = run_experiment(args.out, args.size, names, seed=args.seed, seeds=args.seeds, progress=PrintProgress())
    print("\n".join(done.table))
    return 0
