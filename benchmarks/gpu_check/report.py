"""Bookkeeping of gpu_check.sh (no torch, no GPU): the run's metadata (date, commit, command,
a digest of the sources), one record per step (status, rc, seconds), pytest's JUnit XML and
ncu's CSV turned into JSON, and ``summary.json``: every step plus the key figures of each
helper's JSON, rewritten after every step so a killed run still leaves one.

Subcommands: ``init``, ``step``, ``junit``, ``ncu-metrics``, ``ncu``, ``get``, ``finish`` (used by
gpu_check.sh);
``digest`` (the source digest of this checkout, to match a result to a tree) and ``archive``
(copy a run's files into ``benchmarks/results/<date>-<commit>/``).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

try:  # imported as benchmarks.gpu_check.<helper> (the tests)
    from . import _common as C
except ImportError:  # run as a script: its folder is sys.path[0]
    import _common as C

DIGEST_GLOBS = ("megatron_gatednorm/**/*.py", "tests/test_fused_ops.py", "tests/conftest.py",
                "benchmarks/**/*.py", "benchmarks/*.sh")
BENCH_KEYS = ("summary", "targets", "failures", "skipped", "layer")


def _load(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _write(path, data):
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def _git(*args):
    try:
        p = subprocess.run(["git", "-C", str(C.REPO), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout.strip() if p.returncode == 0 else None


def tree_digest(root=C.REPO) -> str:
    """sha256 over the kernel, test and benchmark sources (paths and bytes), sorted."""
    h = hashlib.sha256()
    files = sorted({p for g in DIGEST_GLOBS for p in Path(root).glob(g) if "__pycache__" not in p.parts})
    for p in files:
        h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def init(args):
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": commit or os.environ.get("GPU_CHECK_COMMIT") or "unknown",
        "commit_source": "git" if commit else ("GPU_CHECK_COMMIT" if os.environ.get("GPU_CHECK_COMMIT") else None),
        "uncommitted_changes": None if status is None else bool(status),
        "tree_digest": tree_digest(), "command": args.command, "budget_s": args.budget,
        "host": os.uname().nodename,
    }
    _write(Path(args.work) / "meta.json", meta)
    print(json.dumps(meta))


# ---- per-step records and the summary ---------------------------------------------------------------


def step(args):
    status = "skipped" if args.skipped else {0: "ok", 124: "timeout", 137: "timeout"}.get(args.rc, "failed")
    rec = {"step": args.name, "status": status, "rc": None if args.skipped else args.rc,
           "seconds": args.seconds, "limit_s": args.limit, "command": args.cmd}
    if args.skipped:
        rec["reason"] = args.skipped
    if args.note:
        rec["note"] = args.note
    with open(Path(args.work) / "steps.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")
    summary(Path(args.work), Path(args.out))


def _compact(value):
    """Numbers rounded to 4 significant digits, long lists cut: key figures, not the full record."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: _compact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_compact(v) for v in value[:40]]
    return value


def _checks(data, keep):
    """Each check's error/skip, or the fields in ``keep`` (a key present in the check's dict)."""
    out = {}
    for name, res in (data or {}).get("checks", {}).items():
        if "error" in res or "skipped" in res:
            out[name] = {k: res[k] for k in ("error", "skipped") if k in res}
            continue
        out[name] = {k: v for k, v in res.items() if k in keep or isinstance(v, dict) and k in C.VARIANTS}
    return out


def _figures(work: Path, out: Path):
    env = _load(out / "env.json") or {}
    fig = {"env": {k: env.get(k) for k in ("torch", "torch_cuda", "cuda", "packages", "nvidia_smi", "ncu",
                                          "kernel_release")} if env else None}
    tests = _load(out / "kernel_tests.json")
    fig["kernel_tests"] = tests and {k: tests.get(k) for k in ("counts", "not_passed", "source")}
    fig["kernel_extras"] = _checks(_load(out / "kernel_extras.json"), {
        "replays_identical", "replay_bit_exact_vs_eager", "max_rel_err_replay_vs_eager", "impl",
        "graph_count", "graph_break_count", "break_reasons", "max_rel_err_compiled_vs_eager",
        "compiled_reruns_bit_exact", "first_call_s", "numel", "compiled_variants", "with_spills", "max_regs",
        "kernels"})
    regs = fig["kernel_extras"].get("registers", {})
    if isinstance(regs.get("kernels"), list):  # one line per compiled specialisation
        regs["kernels"] = sorted({f"{k['kernel']}: {k['n_regs']} regs, {k['n_spills']} spills, {k['num_warps']} warps"
                                  for k in regs["kernels"]})
    fig["gpt_tiny"] = _checks(_load(out / "gpt_tiny.json"), {
        "loss_rel_diff", "max_grad_rel_diff", "bit_exact", "fused_ms", "eager_ms", "fused_decisions",
        "norm_main_grads_nonzero"})
    # hybrid_tiny.json stays in the work folder ($OUT's 8 files are taken): its figures live here
    fig["hybrid_tiny"] = _checks(_load(work / "hybrid_tiny.json"), {
        "loss_rel_diff", "max_grad_rel_diff", "fused_decisions", "losses", "finite", "decreasing", "step_ms",
        "gated_delta_rule"})
    bench = _load(out / "bench.json")
    if isinstance(bench, dict):  # benchmarks/norms.py --json: its verdicts, not its every row
        fig["bench"] = {k: bench[k] for k in BENCH_KEYS if k in bench} or {"keys": sorted(bench)}
    else:
        fig["bench"] = None
    fig["ncu"] = _load(work / "ncu.json")
    return _compact(fig)


