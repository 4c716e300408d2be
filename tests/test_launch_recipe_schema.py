"""Typed recipes: launch/slurm dataclasses, megatron keys against Megatron's flags (shipped list),
value types/ranges/choices, duplicate keys and malformed YAML — each one line naming the file."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_gatednorm.launch.megatron_flags import FLAGS_FILE, format_flags, parse_flags, shipped_flags
from megatron_gatednorm.launch.recipes import LaunchSection, SlurmSection, load_recipe, section_defaults

ROOT = Path(__file__).resolve().parents[1]
MCORE019 = ROOT / ".venv-mcore019" / "bin" / "python"
if not MCORE019.exists():
    MCORE019 = Path("/work/main/.venv-mcore019/bin/python")


def _recipe(tmp_path, text, name="r.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _error(spec, overrides=(), nodes=1):
    with pytest.raises(ValueError) as e:
        load_recipe(str(spec), list(overrides), nodes=nodes)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_sections_are_dataclasses_with_documented_fields():
    src = (ROOT / "megatron_gatednorm" / "launch" / "recipes.py").read_text()
    for cls in (LaunchSection, SlurmSection):
        for f in dataclasses.fields(cls):
            assert f'    {f.name}: ' in src
            after = src.split(f"\n    {f.name}: ", 1)[1].split("\n", 2)[1]
            assert after.strip().startswith('"""'), f"{cls.__name__}.{f.name} has no docstring"
    assert section_defaults(LaunchSection)["gpus_per_node"] == 8 and section_defaults(SlurmSection)["extra"] == []
    assert load_recipe("tiny").launch == {**section_defaults(LaunchSection), "parameter_parity": False}


@pytest.mark.parametrize("text, expected", [
    ("base: tiny\nmegatron:\n  num_layer: 4\n", "invalid megatron.num_layer: not a Megatron-LM flag (in {path}); "
                                                 "did you mean num_layers"),
    ("base: tiny\nmegatron:\n  hidden_size: 64.5\n", "invalid megatron.hidden_size=64.5: expected int; valid: an "
                                                      "integer >= 1 (in {path})"),
    ("base: tiny\nmegatron:\n  lr: fast\n", "invalid megatron.lr='fast': expected float; valid: a number >= 0 (in {path})"),
    ("base: tiny\nmegatron:\n  num_attention_heads: 0\n", "invalid megatron.num_attention_heads=0: must be >= 1 (in {path})"),
    ("base: tiny\nmegatron:\n  train_iters: -3\n", "invalid megatron.train_iters=-3: must be >= 1 (in {path})"),
    ("base: tiny\nmegatron:\n  num_layers: 0\n", "invalid megatron.num_layers=0: must be >= 1 (in {path})"),
    ("base: tiny\nmegatron:\n  ckpt_format: zip\n", "invalid megatron.ckpt_format='zip'; valid: torch, torch_dist"),
    ("base: tiny\nmegatron:\n  bf16: 1\n", "invalid megatron.bf16=1: expected a switch; valid: true or false"),
    ("base: tiny\nlaunch:\n  gpus_per_node: fast\n", "invalid launch.gpus_per_node='fast': expected an integer; "
                                                     "valid: an integer >= 1 (in {path})"),
    ("base: tiny\nlaunch:\n  device: tpu\n", "invalid launch.device='tpu'; valid: cuda, cpu (in {path})"),
    ("base: tiny\nlaunch:\n  launcher: mpirun\n", "invalid launch.launcher='mpirun'; valid: srun, torchrun (in {path})"),
    ("base: tiny\nslurm:\n  time: 4:00:00\n", "invalid slurm.time=14400: expected a string"),  # YAML 1.1 base 60
    ("base: tiny\nslurm:\n  extra: --exclude=n1\n", "invalid slurm.extra='--exclude=n1': expected a list of a string"),
    ("base: tiny\nlayouts:\n  1: {tensor_model_paralel_size: 1}\n", ".tensor_model_paralel_size: not a Megatron-LM "
                                                                      "flag (in {path}); did you mean"),
    ("base: tiny\nenv:\n  NCCL DEBUG: INFO\n", "invalid env.NCCL DEBUG: not an environment variable name (in {path})"),
    ("base: tiny\nmegatron: [1, 2]\n", "invalid megatron in {path}: expected a mapping"),
    ("base: tiny\nmegatron:\n  lr: 1.0e-3\n  lr: 2.0e-3\n", "invalid YAML in {path} line 4 column 3: duplicate key 'lr' "
                                                            "(first at line 3)"),
    ("base: tiny\nmegatron:\n  lr: [1\n", "invalid YAML in {path} line 4"),
    ("base: tiny\nmegatron:\n\tlr: 1\n", "invalid YAML in {path} line 3"),
])
def test_recipe_file_errors_name_file_key_and_valid_values(tmp_path, text, expected):
    path = _recipe(tmp_path, text)
    assert expected.format(path=path) in _error(path)


