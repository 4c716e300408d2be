"""The GPU check's plumbing, on CPU: ``benchmarks/gpu_check.sh`` with CUDA hidden runs to the end,
writes valid JSON, and records every CUDA step as skipped with the reason; its report helper turns
pytest's JUnit XML and ncu's CSV into JSON; the GPU helpers import and answer ``--help`` without
CUDA. The GPU steps themselves run only on a GPU machine (benchmarks/README.md)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))

# as a package: the helpers' own "_common" must not meet tests/workers/_common.py
from benchmarks.gpu_check import report  # noqa: E402

CUDA_STEPS = ("kernel_tests", "kernel_extras", "gpt_tiny", "hybrid_tiny", "ncu", "bench")


def test_gpu_check_without_cuda(tmp_path):
    out, wheels = tmp_path / "out", tmp_path / "no_wheels"
    wheels.mkdir()
    env = dict(os.environ, OUT=str(out), CUDA_VISIBLE_DEVICES="", GPU_CHECK_BUDGET_S="120",
               GPU_CHECK_WHEELS=str(wheels), GPU_CHECK_COMMIT="0123456789abcdef")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # the script's python3 = this one
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["env.json", "gpu_check.log", "summary.json"]
    assert json.loads((out / "env.json").read_text())["cuda"]["available"] is False
    summary = json.loads((out / "summary.json").read_text())
    meta = summary["meta"]
    assert meta["date"].endswith("Z") and meta["commit"] and len(meta["tree_digest"]) == 16
    assert meta["command"].startswith("bash benchmarks/gpu_check.sh") and "GPU_CHECK_BUDGET_S=120" in meta["command"]
    steps = {s["step"]: s for s in summary["steps"]}
    assert list(steps) == ["env", "install_mcore", *CUDA_STEPS]
    assert steps["env"]["status"] == "ok" and steps["env"]["rc"] == 0
    assert "no wheels" in steps["install_mcore"]["reason"]
    for name in CUDA_STEPS:
        assert steps[name]["status"] == "skipped" and steps[name]["rc"] is None
        assert "needs CUDA" in steps[name]["reason"] and "is_available() is False" in steps[name]["reason"]
    assert summary["counts"] == {"ok": 1, "failed": 0, "timeout": 0, "skipped": 7}
    log = (out / "gpu_check.log").read_text()
    assert "=== [kernel_tests] skipped: needs CUDA" in log and "=== done in" in log


def test_usage_errors(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), GPU_CHECK_BUDGET_S="8 min")
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "gpu_check.sh: GPU_CHECK_BUDGET_S must be a whole number of seconds, not '8 min'")
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh")], cwd=tmp_path, capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "run it from the repository root" in proc.stderr


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" tests="3">
<testcase classname="tests.test_fused_ops" name="test_matches_float64_reference[gated-1x72]" time="0.5"/>
<testcase classname="tests.test_fused_ops" name="test_deterministic" time="0.1">
<failure message="AssertionError: weight">trace</failure></testcase>
<testcase classname="tests.test_fused_ops" name="test_gpt_model_fused_matches_eager" time="0">
<skipped message="CPU-only test"/></testcase></testsuite></testsuites>"""


def test_junit_and_pytest_output_to_json(tmp_path):
    (tmp_path / "junit.xml").write_text(JUNIT)
    report.main(["junit", "--xml", str(tmp_path / "junit.xml"), "--text", "-", "--out", str(tmp_path / "a.json")])
    a = json.loads((tmp_path / "a.json").read_text())
    assert a["counts"] == {"passed": 1, "failed": 1, "skipped": 1}
    assert a["tests"][1] == {"id": "tests/test_fused_ops.py::test_deterministic", "outcome": "failed",
                             "seconds": 0.1, "message": "AssertionError: weight"}
    # pytest killed before writing the XML: its -v lines and -rA summary are read instead
    (tmp_path / "out.txt").write_text(
        "tests/test_fused_ops.py::test_a[x-1] PASSED                  [ 50%]\n"
        "tests/test_fused_ops.py::test_b FAILED                        [100%]\n"
        "FAILED tests/test_fused_ops.py::test_b - AssertionError: dx\n")
    report.main(["junit", "--xml", str(tmp_path / "none.xml"), "--text", str(tmp_path / "out.txt"),
                 "--out", str(tmp_path / "b.json")])
    b = json.loads((tmp_path / "b.json").read_text())
    assert b["counts"] == {"passed": 1, "failed": 1} and "killed" in b["source"]
    assert b["not_passed"] == ["failed: tests/test_fused_ops.py::test_b"]


