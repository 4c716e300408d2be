"""No silent CPU fallback (:mod:`megatron_gatednorm.device`): a process asked for CUDA on a node
whose CUDA is broken stops with the reason — in ``init_distributed`` (small trainer, workers),
``mgn train`` and the sbatch script's ``MGN_DEVICE`` — and the collective backend follows the
device explicitly (gloo for CPU tensors, NCCL only for CUDA). ``mgn preflight``'s side is in
test_launch_preflight.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megatron_gatednorm import device as dev

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def broken_cuda(monkeypatch):
    """This node's CUDA as a broken GPU node would report it."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv(dev.DEVICE_ENV, raising=False)


def test_requested_device_explicit_then_env_then_default(monkeypatch):
    monkeypatch.setenv(dev.DEVICE_ENV, "cpu")
    assert dev.requested_device("cuda") == ("cuda", "device")
    assert dev.requested_device() == ("cpu", "MGN_DEVICE")
    assert dev.requested_device(default="cuda") == ("cpu", "MGN_DEVICE")
    monkeypatch.delenv(dev.DEVICE_ENV)  # the default applies; MGN_DEVICE is the knob to change it
    assert dev.requested_device(default="cuda") == ("cuda", "MGN_DEVICE")
    assert dev.requested_device() == ("cuda" if torch.cuda.is_available() else "cpu", "MGN_DEVICE")
    monkeypatch.setenv(dev.DEVICE_ENV, "gpu")
    with pytest.raises(ValueError, match="^invalid MGN_DEVICE='gpu'; valid: cuda, cpu$"):
        dev.requested_device()
    assert (dev.backend("cuda"), dev.backend("cpu")) == ("nccl", "gloo")


def test_cuda_unavailable_is_an_error_naming_the_setting(broken_cuda):
    dev.check_device("cpu", 8, "launch.device")  # CPU where asked for: fine
    with pytest.raises(ValueError) as e:
        dev.check_device("cuda", 1, "launch.device")
    assert str(e.value).startswith(
        "launch.device=cuda but CUDA is not usable on this node: torch.cuda.is_available() is False (torch ")
    assert str(e.value).endswith("or set launch.device=cpu to run on CPU (gloo) on purpose")


def test_fewer_gpus_than_local_ranks_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    dev.check_device("cuda", 2)
    with pytest.raises(ValueError) as e:
        dev.check_device("cuda", 8, "MGN_DEVICE")
    assert str(e.value).startswith(
        "MGN_DEVICE=cuda needs one GPU per local rank: 8 local ranks but torch.cuda.device_count() is 2 (")
    assert "CUDA_VISIBLE_DEVICES='0,1'" in str(e.value)


def test_init_distributed_and_the_small_trainer_refuse_cuda_without_it(broken_cuda, monkeypatch):
    pytest.importorskip("megatron.core")
    from megatron_gatednorm.distributed import init_distributed
    from megatron_gatednorm.training.small_trainer import train

    with pytest.raises(ValueError, match="^device=cuda but CUDA is not usable on this node"):
        init_distributed(device="cuda")
    monkeypatch.setenv(dev.DEVICE_ENV, "cuda")  # what an `mgn launch` job of a cuda recipe exports
    argv = ["--num-layers", "1", "--hidden-size", "8", "--num-attention-heads", "2", "--ffn-hidden-size", "8",
            "--seq-length", "4", "--micro-batch-size", "1", "--global-batch-size", "1", "--train-iters", "1",
            "--lr", "1e-3"]
    with pytest.raises(ValueError, match="^MGN_DEVICE=cuda but CUDA is not usable on this node"):
        train(argv)


def test_mgn_train_needs_cuda_unless_mgn_device_says_cpu(broken_cuda, monkeypatch):
    from megatron_gatednorm.training import pretrain as entry

    monkeypatch.setattr(sys, "argv", list(sys.argv))  # main() rewrites sys.argv
    with pytest.raises(ValueError, match="^MGN_DEVICE=cuda but CUDA is not usable on this node.*set MGN_DEVICE=cpu"):
        entry.main(["--num-layers", "2"])  # before Megatron is imported or initialised
    monkeypatch.setenv(dev.DEVICE_ENV, "cpu")
    entry._check_device()


def test_sbatch_exports_the_recipe_device():
    from megatron_gatednorm.launch.plan import build

    gpu = build("dense2b", ["data_path=/d", "launch.run_dir=/runs/x"], 1)[1].splitlines()
    cpu = build("tiny", ["launch.device=cpu", "launch.gpus_per_node=2", "launch.run_dir=/runs/x"], 1)[1].splitlines()
    assert "export MGN_DEVICE=cuda" in gpu and "export MGN_DEVICE=cpu" in cpu


@pytest.mark.slow
def test_cpu_device_initialises_gloo_explicitly():
    code = ("import torch.distributed as d; from megatron_gatednorm.distributed import init_distributed; "
            "print(init_distributed(device='cpu'), d.get_backend())")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", dev.DEVICE_ENV)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**env, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-2:] == ["cpu", "gloo"]
