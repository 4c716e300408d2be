"""``commands/`` holds argument parsing and printing only: the library never imports the CLI,
no command calls ``cli.main``, ``mgn --help`` stays free of torch, and the library functions the
commands call reject bad values with ``ValueError`` before doing any work."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "megatron_gatednorm"


def _imported_modules(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def _is_cli(module: str) -> bool:
    return module == "megatron_gatednorm.cli" or module.startswith("megatron_gatednorm.commands")


def test_library_never_imports_the_cli():
    bad = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "commands" or rel == Path("cli.py"):
            continue
        bad += [f"{rel}: {m}" for m in _imported_modules(path) if _is_cli(m)]
    assert not bad


def test_no_command_calls_cli_main():
    bad = [f"{p.name}: {m}" for p in (PACKAGE / "commands").glob("*.py") for m in _imported_modules(p)
           if m.startswith("megatron_gatednorm.cli")]
    assert not bad


def test_building_the_parser_imports_no_torch():
    code = (
        "import sys; from megatron_gatednorm.cli import build_parser; build_parser(); "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'megatron', 'transformers', 'numpy')); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PACKAGE.parent)


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
