"""mgn experiment end to end at the default size's model and schedule with a smaller budget: two
variants x two seeds, the table's spread and differences against the per-run figures."""

import dataclasses
import json

import pytest

pytestmark = [pytest.mark.slow]

pytest.importorskip("transformers")
pytest.importorskip("matplotlib")


def test_default_size_two_seeds(tmp_path):
    from megatron_gatednorm.analysis.intervals import seed_interval
    from megatron_gatednorm.experiment.pipeline import run_experiment
    from megatron_gatednorm.experiment.report import FIGURES
    from megatron_gatednorm.experiment.sizes import SIZES

    size = dataclasses.replace(SIZES["default"], train_iters=3, eval_windows=4, max_works=3, seeds=2)
    done = run_experiment(tmp_path, size, ["baseline", "gatednorm"], seed=7)

    saved = json.loads((tmp_path / "results.json").read_text())
    runs, summary = saved["runs"], saved["summary"]
    assert set(runs) == {"baseline", "gatednorm"} and all(set(r) == {"7", "8"} for r in runs.values())
    for variant in runs:
        for seed in ("7", "8"):
            assert (tmp_path / "hf" / variant / f"seed{seed}" / "tokenizer.json").exists()
            assert (tmp_path / "reports" / variant / f"seed{seed}" / "quant.json").exists()
        losses = [runs[variant][s]["train"]["heldout_loss"] for s in ("7", "8")]
        assert losses[0] != losses[1]  # the seed changed the run
        assert summary["spread"][variant]["heldout_loss"]["mean"] == pytest.approx(sum(losses) / 2)
    diffs = [runs["gatednorm"][s]["train"]["heldout_loss"] - runs["baseline"][s]["train"]["heldout_loss"] for s in ("7", "8")]
    d = summary["vs_baseline"]["gatednorm"]["heldout_loss"]
    assert d["mean"] == pytest.approx(sum(diffs) / 2) and d["interval"] == pytest.approx(list(seed_interval(diffs)))
    assert d["exceeds_noise"] == (d["interval"][0] > 0 or d["interval"][1] < 0)
    assert set(summary["vs_baseline"]) == {"gatednorm"} and set(summary["vs_baseline"]["gatednorm"]) == set(FIGURES)

    table = (tmp_path / "results.md").read_text().splitlines()
    assert table == done.table
    assert "seeds 7, 8" in table[0] and "lr 0.01" in table[0] and "vocab 512" in table[0]
    rows = [line for line in table if line.startswith("| gatednorm |")]
    assert len(rows) == 2  # the figures row and the difference row
    assert rows[0].count(" ± ") == len(FIGURES) and rows[0].count("/2)") == 2
    assert f"{d['mean']:+.4f} [{d['interval'][0]:+.4f}, {d['interval'][1]:+.4f}]" in rows[1]
    # which path the norms took is recorded per run and said in the table (CPU: the eager reference)
    paths = runs["gatednorm"]["7"]["train"]["norm_paths"]
    assert paths and all(p.startswith("eager") for p in paths) and "Plugin norms in training: " in table[-1]
    assert paths[0] in table[-1]
