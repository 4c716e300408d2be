"""``mgn train`` against a real ``megatron.training`` (megatron-core 0.19.2 in .venv-mcore019,
created by .ci/mcore019_venv.sh): every recipe's Megatron argv parses with Megatron-LM's own
parser plus the plugin's ``extra_args_provider`` (a flag typo or a renamed upstream flag fails
here, not on a cluster), and the model provider builds and runs the tiny model."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from slurm_cluster import in_ci  # tests/ is on sys.path (pytest rootdir-relative import)

ROOT = Path(__file__).resolve().parents[1]
VENV_PY = Path(os.environ.get("MGN_MCORE019_VENV", ROOT / ".venv-mcore019")) / "bin" / "python"
RECIPES = sorted(p.stem for p in (ROOT / "launch" / "recipes").glob("*.yaml"))
OVERLAYS = sorted(p.stem for p in (ROOT / "launch" / "recipes" / "overlays").glob("*.yaml"))


def _cases():
    cases = [[name, ["data_path=/d"] if name != "tiny" else [], 1, name.startswith(("dense2b", "tiny"))]
             for name in RECIPES]
    for overlay in OVERLAYS:
        base = "dense2b_gatednorm" if overlay.startswith(("gate_", "tensorwise")) else "dense2b"
        cases.append([f"{base}+{overlay}", ["data_path=/d"], 4, True])
    cases.append(["dense2b_gatednorm", ["data_path=/d", "launch.wandb_project=p", "megatron.recompute_granularity=full",
                                        "megatron.recompute_method=uniform", "megatron.recompute_num_layers=1"], 64, True])
    return cases


@pytest.fixture(scope="module")
def result():
    if not VENV_PY.exists():
        if in_ci():
            pytest.fail(f"{VENV_PY} is missing under CI: run .ci/mcore019_venv.sh first")
        pytest.skip(f"{VENV_PY} is missing: .ci/mcore019_venv.sh creates it")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([str(VENV_PY), str(ROOT / "tests" / "train_entry_worker.py"), json.dumps(_cases())],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    assert proc.returncode == 0 and line, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(line[len("RESULT "):])


def test_megatron_is_0_19(result):
    assert result["pretrain_call_style"] == "container"


def test_every_recipe_argv_parses_with_megatron_training(result):
    assert result["errors"] == {}
    assert set(result["parsed"]) == {c[0] for c in _cases()}


def test_parsed_args_carry_the_recipe(result):
    for spec, r in result["parsed"].items():
        assert r["norm_config_matches"] and r["num_layers"] and r["ffn"] and r["train_iters"], (spec, r)
        assert r["load_eq_save"] and r["exit_signal_handler"], (spec, r)
    validated = {s: r for s, r in result["parsed"].items() if r["data_parallel_size"] is not None}
    assert "dense2b_gatednorm" in validated and "tiny" in validated
    for spec, r in validated.items():  # validate_args derived the same DP size as the launcher
        assert r["data_parallel_size"] == r["expected_dp"], (spec, r)
    assert result["parsed"]["dense2b+glu"]["ffn_activation"] == "glu"


def test_model_provider_builds_the_plugin_model(result):
    for name, m in result["models"].items():
        assert m["type"] == "GPTModel"
        assert m["params"] == m["expected"], (name, m)
        assert m["norms"] == ["GatedRMSNorm"], (name, m)
        assert m["logits_shape"] == [1, 16, 256] and m["finite"], (name, m)
    assert result["models"]["glu"]["activation"] == "sigmoid"
    assert result["models"]["gatednorm"]["activation"] == "silu"


def test_mgn_train_passes_every_argument_to_megatron(monkeypatch):
    import megatron_gatednorm.train as train
    from megatron_gatednorm.cli import main

    seen = []
    monkeypatch.setattr(train, "main", lambda argv: seen.append(argv) or 0)
    assert main(["train", "--num-layers", "2", "--norm-variant", "gatednorm", "--lr", "1e-3"]) == 0
    assert seen == [["--num-layers", "2", "--norm-variant", "gatednorm", "--lr", "1e-3"]]


def test_srun_task_env_becomes_torch_env():
    from megatron_gatednorm.launch.ranks import torch_env_from_slurm

    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1", "SLURM_NTASKS_PER_NODE": "8(x2)"}
    assert torch_env_from_slurm(env) == {"RANK": "5", "WORLD_SIZE": "16", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "8"}
    assert env["RANK"] == "5"
    assert torch_env_from_slurm({"RANK": "0", "SLURM_PROCID": "3"}) == {}  # torchrun already set it


def test_upstream_spec_path_of_the_patch(result):
    """What patches/megatron-lm-core_v0.19.0-*.patch enables: Megatron-LM's own GPT builder with
    ``--spec megatron_gatednorm.specs gatednorm_block_spec_from_args``."""
    up = result["upstream_spec"]
    assert up["norms"] == ["GatedRMSNorm"] and up["params"] == up["expected"], up


def test_weight_and_optimizer_memory_agrees_with_megatron(result):
    """Megatron's theoretical_memory_usage uses the same 6 + 12/DP bytes per parameter; its
    parameter formula is approximate (e.g. no gated-attention or QK-norm terms), hence 10%."""
    for key, m in result["memory"].items():
        assert abs(m["ours"] - m["megatron"]) <= 0.10 * m["megatron"], (key, m)
