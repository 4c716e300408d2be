"""``mgn preflight`` in one process (no Slurm): the world-size check fails before any rendezvous,
naming the rank; a matching layout builds the meta-device model and agrees with the launcher."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port

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


@pytest.mark.parametrize("layout, shards", [
    # EP=2: rank 1 counts only its own experts (expert-data-parallel rank 0, its EP shard).
    (["megatron.num_experts=4", "megatron.moe_ffn_hidden_size=32", "megatron.moe_shared_expert_intermediate_size=32",
      "megatron.moe_router_topk=2", "megatron.expert_model_parallel_size=2"], "(tp 1 pp 1 ep 2 dp 2)"),
    # PP=2 with tied embeddings: the last stage's copy of the embedding is not counted twice.
    (["megatron.pipeline_model_parallel_size=2"], "(tp 1 pp 2 ep 1 dp 1)"),
])
def test_two_rank_shards_sum_to_the_launcher_count(layout, shards):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    env.update(PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}",
           "-m", "megatron_gatednorm.cli", "preflight", "--recipe", "tiny", "--nodes", "1", "launch.device=cpu",
           "launch.gpus_per_node=2", *layout]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    from megatron_gatednorm.commands.launch import build

    expected = build("tiny", ["launch.device=cpu", "launch.gpus_per_node=2", *layout], 1)[0].derived["params_total"]
    assert f"mgn preflight: OK tiny: world 2 {shards}, parameters {expected:,} = launcher count" in out.stdout
    shard_counts = [int(line.rsplit(" ", 1)[1].replace(",", "")) for line in out.stdout.splitlines()
                    if "shard parameters" in line]
    assert len(shard_counts) == 2 and all(c > 0 for c in shard_counts) and sum(shard_counts) == expected, out.stdout