def summary(work: Path, out: Path):
    steps = [json.loads(line) for line in (work / "steps.jsonl").read_text().splitlines() if line.strip()] \
        if (work / "steps.jsonl").exists() else []
    data = {
        "meta": _load(work / "meta.json"), "steps": steps,
        "counts": {s: sum(r["status"] == s for r in steps) for s in ("ok", "failed", "timeout", "skipped")},
        "figures": _figures(work, out),
        "files": sorted({p.name for p in out.iterdir() if p.is_file() and not p.name.endswith(".tmp")}
                        | {"summary.json"}),
    }
    _write(out / "summary.json", data)


# ---- pytest JUnit XML -> JSON ----------------------------------------------------------------------

_VERBOSE = re.compile(r"^(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")
_SHORT = re.compile(r"^(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) (\S+::\S+)(?: - (.*))?")


def _from_xml(path):
    tests = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", None
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                message = (el.get("message") or el.text or "")[:500]
        cls = case.get("classname", "").replace(".", "/")
        tests.append({"id": f"{cls}.py::{case.get('name')}", "outcome": outcome,
                      "seconds": round(float(case.get("time") or 0), 3), "message": message})
    return tests


def _from_text(path):
    """Fallback when pytest was killed before writing the XML: its -v / -rA lines."""
    found = {}
    for line in Path(path).read_text(errors="replace").splitlines():
        m = _VERBOSE.match(line)
        if m:
            found[m.group(1)] = {"id": m.group(1), "outcome": m.group(2).lower(), "message": None}
            continue
        m = _SHORT.match(line)
        if m:
            found[m.group(2)] = {"id": m.group(2), "outcome": m.group(1).lower(), "message": m.group(3)}
    return list(found.values())


def junit(args):
    if Path(args.xml).exists():
        tests, source = _from_xml(args.xml), "junit xml"
    elif Path(args.text).exists():
        tests, source = _from_text(args.text), "pytest output (no junit xml: killed?)"
    else:
        tests, source = [], "nothing: pytest wrote neither xml nor output"
    counts = {}
    for t in tests:
        counts[t["outcome"]] = counts.get(t["outcome"], 0) + 1
    data = {"source": source, "counts": counts, "tests": tests,
            "not_passed": [f"{t['outcome']}: {t['id']}" for t in tests if t["outcome"] != "passed"]}
    _write(args.out, data)
    print(f"kernel_tests: {counts} ({source})")


# ---- ncu CSV -----------------------------------------------------------------------------------

NCU_METRICS = {  # ncu metric -> short key in ncu.json
    "gpu__time_duration.sum": "ns", "dram__bytes_read.sum": "dram_read", "dram__bytes_write.sum": "dram_write",
    "lts__t_bytes.sum": "l2_bytes", "launch__registers_per_thread": "regs", "launch__grid_size": "grid",
    "sm__warps_active.avg.pct_of_peak_sustained_active": "warps_active_pct",
}


def _number(text):
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def parse_ncu(lines, tokens, hidden):
    """ncu ``--csv --page raw --print-units base`` lines -> (csv rows, per-case figures)."""
    rows = list(csv.reader(line for line in lines if line.startswith('"')))
    header = next((i for i, r in enumerate(rows) if r and r[0] == "ID"), None)
    if header is None:
        return [], None
    cols, data = rows[header], [r for r in rows[header + 1:] if r and r[0].strip().isdigit()]
    cases, current = {}, None
    names = iter(C.NCU_CASES)
    for r in data:
        rec = dict(zip(cols, r))
        kernel = rec.get("Kernel Name", "?")
        if C.NCU_DELIMITER in kernel:
            current = next(names, f"extra_{len(cases)}")
            cases[current] = []
            continue
        k = {"kernel": kernel[:80], **{short: _number(rec[m]) for m, short in NCU_METRICS.items() if m in rec}}
        cases.setdefault(current or "before_first_case", []).append(k)
    unit = tokens * hidden * 2  # bytes of one bf16 [tokens, hidden] tensor ("1 d" per token)
    figures = {}
    for name, kernels in cases.items():
        dram = sum((k.get("dram_read") or 0) + (k.get("dram_write") or 0) for k in kernels)
        figures[name] = {"kernels": kernels, "us": round(sum(k.get("ns") or 0 for k in kernels) / 1e3, 2),
                         "dram_bytes": dram, "dram_in_tensor_units": round(dram / unit, 2)}
    return rows[header:], figures