def _ncu_rows():
    head = ["ID", "Kernel Name", "Grid Size", *report.NCU_METRICS]
    units = ["", "", "", "nsecond", "byte", "byte", "byte", "register/thread", "", "%"]
    rows = [head, units]
    kernels = ["at::cuda::spin_kernel", "rms_norm_fwd", "rms_norm_bwd"]
    for case in report.C.NCU_CASES[1:]:
        kernels += ["at::cuda::spin_kernel", f"{case}_fwd", f"{case}_bwd", "vectorized_elementwise_kernel"]
    for i, k in enumerate(kernels):
        rows.append([str(i), k, "(512, 1, 1)", "10,000", "134,217,728", "67108864", "1", "96", "512", "50"])
    return rows


def test_ncu_csv_split_by_case(tmp_path):
    lines = ["==PROF== Connected to process 123", "ncu_target: profiled ..."]
    lines += [",".join(f'"{c}"' for c in row) for row in _ncu_rows()]
    (tmp_path / "ncu.out").write_text("\n".join(lines) + "\n")
    report.main(["ncu", "--raw", str(tmp_path / "ncu.out"), "--csv", str(tmp_path / "ncu.csv"), "--work", str(tmp_path)])
    res = json.loads((tmp_path / "ncu.json").read_text())
    assert list(res["cases"]) == list(report.C.NCU_CASES) and res["rows"] == 3 + 4 * 4
    fused = res["cases"]["fused_preaffine_gatednorm"]
    assert [k["kernel"] for k in fused["kernels"]] == [
        "fused_preaffine_gatednorm_fwd", "fused_preaffine_gatednorm_bwd", "vectorized_elementwise_kernel"]
    assert fused["us"] == 30.0 and fused["dram_bytes"] == 3 * (134217728 + 67108864)
    assert fused["dram_in_tensor_units"] == 4.5  # 3 x 1.5 tensors of 16384 x 4096 bf16
    assert (tmp_path / "ncu.csv").read_text().startswith("ID,Kernel Name")
    # ncu unable to read counters: no rows, the error is the reason
    (tmp_path / "ncu.out").write_text("==PROF== Connected\n==ERROR== Failed to initialize the profiler\n")
    report.main(["ncu", "--raw", str(tmp_path / "ncu.out"), "--csv", str(tmp_path / "x.csv"), "--work", str(tmp_path)])
    res = json.loads((tmp_path / "ncu.json").read_text())
    assert res["cases"] is None and res["unavailable"] == "==ERROR== Failed to initialize the profiler"


@pytest.mark.parametrize("helper", ["kernel_extras", "gpt_tiny", "hybrid_tiny", "ncu_target", "env"])
def test_helpers_import_and_help_without_cuda(helper, capsys):
    mod = importlib.import_module(f"benchmarks.gpu_check.{helper}")
    assert mod.__doc__.strip() and callable(mod.main)
    with pytest.raises(SystemExit) as e:
        mod.main(["--help"])
    assert e.value.code == 0 and "usage:" in capsys.readouterr().out


