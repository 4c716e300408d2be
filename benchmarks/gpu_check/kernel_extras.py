"""GPU-only checks of the fused norm kernels, beyond tests/test_fused_ops.py. Measures:

* ``determinism``: each variant (rmsnorm, preaffine, gatednorm, preaffine_gatednorm) at
  16384x4096 bf16 with bf16 parameters, forward+backward twice: bit-exact rerun, and the
  relative error of out / dx / every parameter gradient against the float64 reference;
* ``over_2_31_elements``: a [262208, 8192] bf16 input (2^31 + 524288 elements): int64 indexing,
  head and tail rows of out and dx against float64, parameter gradients finite;
* ``cuda_graph``: a PreAffineGatedRMSNorm module (megatron_gatednorm/norms.py) fwd+bwd captured
  in a CUDA graph, replayed on new input: bit-exact against the same module run eagerly;
* ``torch_compile``: graph breaks of ``torch.compile`` on that module (``torch._dynamo.explain``)
  and the compiled fwd+bwd against the uncompiled one;
* ``registers``: registers and spills (``n_regs``/``n_spills``) of every compiled specialisation
  of every Triton kernel in the kernel module, with its constexpr arguments.

Writes one JSON file (``--out``), rewritten after each check. ``--cpu-smoke`` runs the same code on
tiny CPU shapes in triton's interpreter (the GPU-only checks record a skip): it tests this script,
not the kernels.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import types

import torch

try:  # imported as benchmarks.gpu_check.<helper> (the tests)
    from . import _common as C
except ImportError:  # run as a script: its folder is sys.path[0]
    import _common as C


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--budget-s", type=float, default=110.0, help="skip the remaining checks after this")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on CPU, triton interpreter")
    return p.parse_args(argv)


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def determinism(dev, rows, d):
    res = {"shape": [rows, d], "dtype": "bfloat16"}
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(rows, d, generator=g) * 3).bfloat16().to(dev)
    dy = torch.randn(rows, d, generator=g).bfloat16().to(dev)
    for variant in C.VARIANTS:
        params = C.norm_params(variant, d, torch.bfloat16, dev)
        a_out, a_g = C.fwd_bwd(C.fused_norm, x, dy, params)
        b_out, b_g = C.fwd_bwd(C.fused_norm, x, dy, params)
        r_out, r_g = C.fwd_bwd(
            C.reference_norm, x.double(), dy.double(), {k: v.double() for k, v in params.items()}
        )
        res[variant] = {
            "bit_exact_rerun": torch.equal(a_out, b_out) and all(torch.equal(a_g[k], b_g[k]) for k in a_g),
            "rel_err_vs_float64": {"out": C.rel_err(a_out, r_out), **{k: C.rel_err(a_g[k], r_g[k]) for k in a_g}},
        }
        del a_out, a_g, b_out, b_g, r_out, r_g
    return res


def over_2_31_elements(dev, cpu_smoke):
    if cpu_smoke:
        return {"skipped": "cpu smoke: needs ~20 GB of device memory"}
    d = 8192
    rows = 2**31 // d + 64  # element 2^31 starts row 262144; rows past it need int64 offsets
    x = torch.randn(rows, d, device=dev, dtype=torch.bfloat16)
    dy = torch.randn_like(x)
    res = {"numel": x.numel(), "shape": [rows, d]}
    for variant in ("preaffine", "preaffine_gatednorm"):
        params = C.norm_params(variant, d, torch.bfloat16, dev)
        out, grads = C.fwd_bwd(C.fused_norm, x, dy, params)
        _sync()
        errs = {}
        for part, sl in (("head", slice(0, 64)), ("tail", slice(rows - 128, rows))):
            r_out, r_g = C.fwd_bwd(
                C.reference_norm, x[sl].double(), dy[sl].double(), {k: v.double() for k, v in params.items()}
            )
            errs[f"out_{part}"] = C.rel_err(out[sl], r_out)
            errs[f"dx_{part}"] = C.rel_err(grads["x"][sl], r_g["x"])
        res[variant] = {
            "rel_err_vs_float64": errs,
            "param_grads_finite": all(bool(torch.isfinite(grads[k]).all()) for k in params),
        }
        del out, grads
        torch.cuda.empty_cache()
    return res


def _module(dev, d):
    """A PreAffineGatedRMSNorm as Megatron builds it with --bf16 (gate_up random, not zero)."""
    from megatron_gatednorm.norm_config import NormConfig
    from megatron_gatednorm.norms import PreAffineGatedRMSNorm

    torch.manual_seed(0)
    cfg = types.SimpleNamespace(
        params_dtype=torch.bfloat16, use_cpu_initialization=dev == "cpu", sequence_parallel=False,
        layernorm_zero_centered_gamma=False, init_method=lambda t: torch.nn.init.normal_(t, 0.0, 0.02),
    )
    return PreAffineGatedRMSNorm(cfg, d, eps=C.EPS, norm_config=NormConfig(gate_up_init="init_method"))


def _module_step(mod, x, dy):
    out = mod(x)
    out.backward(dy)
    return out


def _grads(mod, x):
    return [x.grad.clone()] + [p.grad.clone() for p in mod.parameters()]


def cuda_graph(dev, cpu_smoke):
    if cpu_smoke:
        return {"skipped": "cpu smoke: CUDA graphs need CUDA"}
    seq, batch, d = 2048, 2, 4096
    mod = _module(dev, d)
    x = torch.randn(seq, batch, d, device=dev, dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn(seq, batch, d, device=dev, dtype=torch.bfloat16)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (compilation, allocator) outside the capture
        for _ in range(3):
            x.grad = None
            mod.zero_grad(set_to_none=True)
            _module_step(mod, x, dy)
    torch.cuda.current_stream().wait_stream(side)
    x.grad = None
    mod.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = _module_step(mod, x, dy)
    new_x = torch.randn_like(x)
    with torch.no_grad():
        x.copy_(new_x)
    graph.replay()
    _sync()
    replay = [static_out.detach().clone()] + _grads(mod, x)
    graph.replay()
    _sync()
    replay2 = [static_out.detach().clone()] + _grads(mod, x)
    xe = new_x.detach().clone().requires_grad_()
    mod.zero_grad(set_to_none=True)
    eager = [_module_step(mod, xe, dy).detach()] + _grads(mod, xe)
    return {
        "impl": mod.impl_decision.reason,
        "replays_identical": all(torch.equal(a, b) for a, b in zip(replay, replay2)),
        "replay_bit_exact_vs_eager": all(torch.equal(a, b) for a, b in zip(replay, eager)),
        "max_rel_err_replay_vs_eager": max(C.rel_err(a, b) for a, b in zip(replay, eager)),
    }


def torch_compile(dev, cpu_smoke):
    import torch._dynamo

    seq, batch, d = (16, 2, 64) if cpu_smoke else (2048, 2, 4096)
    if cpu_smoke:  # dynamo cannot trace triton's interpreter: check this code on the eager path
        os.environ["MGN_NORM_IMPL"] = "eager"
    mod = _module(dev, d)
    x = torch.randn(seq, batch, d, device=dev, dtype=torch.bfloat16)
    dy = torch.randn_like(x)
    torch._dynamo.reset()
    explain = torch._dynamo.explain(mod)(x)
    reasons = [str(getattr(r, "reason", r))[:300] for r in explain.break_reasons]
    res = {
        "graph_count": explain.graph_count,
        "graph_break_count": explain.graph_break_count,
        "break_reasons": reasons[:10],
        "op_count": explain.op_count,
    }

    def run(m):
        xi = x.clone().requires_grad_()
        mod.zero_grad(set_to_none=True)
        return [_module_step(m, xi, dy).detach()] + _grads(mod, xi)

    eager = run(mod)
    torch._dynamo.reset()
    compiled = torch.compile(mod, backend="aot_eager" if cpu_smoke else "inductor")
    t = time.time()
    first = run(compiled)
    res["first_call_s"] = round(time.time() - t, 2)
    second = run(compiled)
    res["backend"] = "aot_eager" if cpu_smoke else "inductor"
    res["impl"] = mod.impl_decision.reason
    res["max_rel_err_compiled_vs_eager"] = max(C.rel_err(a, b) for a, b in zip(first, eager))
    res["compiled_reruns_bit_exact"] = all(torch.equal(a, b) for a, b in zip(first, second))
    return res


def registers(cpu_smoke):
    from megatron_gatednorm.ops._triton_utils import kernel_module

    if cpu_smoke:
        return {"skipped": "cpu smoke: the interpreter compiles nothing"}
    rows = []
    for name, fn in sorted(vars(kernel_module()).items()):
        for _ in range(3):  # autotune / heuristics wrappers keep the JITFunction in .fn
            if hasattr(fn, "device_caches") or not hasattr(fn, "fn"):
                break
            fn = fn.fn
        caches = getattr(fn, "device_caches", None)
        if not caches:
            continue
        arg_names = list(getattr(fn, "arg_names", []))
        for entry in list(caches.values()):
            cache = entry[0] if isinstance(entry, tuple) else entry
            for ck in list(cache.values()):
                if hasattr(ck, "_init_handles"):
                    ck._init_handles()
                meta = ck.metadata
                consts = getattr(getattr(ck, "src", None), "constants", None) or {}
                named = {}
                for k, v in consts.items():
                    idx = k[0] if isinstance(k, tuple) and len(k) == 1 else k
                    key = arg_names[idx] if isinstance(idx, int) and idx < len(arg_names) else str(k)
                    named[key] = str(v)
                rows.append({
                    "kernel": name, "n_regs": getattr(ck, "n_regs", None), "n_spills": getattr(ck, "n_spills", None),
                    "num_warps": getattr(meta, "num_warps", None), "num_stages": getattr(meta, "num_stages", None),
                    "shared_bytes": getattr(meta, "shared", None), "constexprs": named,
                })
    spilling = [r for r in rows if r["n_spills"]]
    return {"kernels": rows, "compiled_variants": len(rows), "with_spills": len(spilling),
            "max_regs": max((r["n_regs"] or 0 for r in rows), default=None)}


def main(argv=None) -> int:
    args = _parse(argv)
    C.select_kernel_mode(args.cpu_smoke)
    os.environ["MGN_NORM_IMPL"] = "fused"  # a module that cannot fuse raises instead of falling back
    import triton

    from megatron_gatednorm.ops._triton_utils import kernel_module

    if not args.cpu_smoke:
        reason = C.cuda_or_reason()
        if reason:
            C.fail("kernel_extras", f"needs CUDA: {reason}; --cpu-smoke checks this script on CPU")
    dev = "cpu" if args.cpu_smoke else "cuda"
    res = C.Results(args.out, "kernel_extras", args.budget_s)
    res.data["env"] = {
        "torch": torch.__version__, "triton": triton.__version__, "device": dev,
        "gpu": torch.cuda.get_device_name(0) if dev == "cuda" else None,
        # JITFunction: compiled; InterpretedFunction: triton's interpreter
        "kernel_objects": sorted({type(v).__name__ for v in vars(kernel_module()).values()
                                  if type(v).__module__.startswith("triton")}),
        "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET"),
    }
    rows, d = (40, 256) if args.cpu_smoke else (16384, 4096)
    res.check("determinism", determinism, dev, rows, d)
    res.check("cuda_graph", cuda_graph, dev, args.cpu_smoke)
    res.check("over_2_31_elements", over_2_31_elements, dev, args.cpu_smoke)
    budget, res.budget_s = res.budget_s, float("inf")  # the register table costs nothing: always
    res.check("registers", registers, args.cpu_smoke)
    res.budget_s = budget
    res.check("torch_compile", torch_compile, dev, args.cpu_smoke)  # last: its compile time is open-ended
    print(f"NOTE: {len(res.data['checks'])} checks in {time.time() - res.t0:.0f} s, errors: {res.data['errors']}",
          flush=True)
    return 1 if res.data["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
