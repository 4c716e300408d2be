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
import torch

from helpers.processes import free_port
from megatron_gatednorm.launch.recipes import recipe_dir
from helpers.slurm_cluster import in_ci

pytestmark = [pytest.mark.slow, pytest.mark.mcore019]

ROOT = Path(__file__).resolve().parents[1]
VENV_PY = Path(os.environ.get("MGN_MCORE019_VENV", ROOT / ".venv-mcore019")) / "bin" / "python"
RECIPES = sorted(p.stem for p in recipe_dir().glob("*.yaml"))  # built-in: megatron_gatednorm/recipes
OVERLAYS = sorted(p.stem for p in (recipe_dir() / "overlays").glob("*.yaml"))


def _cases():
    cases = [[name, ["data_path=/d"] if not name.startswith("tiny") else [], 1, name.startswith(("dense2b", "tiny"))]
             for name in RECIPES]
    for overlay in OVERLAYS:
        base = "dense2b_gatednorm" if overlay.startswith(("gate_", "tensorwise")) else "dense2b"
        cases.append([f"{base}+{overlay}", ["data_path=/d"], 4, True])
    cases.append(["dense2b_gatednorm", ["data_path=/d", "launch.wandb_project=p", "megatron.recompute_granularity=full",
                                        "megatron.recompute_method=uniform", "megatron.recompute_num_layers=1"], 64, True])
    # the paper's MoE model as HybridModel: | segments per (virtual) pipeline stage through validate_args
    # (local experts: Megatron's validate_args asks CUDA about grouped GEMM)
    cases.append(["moe24b_a3b_gatednorm+hybrid+cpu", ["data_path=/d", "megatron.moe_grouped_gemm=false",
                                                      "megatron.transformer_impl=local",
                                                      "megatron.num_layers_per_virtual_pipeline_stage=3"], 1, True])
    return cases


def _require_venv():
    if not VENV_PY.exists():
        if in_ci():
            pytest.fail(f"{VENV_PY} is missing under CI: run .ci/mcore019_venv.sh first")
        pytest.skip(f"{VENV_PY} is missing: .ci/mcore019_venv.sh creates it")


