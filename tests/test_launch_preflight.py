"""``mgn preflight`` in one process (no Slurm): the world-size check fails before any rendezvous,
naming the rank; a matching layout builds the meta-device model and agrees with the launcher."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY_CPU = ["--recipe", "tiny", "--nodes", "1", "launch.device=cpu", "launch.gpus_per_node=1", "global_batch_size=4"]


def run_preflight(extra_env, *extra_args):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=str(ROOT), **extra_env)
    return subprocess.run([sys.executable, "-m", "megatron_gatednorm.cli", "preflight", *TINY_CPU, *extra_args],
                          capture_output=True, text=True, env=env, cwd=ROOT)


def test_world_size_mismatch_fails_fast_naming_the_rank():
    out = run_preflight({"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "3"})
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith(
        "mgn preflight: error: rank 3/4 (")
    assert "world size 4 does not match recipe tiny: nodes=1 × gpus_per_node=1 = 1 ranks" in out.stderr


def test_single_rank_preflight_matches_the_launcher_count():
    out = run_preflight({})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "mgn preflight: OK tiny: world 1 (tp 1 pp 1 ep 1 dp 1), parameters 101,184 = launcher count" in out.stdout


def test_parameter_mismatch_fails_naming_the_rank_and_counts():
    out = run_preflight({}, "--expected-params", "100000")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("mgn preflight: error: rank 0/1 (")
    assert "built parameter total 101,184 (per rank: 101,184) != expected 100,000 for tiny" in out.stderr
