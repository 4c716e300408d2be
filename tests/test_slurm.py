"""The tiny recipe's rendered sbatch script on a real single-node Slurm (CPU, gloo, 2 tasks).

1. ``mgn preflight`` runs on both ranks through the script's real rendezvous path
   (MASTER_ADDR from ``scontrol show hostnames``, port from the job id, srun-native ranks).
2. The job's signal (``scancel --signal=USR1 --batch``) makes the trap send SIGTERM to the
   training step, which saves and exits; the script requeues the job; the rerun
   (``SLURM_RESTART_COUNT=1``) finds the checkpoint in ``--save`` and resumes from it.

Training itself is ``tests/workers/fake_megatron.py`` (Megatron's pretrain() needs CUDA), which mimics
``--exit-signal-handler`` and Megatron's checkpoint tracker file.
"""

from __future__ import annotations

import shutil
import subprocess
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


@pytest.fixture(scope="session")
def slurm():
    try:
        started = sc.start()
    except Exception as e:  # noqa: BLE001
        if sc.in_ci():
            pytest.fail(f"Slurm could not start under CI: {e}")
        pytest.skip(f"Slurm could not start: {e}")
    yield
    sc.stop(started)


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


@pytest.mark.parametrize("launcher", ["srun", "torchrun"])
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


def test_signal_saves_requeues_and_resumes(slurm, tmp_path):
    env_iter = "env.FAKE_ITER_S=0.2"
    plan, job, log = _submit(tmp_path, "launch.preflight=false", "megatron.train_iters=100000", env_iter)
    save = plan.megatron["save"]
    sc.wait_for(lambda: "fake-megatron: rank 0 started" in _read(log) and "rank 1 started" in _read(log),
                timeout_s=90, what="the training step to start")
    assert f"load={save}" in _read(log) and "load_eq_save=True" in _read(log)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True)
    info = sc.wait_for(lambda: (lambda i: i if i.get("JobState") == "COMPLETED" else None)(sc.job_info(job)),
                       timeout_s=120, what=f"job {job} to be requeued and complete")
    text = _read(log)
    assert info.get("Restarts") == "1", info
    assert "mgn: caught SIGUSR1" in text, text
    assert "got SIGTERM, saved iteration" in text, text
    saved = text.split("rank 0 got SIGTERM, saved iteration ")[1].split()[0]  # rank 0 writes the tracker
    assert f"mgn: requeueing job {job}" in text, text
    rerun = text.split(f"mgn: job {job} restart 1 ")[1]  # SLURM_RESTART_COUNT=1 in the rerun
    assert f"mgn: resuming from {save} (latest_checkpointed_iteration={saved})" in rerun, rerun
    assert f"fake-megatron: rank 0 resumed from {save} at iteration {saved}" in rerun, rerun
    assert Path(save, "latest_checkpointed_iteration.txt").read_text().strip() == "100000"


def _losses(text: str) -> dict:
    """iteration -> loss from the small trainer's JSON log lines (rank 0)."""
    import json

    out = {}
    for line in text.splitlines():
        if line.startswith('{"event": "train"'):
            record = json.loads(line)
            out[record["iteration"]] = record["loss"]
    return out


def test_small_trainer_workload_signal_requeue_resume_matches_uninterrupted(slurm, tmp_path):
    """The tiny recipe with the small trainer as the workload (same sbatch path, 2 CPU tasks):
    signalled mid-run it saves, requeues and resumes; its losses equal an uninterrupted run's."""
    from megatron_gatednorm.launch.argv import megatron_argv

    iters = 12
    overrides = ["launch.preflight=false", f"megatron.train_iters={iters}", "megatron.save_interval=1000",
                 "launch.entrypoint=-m megatron_gatednorm.training.small_trainer"]
    plan, job, log = _submit(tmp_path, *overrides)
    sc.wait_for(lambda: '"iteration": 2,' in _read(log), timeout_s=240, what="iteration 2 in the job log")
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True)
    info = sc.wait_for(lambda: (lambda i: i if i.get("JobState") == "COMPLETED" else None)(sc.job_info(job)),
                       timeout_s=400, what=f"job {job} to be requeued and complete")
    text = _read(log)
    assert info.get("Restarts") == "1", info
    assert '"event": "exit_on_signal"' in text and f"mgn: requeueing job {job}" in text, text
    saved = int(text.split('"event": "exit_on_signal", "iteration": ')[1].split("}")[0])
    assert 2 <= saved < iters
    rerun = text.split(f"mgn: job {job} restart 1 ")[1]
    assert f'"event": "resume", "iteration": {saved}' in rerun, rerun
    interrupted = _losses(text)

    # The same argv, uninterrupted, outside Slurm (torchrun, 2 processes).
    argv = [a if a != plan.megatron["save"] else str(tmp_path / "straight") for a in megatron_argv(plan)]
    import os

    from helpers.processes import free_port

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}",
           "-m", "megatron_gatednorm.training.small_trainer", *argv]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    straight = _losses(proc.stdout)
    assert sorted(straight) == list(range(1, iters + 1))
    assert interrupted == straight
