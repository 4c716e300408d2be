"""examples/: each script runs as a user would run it — a subprocess from a temporary working
directory, output folder inside it — exits 0 and prints what it promises. None may write into
the repository's examples/ folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
VENV_PY = Path(os.environ.get("MGN_MCORE019_VENV", ROOT / ".venv-mcore019")) / "bin" / "python"


def _listing():
    return sorted(str(p.relative_to(EXAMPLES)) for p in EXAMPLES.rglob("*"))


def run_example(tmp_path, *cmd, python=sys.executable, env_extra=None, timeout=600):
    """Run ``cmd`` (an example, then its arguments) in ``tmp_path``; stdout on success."""
    name, args = cmd[0], [str(a) for a in cmd[1:]]
    script = EXAMPLES / name
    argv = ["bash", str(script), *args] if name.endswith(".sh") else [str(python), str(script), *args]
    env = dict(os.environ, PYTHONWARNINGS="ignore", **(env_extra or {}))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])  # `mgn`
    before = _listing()
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    assert _listing() == before, f"{name} wrote into {EXAMPLES}"
    return proc.stdout


def _check_01(out):
    for i in (0, 1):
        assert f"layer {i}: input_layernorm=GatedRMSNorm pre_mlp_layernorm=GatedRMSNorm q_layernorm=RMSNorm" in out, out
    assert "final_layernorm=GatedRMSNorm" in out
    assert "--spec megatron_gatednorm.specs gatednorm_block_spec_from_args -> TransformerBlockSubmodules" in out
    assert "parameters: 103,808" in out  # = the launcher's count for this shape (mgn small-train prints the same)
    assert out.rstrip().endswith("OK")


@pytest.mark.slow
def test_01_specs_in_your_pretrain_gpt(tmp_path):
    import importlib.util

    out = run_example(tmp_path, "01_specs_in_your_pretrain_gpt.py")
    _check_01(out)
    # megatron-core 0.16.1 (this environment) has no megatron.training: the argparse path
    megatron_training = importlib.util.find_spec("megatron.training") is not None
    assert ("parsed with: Megatron-LM's parse_args" if megatron_training else "parsed with: argparse") in out


@pytest.mark.slow
def test_01_with_megatron_lm_parser(tmp_path):
    """The same example where megatron.training exists (megatron-core 0.19.2 venv): Megatron-LM's
    own parse_args + validate_args with add_gatednorm_args, then its spec import."""
    if not VENV_PY.exists():
        pytest.skip(f"{VENV_PY} is missing: .ci/mcore019_venv.sh creates it")
    out = run_example(tmp_path, "01_specs_in_your_pretrain_gpt.py", python=VENV_PY, env_extra={"PYTHONPATH": str(ROOT)})
    _check_01(out)
    assert "parsed with: Megatron-LM's parse_args + add_gatednorm_args" in out


@pytest.mark.slow
def test_02_tiny_pretraining(tmp_path):
    out = run_example(tmp_path, "02_tiny_pretraining.sh", "run")
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    done = [e for e in events if e["event"] == "done"]
    assert done and done[0]["iteration"] == 10 and done[0]["variant"] == "gatednorm", out
    first = next(e for e in events if e["event"] == "train")
    assert done[0]["final_loss"] < first["loss"], events  # it learns something in 10 steps
    assert any("peak_activation_per_layer" in e for e in events)
    assert (tmp_path / "run" / "ckpt" / "latest_checkpointed_iteration.txt").read_text() == "10"
    assert "checkpoint: run/ckpt (latest iteration 10)" in out


def test_03_slurm_launch_dry_run(tmp_path):
    out = run_example(tmp_path, "03_slurm_launch_dry_run.sh", "dry")
    assert "#SBATCH --nodes=16" in out
    assert "layout        nodes=16 gpus_per_node=8 world=128" in out
    assert "parity        ffn_hidden_size 6144 -> 6122" in out
    assert "--lr\t0.002" in out and "--norm-variant\tgatednorm" in out  # the override reached Megatron's argv
    assert "export PYTHONPATH=/opt/Megatron-LM" in out
    assert f"run dir       {tmp_path / 'dry' / 'runs' / 'dense2b_gatednorm'}" in out
    assert "exit code 2: mgn launch: error: tensor_model_parallel_size=4 does not divide num_query_groups=2" in out
    derived = out.split("=== 1.")[1].split("=== 2.")[0]
    assert "# warning" not in derived  # data_path and megatron_lm_path are set
    assert sorted(p.name for p in (tmp_path / "dry").iterdir()) == ["dry_run.txt", "error.txt"]  # nothing else


@pytest.mark.slow
def test_04_load_exported_in_transformers(tmp_path):
    pytest.importorskip("transformers")
    out = run_example(tmp_path, "04_load_exported_in_transformers.py", "exported")
    assert "greedy tokens identical in Megatron and transformers: True" in out, out
    assert "loaded GatedNormForCausalLM from transformers_modules." in out  # the folder's own code
    assert "megatron_gatednorm imported: False, megatron imported: False" in out
    assert "layer 0 input norm: GatedNormRMSNorm with ['gate_down', 'gate_up', 'weight']" in out
    generated = next(line for line in out.splitlines() if "transformers generated:" in line)
    assert len(json.loads(generated.split(":", 1)[1])) == 8
    hf = tmp_path / "exported" / "hf"
    assert json.loads((hf / "config.json").read_text())["architectures"] == ["GatedNormForCausalLM"]
    assert (tmp_path / "exported" / "hf_modules").is_dir()  # remote code cached inside OUT_DIR


@pytest.mark.slow
def test_05_kernel_microbenchmark(tmp_path):
    pytest.importorskip("triton")
    out = run_example(tmp_path, "05_kernel_microbenchmark.py")
    assert "correctness: PASS" in out, out
    for name in ("out", "dx", "dweight", "dgate_down", "dgate_up"):
        assert f"max rel. error {name}" in out
    import torch

    if torch.cuda.is_available():
        assert "fused (Triton)" in out and "eager reference" in out
    else:
        assert "triton interpreter on CPU" in out and "timings: skipped" in out
    assert list(tmp_path.iterdir()) == []  # writes nothing
