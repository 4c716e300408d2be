"""Shared fixtures: running the torchrun workers in tests/workers and reading their results."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

WORKERS = Path(__file__).parent / "workers"
REPO = Path(__file__).parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def torchrun(tmp_path):
    """``torchrun(worker, nproc, *args)`` → the worker's JSON results (fails on a non-zero exit)."""

    def run(worker: str, nproc: int = 2, *args: str, timeout: int = 600) -> dict:
        out = tmp_path / f"{Path(worker).stem}.json"
        cmd = [
            sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
            f"--master-port={_free_port()}", str(WORKERS / worker), "--out", str(out), *args,
        ]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(WORKERS), str(REPO), os.environ.get("PYTHONPATH", "")]))
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=tmp_path)
        assert proc.returncode == 0, f"{worker} failed (rc {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
        return json.loads(out.read_text())

    return run
