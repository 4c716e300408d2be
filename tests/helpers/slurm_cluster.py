"""A real single-node Slurm for the tests: started by ``.ci/slurm_up.sh`` (installs
``slurm-wlm`` + ``munge`` with apt if missing) and stopped by PID — only the daemons this
session started, after checking ``/proc/PID/comm``.

Tests using it skip when ``sbatch`` is absent and ``CI`` is unset; with ``CI=true`` a Slurm that
cannot start is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Dict, Optional

ROOT = Path(__file__).resolve().parents[2]
SUBMITTED: list = []  # job ids the tests submitted (cancelled on teardown)
PIDFILES = {"munged": "/run/munge/munged.pid", "slurmctld": "/run/slurmctld.pid", "slurmd": "/run/slurmd.pid"}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _alive(pid: int, comm: str) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == comm
    except OSError:
        return False


def running_daemons() -> Dict[str, int]:
    out = {}
    for comm, pidfile in PIDFILES.items():
        try:
            pid = int(Path(pidfile).read_text().strip())
        except (OSError, ValueError):
            continue
        if _alive(pid, comm):
            out[comm] = pid
    return out


def start(timeout_s: float = 300) -> Dict[str, int]:
    """Start Slurm; return the PIDs of the daemons that this call started."""
    before = running_daemons()
    proc = subprocess.run(["bash", str(ROOT / ".ci" / "slurm_up.sh")], capture_output=True, text=True,
                          timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f".ci/slurm_up.sh failed (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    m = re.search(r"SLURM_PIDS munged=(\d+) slurmctld=(\d+) slurmd=(\d+)", proc.stdout)
    if not m:
        raise RuntimeError(f".ci/slurm_up.sh printed no SLURM_PIDS line:\n{proc.stdout}")
    now = dict(zip(("munged", "slurmctld", "slurmd"), map(int, m.groups())))
    return {k: v for k, v in now.items() if before.get(k) != v}


def stop(started: Dict[str, int], wait_s: float = 15) -> None:
    """Cancel the tests' jobs and stop the daemons in ``started`` (slurmd, slurmctld, munged)."""
    if SUBMITTED and shutil.which("scancel"):
        subprocess.run(["scancel", "--quiet", *SUBMITTED], capture_output=True)
    if not started:
        return
    for comm in ("slurmd", "slurmctld", "munged"):
        pid = started.get(comm)
        if pid is None or not _alive(pid, comm):
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.time() + wait_s
        while _alive(pid, comm) and time.time() < deadline:
            time.sleep(0.1)
        if _alive(pid, comm):
            os.kill(pid, signal.SIGKILL)


def job_info(job_id: str) -> Dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def wait_for(predicate, timeout_s: float, interval_s: float = 0.5, what: str = "condition") -> Optional[object]:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