@pytest.mark.parametrize("override, expected", [
    ("megatron.num_experts=2.5", "invalid megatron.num_experts=2.5: expected int; valid: an integer >= 1 "
                                 "(in override megatron.num_experts=2.5)"),
    ("megatron.num_layer=4", "invalid megatron.num_layer: not a Megatron-LM flag (in override megatron.num_layer=4); "
                             "did you mean num_layers"),
    ("megatron.attention_dropout=1.5", "invalid megatron.attention_dropout=1.5: must be in [0, 1]"),
    ("launch.signal_lead_s=-1", "invalid launch.signal_lead_s=-1: must be >= 0 (in override launch.signal_lead_s=-1)"),
])
def test_override_errors_name_the_override(override, expected):
    assert expected in _error("tiny", [override])


def test_valid_values_pass(tmp_path):
    path = _recipe(tmp_path, "base: tiny\nmegatron:\n  lr: 1e-3\n  split: 99,1,0\n  data_path: [a, b]\n"
                             "  moe_layer_freq: 1\nlaunch:\n  train_tokens: 1e9\n  chain_jobs: 2\nslurm:\n  mem: 0\n")
    r = load_recipe(str(path), nodes=1)
    assert r.megatron["lr"] == "1e-3" and r.launch["train_tokens"] == "1e9" and r.slurm["mem"] == 0
    load_recipe("tiny", ["megatron.use_flash_attn=true", "launch.chain_jobs=3", "slurm.mem=0"])


def _mgn(args):
    return subprocess.run([sys.executable, "-m", "megatron_gatednorm.cli", "launch"] + args, capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize("text", ["base: tiny\nmegatron:\n  lr: [1\n", "base: tiny\nmegatron:\n  num_layers: 0\n",
                                  "base: tiny\nmegatron:\n  num_layer: 4\n"])
def test_cli_gives_one_line_and_exit_2(tmp_path, text):
    path = _recipe(tmp_path, text)
    out = _mgn([str(path), "--nodes", "1"])
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mgn launch: error: invalid ") and str(path) in lines[0], lines


def test_shipped_flags_round_trip_and_cover_the_model_table():
    from megatron_gatednorm.model_shape import MEGATRON_FLAGS

    flags = shipped_flags()
    assert len(flags) > 800 and flags["num_layers"].kind == "int" and flags["bf16"].kind == "bool"
    text = (ROOT / "megatron_gatednorm" / "launch" / FLAGS_FILE).read_text()
    assert format_flags(parse_flags(text), "0.19.2") == text
    assert {row.flag for row in MEGATRON_FLAGS} <= set(flags)


@pytest.mark.slow
@pytest.mark.skipif(not MCORE019.exists(), reason="no .venv-mcore019 (megatron-core 0.19.2 with megatron.training)")
def test_shipped_flags_match_megatron_training_0_19_2():
    code = ("import argparse; from megatron.training.arguments import add_megatron_arguments; "
            "from megatron_gatednorm.launch.megatron_flags import flags_from_parser, format_flags; "
            "import megatron.core as c; assert c.__version__.startswith('0.19.2'), c.__version__; "
            "p = add_megatron_arguments(argparse.ArgumentParser(allow_abbrev=False)); "
            "import sys; sys.stdout.write(format_flags(flags_from_parser(p), '0.19.2'))")
    out = subprocess.run([str(MCORE019), "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout == (ROOT / "megatron_gatednorm" / "launch" / FLAGS_FILE).read_text()
