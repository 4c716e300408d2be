"""Free ports and the torchrun workers of ``tests/workers``."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

WORKERS = Path(__file__).resolve().parents[1] / "workers"
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for torchrun's --master-port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_worker(cwd: Path, worker: str, nproc: int = 2, *args: str, timeout: int = 600, python=None) -> dict:
    """Run ``tests/workers/<worker>`` under torchrun in ``cwd`` → its JSON results (fails on a
    non-zero exit). ``python``: the interpreter (default this one; e.g. .venv-mcore019's)."""
    out = Path(cwd) / f"{Path(worker).stem}.json"
    cmd = [
        str(python or sys.executable), "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
        f"--master-port={free_port()}", str(WORKERS / worker), "--out", str(out), *args,
    ]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(WORKERS), str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    assert proc.returncode == 0, f"{worker} failed (rc {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    return json.loads(out.read_text())
