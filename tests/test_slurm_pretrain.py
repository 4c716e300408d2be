"""The production path end to end on the real local Slurm: ``mgn launch tiny+cpu … --submit`` →
sbatch → ``mgn preflight`` on every rank → ``mgn train`` = Megatron's own ``pretrain()``
(megatron-core 0.19.2 in .venv-mcore019; 2 CPU tasks, gloo) → the job's signal → Megatron's
``--exit-signal-handler`` saves and exits → the script requeues → the rerun resumes.

Per-iteration losses are Megatron's own TensorBoard scalars (``lm loss``, written by the last
rank every iteration; its stdout line after a (re)start averages two iterations). An
uninterrupted run of the same argv (torchrun, outside Slurm) is the reference: the interrupted
run's losses, iteration count and consumed samples must equal it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

import helpers.slurm_cluster as sc
from helpers.processes import free_port

pytestmark = [pytest.mark.slow, pytest.mark.slurm, pytest.mark.mcore019]

ROOT = Path(__file__).resolve().parents[1]
VENV_PY = Path(os.environ.get("MGN_MCORE019_VENV", ROOT / ".venv-mcore019")) / "bin" / "python"
ITERS, GBS = 12, 4
LAYOUTS = {"dp2": [], "tp2_sp": ["megatron.tensor_model_parallel_size=2", "megatron.sequence_parallel=true"]}
TRACKER = "latest_checkpointed_iteration.txt"

if not VENV_PY.exists() and not sc.in_ci():
    pytest.skip(f"{VENV_PY} is missing: .ci/mcore019_venv.sh creates it", allow_module_level=True)


def _build(run_dir: Path, *overrides):
    from megatron_gatednorm.launch.plan import build

    base = [f"launch.run_dir={run_dir}", "launch.gpus_per_node=2", f"launch.python={VENV_PY}",
            f"launch.pythonpath={ROOT}", "slurm.time=00:15:00", "launch.signal_lead_s=60",
            f"megatron.train_iters={ITERS}", "megatron.save_interval=1000", "megatron.eval_interval=6",
            f"megatron.global_batch_size={GBS}"]
    return build("tiny+cpu", base + list(overrides), nodes=1)


def _submit(run_dir: Path, *overrides):
    from megatron_gatednorm.launch.sbatch import submit

    plan, script = _build(run_dir, *overrides)
    (job,) = submit(plan, script)
    sc.SUBMITTED.append(job)
    return plan, job, Path(plan.derived["run_dir"]) / "logs" / f"tiny+cpu-{job}.out"


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _wait_state(job, log: Path, states=("COMPLETED",), timeout_s=600):
    final = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL")
    info = sc.wait_for(lambda: (lambda i: i if i.get("JobState") in final else None)(sc.job_info(job)),
                       timeout_s=timeout_s, what=f"job {job} to end")
    assert info["JobState"] in states, (info, _read(log)[-6000:])
    return info


def _wait_log(log: Path, pattern: str, timeout_s=300):
    return sc.wait_for(lambda: re.search(pattern, _read(log)), timeout_s=timeout_s, what=f"{pattern!r} in {log}")


def _losses(tensorboard_dir) -> dict:
    out = subprocess.run([str(VENV_PY), str(ROOT / "tests" / "workers" / "tb_scalars.py"), str(tensorboard_dir),
                          "lm loss"], capture_output=True, text=True, check=True)
    return {int(k): v for k, v in json.loads(out.stdout).items()}


def _final_line(text: str) -> str:
    lines = re.findall(rf"iteration +{ITERS}/ +{ITERS} \|[^\n]*", text)
    assert lines, text[-3000:]
    return lines[-1]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """layout → (per-iteration losses, final log line) of the same argv run straight through
    with torchrun (2 processes), outside Slurm."""
    from megatron_gatednorm.launch.argv import megatron_argv

    cache = {}

    def run(layout):
        if layout not in cache:
            run_dir = tmp_path_factory.mktemp(f"straight_{layout}")
            plan, _ = _build(run_dir, *LAYOUTS[layout])
            env = dict(os.environ, MGN_DEVICE="cpu", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
            proc = subprocess.run(
                [str(VENV_PY), "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}",
                 "-m", "megatron_gatednorm.training.pretrain", *megatron_argv(plan)],
                capture_output=True, text=True, env=env, timeout=900, cwd=run_dir)
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
            losses = _losses(plan.megatron["tensorboard_dir"])
            assert sorted(losses) == list(range(1, ITERS + 1)), losses
            cache[layout] = losses, _final_line(proc.stdout)
        return cache[layout]

    return run


def _rank_pids(timeout_s: float = 10.0) -> list:
    """PIDs of the two training ranks: processes whose command line is ``python -m
    megatron_gatednorm.training.pretrain …`` and whose parent is not one (a rank's forked workers —
    data loading, async checkpoint writers — have a rank as parent; srun is not python). Read from
    /proc, polled until both ranks are seen."""
    deadline = time.time() + timeout_s
    while True:
        procs = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                argv = Path("/proc", entry, "cmdline").read_bytes().split(b"\0")
                ppid = int(Path("/proc", entry, "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if (len(argv) > 2 and os.path.basename(argv[0]).startswith(b"python") and argv[1] == b"-m"
                    and argv[2] == b"megatron_gatednorm.training.pretrain"):
                procs[int(entry)] = ppid
        ranks = sorted(pid for pid, ppid in procs.items() if ppid not in procs)
        if len(ranks) == 2 or time.time() > deadline:
            assert len(ranks) == 2, procs
            return ranks
        time.sleep(0.05)


def _consumed(final_line: str) -> int:
    return int(re.search(r"consumed samples: +(\d+)", final_line).group(1))


def test_dp2_signal_saves_requeues_resumes_as_uninterrupted_and_a_finished_run_stays_finished(
        slurm, tmp_path, uninterrupted):
    """DP=2 with preflight: the job's signal at iteration ~4 → Megatron saves and exits → requeue →
    resume → the same losses, iteration count and consumed samples as the uninterrupted run.
    Submitted again, the finished run does not train again."""
    plan, job, log = _submit(tmp_path / "run")
    _wait_log(log, r"iteration +4/", timeout_s=400)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True)
    info = _wait_state(job, log)
    text = _read(log)
    assert info.get("Restarts") == "1", info
    assert "mgn preflight: OK tiny+cpu: world 2 (tp 1 pp 1 ep 1 dp 2)" in text, text[-3000:]
    # Megatron's own save-on-signal, then the script's requeue and the rerun's resume
    first, rerun = text.split(f"mgn: job {job} restart 1 ")
    saves = re.findall(r"saving checkpoint at iteration +(\d+)", first)
    assert saves and "exiting program after receiving SIGTERM." in first, "no save on the signal:\n" + first[-3000:]
    saved = int(saves[-1])
    assert 4 <= saved < ITERS
    assert f"mgn: requeueing job {job}" in first
    assert f"mgn: resuming from {plan.megatron['save']} (latest_checkpointed_iteration={saved})" in rerun
    assert re.search(rf"successfully loaded checkpoint from {re.escape(plan.megatron['save'])} .*at iteration {saved}",
                     rerun), rerun[-3000:]
    assert Path(plan.megatron["save"], TRACKER).read_text().strip() == str(ITERS)
    straight, straight_final = uninterrupted("dp2")
    assert _losses(plan.megatron["tensorboard_dir"]) == straight  # every iteration, bit for bit
    assert _consumed(_final_line(rerun)) == _consumed(straight_final) == ITERS * GBS

    _, again, again_log = _submit(tmp_path / "run")
    _wait_state(again, again_log, timeout_s=120)
    text = _read(again_log)
    assert f"mgn: run already finished ({ITERS} iterations); nothing to do" in text, text
    assert "iteration " not in text.split("nothing to do")[1]


def test_tp2_sp_signal_during_startup_then_kill9_during_a_save(slurm, tmp_path, uninterrupted):
    """TP=2 + sequence parallelism with preflight. (1) The signal arrives while Megatron builds the
    model: its handler is already installed, so it saves after iteration 1 and exits; the job
    requeues. (2) In the rerun one rank is SIGKILLed while iteration 8 is being saved: the tracker
    stays on iteration 4, the last complete checkpoint; the failed job, requeued, resumes from 4.
    The run ends with the uninterrupted run's losses and consumed samples."""
    plan, job, log = _submit(tmp_path / "run", *LAYOUTS["tp2_sp"], "megatron.save_interval=4")
    save = Path(plan.megatron["save"])
    _wait_log(log, r"building GPT model with megatron-gatednorm", timeout_s=400)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True)
    _wait_log(log, f"mgn: job {job} restart 1 ", timeout_s=300)
    first = _read(log).split(f"mgn: job {job} restart 1 ")[0]
    assert "mgn preflight: OK tiny+cpu: world 2 (tp 2 pp 1 ep 1 dp 1)" in first, first[-3000:]
    assert "exiting program after receiving SIGTERM." in first and f"mgn: requeueing job {job}" in first, first[-3000:]
    started = (save / TRACKER).read_text().strip()
    assert started in ("0", "1"), started  # nothing lost: saved at (or before) the first iteration

    sc.wait_for(lambda: (save / "iter_0000008").exists(), timeout_s=400, interval_s=0.01,
                what="the save of iteration 8 to start")
    os.kill(_rank_pids()[-1], signal.SIGKILL)
    _wait_state(job, log, states=("FAILED",))
    assert (save / TRACKER).read_text().strip() == "4"
    subprocess.run(["scontrol", "requeue", job], check=True)
    time.sleep(2)
    _wait_state(job, log)
    rerun = _read(log).split(f"mgn: job {job} restart 2 ")[1]
    assert f"mgn: moving the incomplete save {save}/iter_0000008 aside" in rerun, rerun[:3000]
    assert re.search(r"successfully loaded checkpoint from .* at iteration 4", rerun), rerun[-3000:]
    assert (save / TRACKER).read_text().strip() == str(ITERS)
    straight, straight_final = uninterrupted("tp2_sp")
    assert _losses(plan.megatron["tensorboard_dir"]) == straight
    assert _consumed(_final_line(rerun)) == _consumed(straight_final) == ITERS * GBS