def _in_venv(script, *argv, cwd=ROOT, nproc=0):
    """Run tests/workers/<script> with the venv's Python (under torchrun with ``nproc`` processes)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    launcher = ["-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--master-port={free_port()}"]
    proc = subprocess.run([str(VENV_PY), *(launcher if nproc else []), str(ROOT / "tests" / "workers" / script), *map(str, argv)],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def result():
    _require_venv()
    stdout = _in_venv("train_entry.py", json.dumps(_cases()))
    line = next((l for l in stdout.splitlines() if l.startswith("RESULT ")), None)
    assert line, stdout[-3000:]
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
    hybrid = result["parsed"]["moe24b_a3b_gatednorm+hybrid+cpu"]  # 24 GPT layers, PP 2, 3 per virtual stage
    assert hybrid["pattern_matches"] and hybrid["segments"] == 8 and hybrid["num_layers_value"] == 48, hybrid
    assert (hybrid["pipeline"], hybrid["virtual_pipeline"]) == (2, 4), hybrid


def test_model_provider_builds_the_plugin_model(result):
    hybrid = result["models"].pop("tiny_hybrid")
    assert hybrid["type"] == "HybridModel" and hybrid["params"] == hybrid["expected"], hybrid
    # each layer has one residual-stream slot: the other (a mixer's pre-MLP, an FFN's input norm) is IdentityOp
    assert hybrid["norms"] == ["GatedRMSNorm", "IdentityOp"], hybrid
    assert hybrid["logits_shape"] == [1, 16, 256] and hybrid["finite"], hybrid
    for name, m in result["models"].items():
        assert m["type"] == "GPTModel"
        assert m["params"] == m["expected"], (name, m)
        assert m["norms"] == ["GatedRMSNorm"], (name, m)
        assert m["logits_shape"] == [1, 16, 256] and m["finite"], (name, m)
    assert result["models"]["glu"]["activation"] == "sigmoid"
    assert result["models"]["gatednorm"]["activation"] == "silu"


def test_mgn_train_passes_every_argument_to_megatron(monkeypatch):
    from megatron_gatednorm.training import pretrain as train
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


def test_megatron_training_checkpoints_convert_both_ways(tmp_path):
    """A checkpoint saved by megatron.training 0.19.2 itself (args inside the torch_dist files,
    0.19's renamed args, classes this environment's megatron-core lacks) converts to HF with
    Megatron's logits; ``mgn convert to-megatron --tp 2`` output loads with megatron.training's own
    ``load_checkpoint`` with --finetune and as a start point (args checked) at TP=1, and as a
    start point at TP=2 (2 processes), to the same logits."""
    pytest.importorskip("transformers")
    from transformers import AutoModelForCausalLM

    from megatron_gatednorm.convert.to_hf import convert_to_hf
    from megatron_gatednorm.convert.to_megatron import convert_to_megatron

    _require_venv()
    saved, hf, back = tmp_path / "saved", tmp_path / "hf", tmp_path / "back"
    _in_venv("megatron_checkpoint.py", "save", saved, tmp_path / "saved.json", cwd=tmp_path)
    ref = json.loads((tmp_path / "saved.json").read_text())
    assert not (saved / "iter_0000007" / "common.pt").exists()  # 0.19 keeps args in the torch_dist files
    assert convert_to_hf(saved, hf, progress=False) == "GatedNormForCausalLM"
    cfg = json.loads((hf / "config.json").read_text())
    assert cfg["zero_centered_gamma"] is True and cfg["norm_variant"] == "gatednorm"  # 0.19's renamed args
    model = AutoModelForCausalLM.from_pretrained(hf, trust_remote_code=True, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor(ref["tokens"])).logits
    expected = torch.tensor(ref["logits"])
    assert float((logits - expected).abs().max()) < 1e-5 * max(1.0, float(expected.abs().max()))
    convert_to_megatron(hf, back, tp=2)
    for mode, nproc in (("finetune", 0), ("resume", 0), ("resume", 2)):
        out = tmp_path / f"{mode}-{nproc}.json"
        _in_venv("megatron_checkpoint.py", mode, back, out, cwd=tmp_path, nproc=nproc)
        loaded = json.loads(out.read_text())
        assert loaded["iteration"] == 0 and loaded["tp"] == max(nproc, 1), (mode, nproc)
        diff = float((torch.tensor(loaded["logits"]) - expected).abs().max())
        assert diff < (1e-6 if nproc == 0 else 1e-5 * float(expected.abs().max())), (mode, nproc, diff)


def test_hybrid_pattern_needs_megatron_core_0_18_and_no_gpt_only_switches():
    import argparse
    import importlib.util

    from megatron_gatednorm.training import pretrain as train

    train.check_hybrid_available(["--num-layers", "2"])  # no pattern: nothing to check
    if importlib.util.find_spec("megatron.core.models.hybrid") is None:  # CI's main environment: 0.16.1
        with pytest.raises(ValueError, match=r"^invalid --hybrid-layer-pattern with megatron-core 0\.1[0-7].*: "
                                             r"HybridModel needs megatron-core >= 0\.18"):
            train.check_hybrid_available(["--hybrid-layer-pattern=GE"])
    else:
        train.check_hybrid_available(["--hybrid-layer-pattern", "GE"])
    args = argparse.Namespace(hybrid_layer_pattern="G*", experimental_attention_variant=None, use_rope_scaling=False,
                              linear_attention_freq=None)
    train.check_model_args(args)
    args.experimental_attention_variant = "gated_delta_net"
    with pytest.raises(ValueError, match=r"^invalid --experimental-attention-variant='gated_delta_net' with "
                                         r"--hybrid-layer-pattern='G\*': the pattern sets every layer's kind"):
        train.check_model_args(args)
    args.experimental_attention_variant, args.moe_layer_freq = None, 1  # Megatron's default: unset
    train.check_model_args(args)
    args.moe_layer_freq = 2
    with pytest.raises(ValueError, match=r"^invalid --moe-layer-freq=2 with --hybrid-layer-pattern='G\*': the pattern "
                                         r"places the MoE \(E\) layers"):
        train.check_model_args(args)
    args.hybrid_layer_pattern = None  # a GPTModel: the GPT hybrid is fine
    train.check_model_args(args)
