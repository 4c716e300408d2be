"""``mgn preflight`` in one process (no Slurm): the world-size check fails before any rendezvous,
naming the rank; a matching layout builds the meta-device model and agrees with the launcher; a
recipe asking for CUDA fails on this CUDA-less machine instead of falling back to the CPU; the
fused-vs-eager norm check is skipped on CPU ranks with the reason, and in Triton's interpreter
(``--fused-check=on``) passes, or fails naming the rank and the variant when a kernel is broken."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.processes import free_port

ROOT = Path(__file__).resolve().parents[1]
TINY_CPU = ["--recipe", "tiny", "--nodes", "1", "launch.device=cpu", "launch.gpus_per_node=1", "global_batch_size=4"]


# `mgn preflight` with the fused GatedNorm kernel returning 1.5 x its output (a broken kernel).
BROKEN_KERNEL = (
    "import sys; from megatron_gatednorm.ops._triton_utils import kernel_module; k = kernel_module(); "
    "good = k.gated_rms_norm; k.gated_rms_norm = lambda x, **kw: 1.5 * good(x, **kw); "
    "from megatron_gatednorm.cli import main; sys.exit(main(sys.argv[1:]))"
)
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def run_preflight(extra_env, *extra_args, entry=("-m", "megatron_gatednorm.cli")):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TRITON_INTERPRET", "MGN_NORM_IMPL")}
    env.update(PYTHONPATH=str(ROOT), **extra_env)
    return subprocess.run([sys.executable, *entry, "preflight", *TINY_CPU, *extra_args],
                          capture_output=True, text=True, env=env, cwd=ROOT)


def test_world_size_mismatch_fails_fast_naming_the_rank():
    out = run_preflight({"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "3"})
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith(
        "mgn preflight: error: rank 3/4 (")
    assert "world size 4 does not match recipe tiny: nodes=1 × gpus_per_node=1 = 1 ranks" in out.stderr


@pytest.mark.slow
def test_single_rank_preflight_matches_the_launcher_count():
    out = run_preflight({})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "mgn preflight: OK tiny: world 1 (tp 1 pp 1 ep 1 dp 1), parameters 101,184 = launcher count" in out.stdout
    assert "fused norm check skipped: launch.device=cpu (the fused kernels run compiled only on CUDA" in out.stdout


@pytest.mark.slow
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
@pytest.mark.slow
def test_two_rank_shards_sum_to_the_launcher_count(layout, shards):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    env.update(PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}",
           "-m", "megatron_gatednorm.cli", "preflight", "--recipe", "tiny", "--nodes", "1", "launch.device=cpu",
           "launch.gpus_per_node=2", *layout]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    from megatron_gatednorm.launch.plan import build

    expected = build("tiny", ["launch.device=cpu", "launch.gpus_per_node=2", *layout], 1)[0].derived["params_total"]
    assert f"mgn preflight: OK tiny: world 2 {shards}, parameters {expected:,} = launcher count" in out.stdout
    shard_counts = [int(line.rsplit(" ", 1)[1].replace(",", "")) for line in out.stdout.splitlines()
                    if "shard parameters" in line]
    assert len(shard_counts) == 2 and all(c > 0 for c in shard_counts) and sum(shard_counts) == expected, out.stdout


@no_cuda
def test_cuda_recipe_on_a_node_without_cuda_fails_instead_of_falling_back_to_cpu():
    out = run_preflight({}, "launch.device=cuda")
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("mgn preflight: error: rank 0/1 (")
    assert "launch.device=cuda but CUDA is not usable on this node: torch.cuda.is_available() is False" in last
    assert "or set launch.device=cpu to run on CPU (gloo) on purpose" in last
    assert "shard parameters" not in out.stdout  # stopped before the rendezvous and the model


@pytest.mark.slow
@no_cuda
def test_fused_check_in_the_interpreter_passes():
    out = run_preflight({"TRITON_INTERPRET": "1"}, "--fused-check=on")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert ("fused norm check passed (cpu bfloat16): gatednorm(hidden 64, rank 4): ok: max rel err "
            in out.stdout), out.stdout
    assert "mgn preflight: OK tiny" in out.stdout


@pytest.mark.slow
@no_cuda
def test_fused_check_fails_naming_the_rank_and_the_variant():
    out = run_preflight({"TRITON_INTERPRET": "1"}, "--fused-check=on", entry=("-c", BROKEN_KERNEL))
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("mgn preflight: error: rank 0/1 (")
    assert ("fused norm check failed (fused kernels vs eager reference): gatednorm(hidden 64, rank 4): "
            "max |fused - eager| / max |eager| above 0.05 (bfloat16): output 0.49") in last, last
    assert "mgn preflight: OK" not in out.stdout


@pytest.mark.slow
@pytest.mark.mcore019
def test_hybrid_model_shards_with_virtual_stages_sum_to_the_launcher_count():
    """tiny_hybrid as ``G|E|*|-`` at PP 2 (megatron-core 0.19.2 in .venv-mcore019): each rank builds one
    HybridModel chunk per virtual stage (segments ``vp·pp + rank``), together the launcher's count."""
    from helpers.slurm_cluster import in_ci

    venv_py = Path(os.environ.get("MGN_MCORE019_VENV", ROOT / ".venv-mcore019")) / "bin" / "python"
    if not venv_py.exists():
        if in_ci():
            pytest.fail(f"{venv_py} is missing under CI: run .ci/mcore019_venv.sh first")
        pytest.skip(f"{venv_py} is missing: .ci/mcore019_venv.sh creates it")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    env.update(PYTHONPATH=str(ROOT))
    layout = ["launch.device=cpu", "launch.gpus_per_node=2", "global_batch_size=4",
              "megatron.hybrid_layer_pattern=G|E|*|-", "megatron.pipeline_model_parallel_size=2"]
    cmd = [str(venv_py), "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}",
           "-m", "megatron_gatednorm.cli", "preflight", "--recipe", "tiny_hybrid", "--nodes", "1", *layout]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    from megatron_gatednorm.launch.plan import build

    expected = build("tiny_hybrid", layout, 1)[0].derived["params_total"]
    assert f"mgn preflight: OK tiny_hybrid: world 2 (tp 1 pp 2 ep 1 dp 1), parameters {expected:,} = launcher count" \
        in out.stdout, out.stdout[-2000:]
    shards = [int(line.rsplit(" ", 1)[1].replace(",", "")) for line in out.stdout.splitlines() if "shard parameters" in line]
    assert len(shards) == 2 and min(shards) > 0 and sum(shards) == expected, out.stdout
