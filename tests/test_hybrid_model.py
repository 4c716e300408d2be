"""megatron-core 0.19.2's HybridModel with the plugin's hybrid specs under tensor (+ sequence),
expert and pipeline parallelism, against its single-rank run: torchrun with 2 gloo processes on CPU inside
.venv-mcore019 (created by .ci/mcore019_venv.sh; CI's main environment has 0.16.1, which has no
HybridModel). The worker is tests/workers/hybrid_equivalence.py."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from helpers.equivalence import assert_tp_matches_tp1
from helpers.processes import free_port
from helpers.slurm_cluster import in_ci

pytestmark = [pytest.mark.slow, pytest.mark.mcore019, pytest.mark.distributed]

ROOT = Path(__file__).resolve().parents[1]
VENV_PY = Path(os.environ.get("MGN_MCORE019_VENV", ROOT / ".venv-mcore019")) / "bin" / "python"


def _torchrun_in_venv(tmp_path, worker, nproc=2):
    if not VENV_PY.exists():
        if in_ci():
            pytest.fail(f"{VENV_PY} is missing under CI: run .ci/mcore019_venv.sh first")
        pytest.skip(f"{VENV_PY} is missing: .ci/mcore019_venv.sh creates it")
    out, ckpt = tmp_path / "result.json", tmp_path / "ckpt"
    ckpt.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in (ROOT / "tests" / "workers", ROOT, ROOT / "tests"))}
    proc = subprocess.run(
        [str(VENV_PY), "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--master-port={free_port()}",
         str(ROOT / "tests" / "workers" / worker), "--out", str(out), "--ckpt", str(ckpt)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return _torchrun_in_venv(tmp_path_factory.mktemp("hybrid"), "hybrid_equivalence.py")


def test_hybrid_model_tp2_and_sequence_parallel_match_tp1(results):
    cases = {k: v for k, v in results.items() if not k.startswith("_") and "/sp=" in k}
    assert set(cases) == {"gatednorm/GE*-/sp=True", "preaffine_gatednorm-qk-clip/GE*-/sp=True", "gatednorm/G*-/sp=False"}
    for case, r in cases.items():
        assert_tp_matches_tp1(case, r)
        assert r["norm_kinds"] == r["ref_norm_kinds"], case
        names = r["grad_names"]
        # every residual-stream slot holds the plugin's norm: before Gated DeltaNet (layer 0),
        # before attention, before MLP/MoE, and the stack's final norm
        assert "decoder.layers.0.input_layernorm.gate_down" in names, case
        assert "decoder.final_norm.gate_down" in names, case
        assert any(n.endswith("pre_mlp_layernorm.gate_up") for n in names), case
        if case.startswith("preaffine"):
            assert r["norm_kinds"] == ["IdentityOp", "PreAffineGatedRMSNorm"], case
            assert "decoder.layers.2.self_attention.q_layernorm.pre_scale" in names, case  # qk placement
        else:
            assert r["norm_kinds"] == ["GatedRMSNorm", "IdentityOp", "RMSNorm"], case  # RMSNorm: QK-norm
        if "sp=True" in case:
            # Gated DeltaNet's internal out_norm (plain RMSNorm, not the plugin's residual norm) is
            # shared by the TP-sharded heads: with SP its gradient is summed over TP like every norm
            assert r["out_norm_grads_across_tp"] == 0.0 and r["out_norm_grads_vs_tp1"] < 1e-4, (case, r)


def test_hybrid_model_ep2_matches_single_rank(results):
    """Experts split over 2 ranks (alltoall dispatcher), loaded from the single-rank checkpoint."""
    cases = {k: v for k, v in results.items() if k.endswith("/ep=2")}
    assert set(cases) == {"gatednorm/GE*-/ep=2", "preaffine_gatednorm-qk-clip/GE*-/ep=2"}
    for case, r in cases.items():
        assert_tp_matches_tp1(case, r)
        assert (r["local_experts"], r["ref_local_experts"]) == (2, 4), case
        assert "decoder.final_norm.gate_down" in r["grad_names"], case


def test_hybrid_model_pp2_pattern_split_matches_single_rank(results):
    """``GE|*-``: Megatron's 1F1B schedule over two stages against no pipelining, every
    micro-batch's loss and the accumulated gradient of every plugin norm (both stages)."""
    cases = {k: v for k, v in results.items() if k.endswith("/pp=2")}
    assert set(cases) == {"gatednorm/GE*-/pp=2", "preaffine_gatednorm-qk-clip/GE*-/pp=2"}
    for case, r in cases.items():
        assert r["pattern"] == "GE|*-" and len(r["losses"]) == len(r["ref_losses"]) == 3, (case, r)
        assert len(set(r["ref_losses"])) == 3, (case, r)  # three different micro-batches
        assert r["loss"] < 1e-5, (case, r)
        assert r["grads_vs_pp1"] < 1e-4 and r["min_ref_grad_norm"] > 0, (case, r)
        assert r["grad_names"] == r["ref_grad_names"], case
        # stage 0's Gated DeltaNet norm (layer 0), stage 1's attention-side norm (layer 2) and final norm
        assert {"decoder.layers.0.input_layernorm.gate_down", "decoder.layers.2.input_layernorm.gate_down",
                "decoder.final_norm.gate_down"} <= set(r["grad_names"]), case
