"""Bad input to every ``mgn`` command and the library functions behind them: a ``ValueError``
naming the value and the valid choices (one line, exit 2 through ``mgn``), raised before any work."""

import pytest


def test_experiment_rejects_unknown_names_before_running(tmp_path, capsys):
    from megatron_gatednorm.cli import main
    from megatron_gatednorm.experiment.pipeline import run_experiment

    with pytest.raises(ValueError, match=r"invalid variant 'bogus'; valid choices: baseline, preaffine, gatednorm, clip100"):
        run_experiment(tmp_path / "a", "quick", ["baseline", "bogus"])
    with pytest.raises(ValueError, match=r"invalid size 'huge'; valid choices: quick, default, gpu"):
        run_experiment(tmp_path / "b", "huge", ["baseline"])
    assert main(["experiment", "--out", str(tmp_path / "c"), "--variants", "baseline,bogus"]) == 2
    err = capsys.readouterr().err
    assert err == "mgn experiment: error: invalid variant 'bogus'; valid choices: baseline, preaffine, gatednorm, clip100\n"
    assert not any(tmp_path.iterdir())  # nothing was built


def test_quant_rejects_a_bad_setting_before_reading_data(tmp_path):
    from megatron_gatednorm.quant.evaluate import evaluate_checkpoint

    with pytest.raises(ValueError, match=r"invalid setting 'nvfp4\+awq': valid forms are SCHEME or SCHEME\+sq"):
        evaluate_checkpoint(tmp_path / "missing", tmp_path / "missing_data", ["nvfp4", "nvfp4+awq"])


def test_data_rejects_heldout_without_input_and_a_missing_input(tmp_path):
    from megatron_gatednorm.data.build import build_datasets

    with pytest.raises(ValueError, match="--heldout needs --input"):
        build_datasets(tmp_path / "a", heldout=tmp_path / "h.txt")
    with pytest.raises(ValueError, match=r"input file .*nope.txt does not exist"):
        build_datasets(tmp_path / "b", input=tmp_path / "nope.txt")
    assert not any(tmp_path.iterdir())
