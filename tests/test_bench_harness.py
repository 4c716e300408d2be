"""The plumbing of ``benchmarks/norms.py`` on CPU: JSON structure, correctness gating, failure
isolation, design bytes and target evaluation. Timings are not checked (they are meaningless
here); the GPU behaviour of the harness is not covered."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megatron_gatednorm.ops import traffic
from megatron_gatednorm.ops._triton_utils import INTERPRETER_SMS, launch_plan, triton_status

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "norms.py"


@pytest.fixture(scope="module")
def bench():
    """``benchmarks/norms.py`` imported as a module (it imports neither triton nor the kernels)."""
    spec = importlib.util.spec_from_file_location("bench_norms", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """``--cpu-smoke --json``, run once in a subprocess (~15 s on 2 idle cores)."""
    if not triton_status()[0]:
        pytest.skip(f"triton not importable: {triton_status()[1]}")
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", "--json", str(out)],
                          capture_output=True, text=True, timeout=240, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "NOT performance" in proc.stdout
    return json.loads(out.read_text())


@pytest.mark.slow
def test_cpu_smoke_rows_pass_and_are_timed(smoke, bench):
    assert smoke["mode"] == "cpu-smoke" and smoke["timings_meaningful"] is False
    assert smoke["failures"] == []
    env = smoke["env"]
    assert env["torch"] == torch.__version__ and env["triton"] and env["sms"] == INTERPRETER_SMS
    assert {"gpu", "commit", "megatron_core", "dtype"} <= set(env)
    hidden, tokens = bench.PRESETS["cpu-smoke"]["hidden"], bench.PRESETS["cpu-smoke"]["tokens"]
    providers = {"torch_rmsnorm", "fused_rmsnorm", "fused_preaffine", "fused_gatednorm",
                 "fused_preaffine_gatednorm", "eager_gatednorm"}
    got = {(r["provider"], r["hidden"], r["tokens"]) for r in smoke["rows"]}
    assert got >= {(p, d, t) for p in providers for d in hidden for t in tokens}
    assert {(c["hidden"], c["tokens"]) for c in smoke["copy"]} == {(d, t) for d in hidden for t in tokens}
    for r in smoke["rows"]:
        assert r["status"] == "ok", r
        assert r["correctness"]["verdict"] == "PASS", r["correctness"]
        assert set(r["correctness"]["errors"]) >= {"out", "dx", "weight"}
        assert r["floor_bytes"] == traffic.floor_bytes(r["tokens"], r["hidden"], 2)
        for phase in ("fwd", "bwd", "fwd+bwd"):
            p = r["phases"][phase]
            assert p["ms"] > 0 and p["floor_bytes"] == r["floor_bytes"][phase]
            assert p["achieved_tbps"] == pytest.approx(p["floor_bytes"] / p["ms"] / 1e9)
    assert set(smoke["skipped"]) >= {"compile_gatednorm"}
    assert "skipped" in smoke["layer"]


def test_cpu_smoke_design_bytes_are_the_traffic_model(smoke):
    fused = [r for r in smoke["rows"] if r["fused"]]
    assert {r["provider"] for r in fused} == {
        "fused_rmsnorm", "fused_preaffine", "fused_gatednorm", "fused_preaffine_gatednorm"}
    for r in fused:
        plan = launch_plan(r["tokens"], r["hidden"], r["rank"], pre="preaffine" in r["variant"], sms=INTERPRETER_SMS)
        model = traffic.design_bytes(plan, 2, 2)  # bf16 activations and parameters
        totals = {ph: sum(k.total for k in model[ph].values()) for ph in ("fwd", "bwd")}
        totals["fwd+bwd"] = totals["fwd"] + totals["bwd"]
        assert r["design"]["bytes"] == totals
        assert {ph: set(ks) for ph, ks in r["design"]["kernels"].items()} == {ph: set(ks) for ph, ks in model.items()}
        for phase, total in totals.items():
            assert r["phases"][phase]["design_bytes"] == total
    assert not any("design" in r for r in smoke["rows"] if not r["fused"])


def test_cpu_smoke_targets_unmeasured_with_reason(smoke, bench):
    assert set(smoke["targets"]) == set(bench.TARGETS)
    for name, t in smoke["targets"].items():
        assert t["measured"] is None and t["pass"] is None, name
        assert "cpu-smoke" in t["reason"] and t["limit"] == bench.TARGETS[name]["limit"]


def _cpu_context(bench):
    return bench.make_context(bench.parse_args(["--cpu-smoke"]))


def test_failing_providers_are_recorded_and_the_others_run(bench):
    def boom(x, p):
        raise RuntimeError("injected failure")

    def wrong(x, p):
        return bench._torch_call(x, p) * 1.1

    providers = [
        bench.Provider("boom", "rmsnorm", boom),
        bench.Provider("wrong", "rmsnorm", wrong),
        bench.Provider("torch_rmsnorm", "rmsnorm", bench._torch_call),
        bench.Provider("eager_gatednorm", "gatednorm", bench._reference_call),
    ]
    ctx = _cpu_context(bench)
    bench.sweep(ctx, providers, [(8, 32)])
    rows = {r["provider"]: r for r in ctx.results["rows"]}
    assert rows["boom"]["status"] == "error" and "injected failure" in rows["boom"]["error"]
    assert rows["wrong"]["status"] == "FAIL" and "phases" not in rows["wrong"]
    assert rows["wrong"]["correctness"]["over_tolerance"] == ["out", "dx", "weight"]
    for name in ("torch_rmsnorm", "eager_gatednorm"):
        assert rows[name]["status"] == "ok" and rows[name]["correctness"]["verdict"] == "PASS"
        assert set(rows[name]["phases"]) == {"fwd", "bwd", "fwd+bwd"}
    assert [f["where"].split()[0] for f in ctx.results["failures"]] == ["boom", "wrong"]


def _row(provider, hidden, ms, status="ok"):
    phases = {ph: {"ms": ms * k} for ph, k in (("fwd", 0.4), ("bwd", 0.6), ("fwd+bwd", 1.0))}
    return {"provider": provider, "hidden": hidden, "tokens": 16384, "dtype": "bf16", "status": status,
            "phases": phases, "error": "boom"}


def test_targets_from_rows_and_layer(bench):
    rows = [_row("fused_gatednorm", 4096, 0.2), _row("fused_preaffine", 2048, 0.11),
            _row("torch_rmsnorm", 2048, 0.1), _row("fused_preaffine", 4096, 0.1),
            _row("torch_rmsnorm", 4096, 0.1, status="error")]
    layer = {"config": {"hidden": 4096, "dtype": "bf16"},
             "variants": {"rmsnorm": {"ms": 40.0}, "gatednorm": {"ms": 40.12}}}
    t = bench.evaluate_targets(rows, layer, None)
    assert t["gatednorm_fwd_d4096"]["measured"] == pytest.approx(0.08) and t["gatednorm_fwd_d4096"]["pass"]
    assert t["gatednorm_fwd_bwd_d4096"]["measured"] == pytest.approx(0.2) and t["gatednorm_fwd_bwd_d4096"]["pass"]
    r2048 = t["preaffine_vs_torch_rmsnorm_fwd_bwd_d2048"]
    assert r2048["measured"] == pytest.approx(1.1) and r2048["pass"] is False
    r4096 = t["preaffine_vs_torch_rmsnorm_fwd_bwd_d4096"]
    assert r4096["measured"] is None and "torch_rmsnorm" in r4096["reason"] and "error" in r4096["reason"]
    assert "not in this run" in t["preaffine_vs_torch_rmsnorm_fwd_bwd_d8192"]["reason"]
    overhead = t["layer_gatednorm_overhead_d4096"]
    assert overhead["measured"] == pytest.approx(0.3) and overhead["pass"]
    skipped = bench.evaluate_targets(rows, {"skipped": "--no-layer"}, None)["layer_gatednorm_overhead_d4096"]
    assert skipped["measured"] is None and "--no-layer" in skipped["reason"]


def test_kernel_table_matches_design_kernels(bench):
    design = {"_fwd_gated_kernel": {"total": 2_000_000}, "_bwd_reduce_kernel": {"total": 1000}}
    spans = [("_fwd_gated_kernel", 10.0), ("_fwd_gated_kernel", 12.0), ("void at::native::fill", 1.0),
             ("_bwd_reduce_kernel_0d1d2", 2.0)]
    table = {r["kernel"]: r for r in bench.kernel_table(spans, 2, design)}
    assert table["_fwd_gated_kernel"]["us"] == 11.0 and table["_fwd_gated_kernel"]["calls"] == 1
    assert table["_fwd_gated_kernel"]["design_tbps"] == pytest.approx(2e6 / 11.0 / 1e6)
    assert table["_bwd_reduce_kernel_0d1d2"]["design_kernel"] == "_bwd_reduce_kernel"
    assert "design_bytes" not in table["void at::native::fill"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA exit")
def test_without_cuda_nothing_is_measured(bench, capsys):
    assert bench.main(["--json", "unused.json"]) == 2
    assert "nothing was measured" in capsys.readouterr().err
    assert not Path("unused.json").exists()
