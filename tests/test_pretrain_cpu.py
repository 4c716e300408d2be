"""``mgn train`` = Megatron's own ``pretrain()`` on CPU (megatron-core 0.19.2 in .venv-mcore019,
the fenced CPU shim, gloo) outside Slurm: the tiny recipe on an indexed dataset made by
``mgn data`` with evaluation and torch_dist saves, a diverging run that Megatron's NaN check
stops without committing non-finite weights, and the tiny HybridModel (tiny_hybrid) training and
saving the plugin's norms. (Mock data, signals, requeue and resume under Slurm:
tests/test_slurm_pretrain.py.)"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
from pathlib import Path

import pytest

from helpers.slurm_cluster import in_ci

pytestmark = [pytest.mark.slow, pytest.mark.mcore019]

ROOT = Path(__file__).resolve().parents[1]
VENV_PY = Path(os.environ.get("MGN_MCORE019_VENV", ROOT / ".venv-mcore019")) / "bin" / "python"

if not VENV_PY.exists():
    if in_ci():
        pytest.fail(f"{VENV_PY} is missing under CI: run .ci/mcore019_venv.sh first", pytrace=False)
    pytest.skip(f"{VENV_PY} is missing: .ci/mcore019_venv.sh creates it", allow_module_level=True)


def _train(run_dir: Path, *overrides, recipe: str = "tiny+cpu"):
    """``mgn train`` (one process) with the recipe's argv → (completed process, plan)."""
    from megatron_gatednorm.launch.argv import megatron_argv
    from megatron_gatednorm.launch.plan import build

    plan, _ = build(recipe, [f"launch.run_dir={run_dir}", "launch.gpus_per_node=1", "global_batch_size=4",
                                 *overrides], nodes=1)
    env = dict(os.environ, MGN_DEVICE="cpu", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), RANK="0", WORLD_SIZE="1",
               LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_port()))
    proc = subprocess.run([str(VENV_PY), "-m", "megatron_gatednorm.cli", "train", *megatron_argv(plan)],
                          capture_output=True, text=True, env=env, timeout=900, cwd=run_dir.parent)
    return proc, plan


def _port() -> int:
    from helpers.processes import free_port

    return free_port()


def _losses(tensorboard_dir) -> dict:
    out = subprocess.run([str(VENV_PY), str(ROOT / "tests" / "workers" / "tb_scalars.py"), str(tensorboard_dir),
                          "lm loss"], capture_output=True, text=True, check=True)
    return {int(k): v for k, v in json.loads(out.stdout).items()}


def test_indexed_dataset_from_mgn_data_trains_evaluates_and_saves(tiny_data, tmp_path):
    prefix = tiny_data / "train_text_document"
    heldout = tiny_data / "heldout_text_document"
    proc, plan = _train(tmp_path / "run", "megatron.mock_data=false", "megatron.vocab_size=512",
                        f"megatron.train_data_path=[{prefix}]", f"megatron.valid_data_path=[{heldout}]",
                        f"megatron.test_data_path=[{heldout}]", f"megatron.data_cache_path={tmp_path / 'cache'}",
                        "megatron.train_iters=8", "megatron.eval_interval=4", "megatron.eval_iters=2")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "building GPTDataset train, validation and test datasets" in out, out[-3000:]
    assert "validation loss at iteration 8 on validation set" in out and "validation loss at iteration 4 |" in out
    assert Path(plan.megatron["save"], "latest_checkpointed_iteration.txt").read_text().strip() == "8"
    losses = _losses(plan.megatron["tensorboard_dir"])
    assert sorted(losses) == list(range(1, 9)) and all(math.isfinite(v) for v in losses.values())
    assert losses[8] < losses[1]  # it learns from the corpus


def test_diverging_run_stops_on_nan_without_committing_non_finite_weights(tmp_path):
    """lr 1e4: Megatron's NaN check (on by default in 0.19) stops the run (exit 16, its 'resume to
    disambiguate' code) and the checkpoint it leaves holds only finite tensors."""
    import torch

    from megatron_gatednorm.checkpoint import read_checkpoint

    proc, plan = _train(tmp_path / "run", "megatron.lr=1e4", "megatron.train_iters=30", "megatron.save_interval=2",
                        "megatron.eval_interval=100")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 16, out[-4000:]
    assert "Unexpected result nan" in out, out[-4000:]
    _, _, tensors = read_checkpoint(plan.megatron["save"])
    assert tensors and all(torch.isfinite(t).all() for t in tensors.values())


def test_hybrid_model_trains_and_saves_the_plugin_norms(tmp_path):
    """tiny_hybrid (HybridModel ``GE*-``, GatedNorm; ``--hybrid-layer-pattern``) through Megatron's
    own pretrain(): the plugin's model provider builds a HybridModel, the loss is finite and falls,
    and the torch_dist save holds the plugin's norms in every slot, ``decoder.final_norm`` included."""
    from torch.distributed.checkpoint import FileSystemReader

    proc, plan = _train(tmp_path / "run", "megatron.train_iters=6", "megatron.save_interval=6",
                        "megatron.eval_iters=1", recipe="tiny_hybrid+cpu")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "building HybridModel with megatron-gatednorm (gatednorm" in out, out[-3000:]
    losses = {int(i): float(v) for i, v in re.findall(r"iteration\s+(\d+)/\s*\d+ \|.*?\| lm loss: (\S+) \|", out)}
    assert sorted(losses) == list(range(1, 7)) and all(math.isfinite(v) for v in losses.values()), out[-3000:]
    assert losses[6] < losses[1], losses
    save = Path(plan.megatron["save"])
    assert (save / "latest_checkpointed_iteration.txt").read_text().strip() == "6"
    keys = set(FileSystemReader(str(save / "iter_0000006")).read_metadata().state_dict_metadata)
    for slot in ("final_norm", "layers.0.input_layernorm", "layers.1.pre_mlp_layernorm", "layers.2.input_layernorm",
                 "layers.3.pre_mlp_layernorm"):  # G, E, *, - and the stack's final norm
        assert {f"decoder.{slot}.{p}" for p in ("weight", "gate_down", "gate_up")} <= keys, (slot, sorted(keys)[:40])
