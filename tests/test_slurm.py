"""The launcher's torchrun path on a real single-node Slurm (CPU, gloo, 2 tasks): ``mgn preflight``
on both ranks through the script's rendezvous (MASTER_ADDR from ``scontrol show hostnames``, port
from the job id), then the training step. The training step here is
``tests/workers/fake_megatron.py``, a stand-in that finishes at once: this file checks the job
plumbing of ``launch.launcher=torchrun``. Megatron's own pretrain() under Slurm — signal, save,
requeue, resume, SIGKILL during a save — is tests/test_slurm_pretrain.py (srun launcher)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

import helpers.slurm_cluster as sc

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

ROOT = Path(__file__).resolve().parents[1]
FAKE = ROOT / "tests" / "workers" / "fake_megatron.py"

if not shutil.which("sbatch") and not sc.in_ci():
    pytest.skip("Slurm (sbatch) is not installed and CI is not set; .ci/slurm_up.sh installs it",
                allow_module_level=True)


def _submit(tmp_path, *overrides):
    from megatron_gatednorm.launch.plan import build
    from megatron_gatednorm.launch.sbatch import submit

    base = [
        "launch.device=cpu", "launch.gpus_per_node=2", f"launch.python={sys.executable}",
        f"launch.pythonpath={ROOT}", f"launch.run_dir={tmp_path}/run", f"launch.entrypoint={FAKE}",
        "slurm.time=00:10:00", "launch.signal_lead_s=60",
    ]
    plan, script = build("tiny", base + list(overrides), nodes=1)
    (job,) = submit(plan, script)
    sc.SUBMITTED.append(job)
    log = Path(plan.derived["run_dir"]) / "logs" / f"tiny-{job}.out"
    return plan, job, log


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _finished(job):
    info = sc.job_info(job)
    return info if info.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL") else None


@pytest.mark.parametrize("launcher", ["torchrun"])  # srun: every job of tests/test_slurm_pretrain.py
def test_preflight_two_ranks_via_sbatch(slurm, tmp_path, launcher):
    plan, job, log = _submit(tmp_path, "megatron.tensor_model_parallel_size=2", f"launch.launcher={launcher}")
    info = sc.wait_for(lambda: _finished(job), timeout_s=180, what=f"job {job} to finish")
    text = _read(log)
    assert info["JobState"] == "COMPLETED", text
    assert "mgn preflight: rank 0/2" in text and "mgn preflight: rank 1/2" in text, text
    assert "mgn preflight: OK tiny: world 2 (tp 2 pp 1 ep 1 dp 1)" in text, text
    assert f"parameters {plan.derived['params_total']:,} = launcher count" in text
    assert f"master vm:{20000 + int(job) % 20000}" in text or f":{20000 + int(job) % 20000} at" in text, text
    assert "fake-megatron: rank 0 finished 10 iterations" in text, text