def ncu(args):
    text = Path(args.raw).read_text(errors="replace") if Path(args.raw).exists() else ""
    lines = text.splitlines()
    rows, figures = parse_ncu(lines, args.tokens, args.hidden)
    if rows:
        with open(args.csv, "w", newline="") as f:
            csv.writer(f).writerows(rows)
    problems = [line for line in lines if line.startswith("==ERROR==") or line.startswith("==WARNING==")]
    result = {"rows": sum(1 for r in rows[1:] if r and r[0].strip().isdigit()), "shape": [args.tokens, args.hidden], "cases": figures,
              "problems": problems[:10]}
    if not figures:
        result["unavailable"] = (problems[0] if problems else "ncu printed no CSV rows (killed, or no kernels profiled)")
    _write(Path(args.work) / "ncu.json", result)
    print("\n".join(line for line in lines if not line.startswith('"')))  # ncu's own messages, for the log
    print(f"ncu: {result['rows']} kernel rows" + (f"; {result['unavailable']}" if not figures else ""))


# ---- small utilities -------------------------------------------------------------------------------


def get(args):
    value = _load(args.file)
    for key in args.key.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    if value is None:
        return 1
    print(int(value) if isinstance(value, bool) else value)
    return 0


def archive(args):
    src = Path(args.src)
    meta = (_load(src / "summary.json") or {}).get("meta")
    if not meta:
        C.fail("report archive", f"{src}/summary.json has no meta (not a gpu_check.sh output folder?)")
    dest = Path(args.dest) / f"{meta['date'][:10]}-{meta['commit'][:10]}"
    n = 1
    while dest.exists():
        n += 1
        dest = dest.with_name(f"{meta['date'][:10]}-{meta['commit'][:10]}-{n}")
    shutil.copytree(src, dest)
    print(dest)


def finish(args):
    """Rewrite summary.json, print it in short (the tail of the device tool's output); rc 1 if a
    step failed or timed out."""
    summary(Path(args.work), Path(args.out))
    data = _load(Path(args.out) / "summary.json")
    meta = data.get("meta") or {}
    print(f"gpu_check {meta.get('date')} commit {meta.get('commit')} digest {meta.get('tree_digest')}: {data.get('counts')}")
    for r in data.get("steps", []):
        extra = r.get("reason") or r.get("note") or ""
        print(f"  {r['step']:<14} {r['status']:<8} rc={r['rc']!s:<5} {r['seconds']:>6.1f} s  {extra}"[:300])
    text = json.dumps(data.get("figures"), default=str)
    print("figures: " + (text if len(text) <= args.max_chars else text[: args.max_chars] + " ...(cut; see summary.json)"))
    return 1 if data["counts"]["failed"] or data["counts"]["timeout"] else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="verb", required=True)
    s = sub.add_parser("init", help="write the run's metadata")
    s.add_argument("--work", required=True)
    s.add_argument("--command", required=True)
    s.add_argument("--budget", type=int, required=True)
    s = sub.add_parser("step", help="record one step and rewrite summary.json")
    s.add_argument("--work", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--name", required=True)
    s.add_argument("--rc", type=int, default=None)
    s.add_argument("--seconds", type=float, default=0.0)
    s.add_argument("--limit", type=int, default=None)
    s.add_argument("--cmd", default=None)
    s.add_argument("--skipped", default=None, help="the reason, for a step that did not run")
    s.add_argument("--note", default=None)
    s = sub.add_parser("finish", help="rewrite summary.json and print it in short; rc 1 if a step failed")
    s.add_argument("--work", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--max-chars", type=int, default=9000)
    s = sub.add_parser("junit", help="pytest JUnit XML (or -v output) -> JSON")
    s.add_argument("--xml", required=True)
    s.add_argument("--text", required=True)
    s.add_argument("--out", required=True)
    s = sub.add_parser("ncu", help="ncu output -> clean CSV + per-case figures")
    s.add_argument("--raw", required=True)
    s.add_argument("--csv", required=True)
    s.add_argument("--work", required=True)
    s.add_argument("--tokens", type=int, default=C.NCU_SHAPE[0])
    s.add_argument("--hidden", type=int, default=C.NCU_SHAPE[1])
    sub.add_parser("ncu-metrics", help="print the metrics to ask ncu for (comma-separated)")
    s = sub.add_parser("get", help="print FILE's dotted KEY (booleans as 0/1); rc 1 if absent")
    s.add_argument("file")
    s.add_argument("key")
    sub.add_parser("digest", help="print the source digest of this checkout")
    s = sub.add_parser("archive", help="copy a gpu_check output folder into benchmarks/results/<date>-<commit>/")
    s.add_argument("src")
    s.add_argument("--dest", default=str(C.REPO / "benchmarks" / "results"))
    args = p.parse_args(argv)
    if args.verb == "digest":
        print(tree_digest())
    elif args.verb == "ncu-metrics":
        print(",".join(NCU_METRICS))
    else:
        commands = {"init": init, "step": step, "junit": junit, "ncu": ncu, "get": get, "finish": finish, "archive": archive}
        return commands[args.verb](args) or 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
