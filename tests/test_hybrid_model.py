"""megatron-core 0.19.2's HybridModel with the plugin's hybrid specs under tensor (+ sequence)
parallelism, against its single-rank run: torchrun with 2 gloo processes on CPU inside
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


def test_hybrid_model_tp2_and_sequence_parallel_match_tp1(tmp_path):
    results = _torchrun_in_venv(tmp_path, "hybrid_equivalence.py")
    cases = {k: v for k, v in results.items() if not k.startswith("_")}
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