def test_register_table_from_triton_caches(monkeypatch):
    """kernel_extras reads n_regs/n_spills from triton 3.x's per-device kernel caches."""
    import types

    from benchmarks.gpu_check import kernel_extras

    ck = types.SimpleNamespace(
        n_regs=168, n_spills=0, metadata=types.SimpleNamespace(num_warps=8, num_stages=3, shared=1024),
        src=types.SimpleNamespace(constants={(2,): 128}), _init_handles=lambda: None)
    jit = types.SimpleNamespace(arg_names=["X", "Y", "BD"], device_caches={0: ({"key": ck}, {}, None, None, None)})
    fake = types.SimpleNamespace(_fwd_kernel=types.SimpleNamespace(fn=jit), torch=object())
    monkeypatch.setattr("megatron_gatednorm.ops._triton_utils.kernel_module", lambda: fake)
    table = kernel_extras.registers(cpu_smoke=False)
    assert table["kernels"] == [{"kernel": "_fwd_kernel", "n_regs": 168, "n_spills": 0, "num_warps": 8,
                                 "num_stages": 3, "shared_bytes": 1024, "constexprs": {"BD": "128"}}]
    assert table["with_spills"] == 0 and table["max_regs"] == 168


def test_summary_figures(tmp_path):
    """summary.json's figures: each helper's checks cut to the key numbers, errors and skips kept."""
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir(), work.mkdir()
    (out / "kernel_extras.json").write_text(json.dumps({"checks": {
        "determinism": {"shape": [2, 8], "gatednorm": {"bit_exact_rerun": True, "rel_err_vs_float64": {"x": 1.23456e-3}}},
        "cuda_graph": {"error": "RuntimeError: capture failed", "seconds": 1.0},
        "registers": {"kernels": [{"kernel": "_bwd", "n_regs": 255, "n_spills": 28, "num_warps": 4}],
                      "with_spills": 1, "max_regs": 255}}}))
    (out / "gpt_tiny.json").write_text(json.dumps({"checks": {
        "gatednorm/recompute": {"bit_exact": True, "max_grad_rel_diff": 0.0, "worst_grads": {"a": 0.0}}}}))
    (out / "bench.json").write_text(json.dumps({"rows": [1, 2], "targets": {"t": {"pass": False}}}))
    (work / "hybrid_tiny.json").write_text(json.dumps({"checks": {
        "gatednorm/train": {"losses": [3.6, 3.2], "finite": True, "decreasing": True, "parameters": 10},
        "rmsnorm/train": {"skipped": "time budget of 55 s used up"}}}))
    report.main(["step", "--work", str(work), "--out", str(out), "--name", "gpt_tiny", "--rc", "124",
                 "--seconds", "110.2", "--limit", "110", "--cmd", "python3 gpt_tiny.py", "--note", ""])
    s = json.loads((out / "summary.json").read_text())
    assert s["steps"] == [{"step": "gpt_tiny", "status": "timeout", "rc": 124, "seconds": 110.2, "limit_s": 110,
                           "command": "python3 gpt_tiny.py"}]
    fx = s["figures"]["kernel_extras"]
    assert fx["determinism"] == {"gatednorm": {"bit_exact_rerun": True, "rel_err_vs_float64": {"x": 0.001235}}}
    assert fx["cuda_graph"] == {"error": "RuntimeError: capture failed"}
    assert fx["registers"]["kernels"] == ["_bwd: 255 regs, 28 spills, 4 warps"]
    assert s["figures"]["gpt_tiny"] == {"gatednorm/recompute": {"bit_exact": True, "max_grad_rel_diff": 0.0}}
    assert s["figures"]["bench"] == {"targets": {"t": {"pass": False}}}
    assert s["figures"]["hybrid_tiny"] == {"gatednorm/train": {"losses": [3.6, 3.2], "finite": True, "decreasing": True},
                                           "rmsnorm/train": {"skipped": "time budget of 55 s used up"}}
    assert s["files"] == ["bench.json", "gpt_tiny.json", "kernel_extras.json", "summary.json"]
