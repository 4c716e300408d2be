"""Compile every fused norm kernel ahead of time for sm_90 (H100/H200) on any machine, no GPU
needed, and report registers, spills and shared memory per kernel from ``ptxas -v``.

For each variant × hidden size, the kernels and constexprs are those ``launch_plan`` picks for
16384 tokens of bf16 with bf16 parameters (Megatron ``--bf16``). The installed triton compiles
(its bundled ``ptxas``); register allocation may differ slightly between triton versions, so the
GPU check's own figures (``n_regs``/``n_spills`` of the loaded kernels) are the final word.

Usage: ``python benchmarks/compile_sm90.py [--hidden 4096 ...] [--json out.json]``; exits 1 if
any kernel spills.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compile, never interpret

VARIANTS = {"rmsnorm": (False, False), "preaffine": (True, False), "gatednorm": (False, True),
            "preaffine_gatednorm": (True, True)}
ACT = {"X", "OUT", "DO", "DX"}
PARAM = {"W", "S", "WD", "WU", "DW", "DS", "DGU", "DGD"}
INTS = {"M", "D", "n_blocks", "num_groups"}


def _signature(fn, constexprs, act="bf16", param="bf16"):
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in ACT:
            sig[name] = f"*{act}"
        elif name in PARAM:
            sig[name] = f"*{param}"
        elif name in INTS or name.startswith("stride"):
            sig[name] = "i32"
        elif name == "eps":
            sig[name] = "fp32"
        else:  # fp32 buffers: RSTD, Z, DZ, C and the partials
            sig[name] = "*fp32"
    return sig


def _constexprs(kernel: str, plan) -> tuple[dict, int]:
    """(constexprs, num_warps) of ``kernel`` under ``plan``, as GatedRMSNormFunction launches it."""
    flags = {"HAS_S": plan.pre, "ZERO_CENTERED": False}
    rank = {"R": max(plan.rank, 1), "RP": plan.rank_pad}
    dots = {"LOWP": True, "EMULATE": False}
    if kernel == "_fwd_row_kernel":
        return {"BM": plan.fwd_block_m, "BD": plan.fwd_block_d, **flags}, plan.fwd_warps
    if kernel == "_fwd_gated_kernel":
        return {"BM": plan.fwd_block_m, "BD": plan.fwd_block_d, **rank, **flags, **dots}, plan.fwd_warps
    if kernel == "_bwd_row_kernel":
        return {"BM": plan.bwd_block_m, "BD": plan.bwd_block_d, **flags}, plan.bwd_warps
    if kernel == "_bwd_stats_kernel":
        return ({"BM": plan.bwd_block_m, "BD": plan.bwd_block_d, **rank, "GATED": plan.gated, **flags, **dots},
                plan.bwd_warps)
    if kernel == "_bwd_cols_kernel":
        return ({"BM": plan.bwd_block_m, "BDW": plan.bwd_block_d_w, **rank, "GATED": plan.gated, **flags,
                 **dots}, plan.bwd_warps)
    assert kernel == "_bwd_reduce_kernel", kernel
    return {"BD": plan.reduce_block_d, **rank, "HAS_S": plan.pre, "GATED": plan.gated}, 4


def _ptxas_usage(ptx: str, ptxas: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.ptx"
        path.write_text(ptx)
        proc = subprocess.run([ptxas, "-arch=sm_90a", "-v", str(path), "-o", str(Path(tmp) / "k.cubin")],
                              capture_output=True, text=True)
    text = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"ptxas failed: {text[-500:]}")
    num = lambda pat: int(m.group(1)) if (m := re.search(pat, text)) else 0  # noqa: E731
    return {"registers": num(r"Used (\d+) registers"), "spill_stores": num(r"(\d+) bytes spill stores"),
            "spill_loads": num(r"(\d+) bytes spill loads"), "smem": num(r"(\d+) bytes smem"),
            "stack": num(r"(\d+) bytes stack frame")}


def _newest_ptxas(bin_dir: Path) -> str:
    """The bundled ptxas that accepts the PTX version triton emits (triton 3.9 ships a CUDA 12.9
    ``ptxas`` and a newer ``ptxas-blackwell``; the newer one also assembles sm_90)."""
    found = sorted(bin_dir.glob("ptxas*"), key=lambda p: p.name != "ptxas-blackwell")
    return str(found[0])


def compile_all(hidden_sizes, tokens=16384, rank=16, sms=132):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from megatron_gatednorm.ops import _triton_utils
    from megatron_gatednorm.ops import gated_rms_norm_triton as K

    ptxas = _newest_ptxas(Path(triton.__file__).parent / "backends" / "nvidia" / "bin")
    rows = []
    for d in hidden_sizes:
        for variant, (pre, gated) in VARIANTS.items():
            plan = _triton_utils.launch_plan(tokens, d, rank if gated else 0, pre=pre, sms=sms)
            for kernel in (plan.fwd_kernel, *plan.bwd_kernels):
                fn = getattr(K, kernel)
                constexprs, warps = _constexprs(kernel, plan)
                src = ASTSource(fn=fn, signature=_signature(fn, constexprs), constexprs=constexprs)
                row = {"variant": variant, "hidden": d, "kernel": kernel, "num_warps": warps, "triton": triton.__version__}
                try:
                    ck = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
                    row.update(_ptxas_usage(ck.asm["ptx"], ptxas))
                except Exception as e:  # one kernel failing to compile is a result, not a crash
                    row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
                rows.append(row)
                print(f"{variant:20s} d={d:<6d} {kernel:20s} warps={warps:<2d} " + (
                    f"regs={row['registers']:<4d} spill={row['spill_stores']}/{row['spill_loads']} B smem={row['smem']}"
                    if "error" not in row else row["error"]), flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, nargs="+", default=[2048, 4096, 8192, 16384])
    p.add_argument("--rank", type=int, default=16, help="gate rank of the gated variants")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    try:
        import triton  # noqa: F401
    except ImportError as e:
        print(f"compile_sm90: triton is not importable ({e}); nothing compiled", file=sys.stderr)
        return 2
    rows = compile_all(args.hidden, rank=args.rank)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    bad = [r for r in rows if r.get("error") or r.get("spill_stores") or r.get("spill_loads")]
    print(f"{len(rows)} kernels compiled for sm_90; {len(bad)} with spills or errors")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
