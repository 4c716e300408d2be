"""Shared by the GPU-check helpers: JSON result files, guarded timed checks, the norm variants'
parameters and calls. Measures nothing itself. Imports torch only inside the functions that need
it, so ``report.py`` (run after every step of ``gpu_check.sh``) starts in milliseconds.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # the helpers run as scripts: make megatron_gatednorm importable
    sys.path.insert(0, str(REPO))

# the four variants the fused kernels cover, in the order every helper reports them
VARIANTS = ("rmsnorm", "preaffine", "gatednorm", "preaffine_gatednorm")
# what ncu_target.py profiles, in launch order; report.py splits ncu's rows by this list
NCU_CASES = ("torch_rms_norm",) + tuple(f"fused_{v}" for v in VARIANTS)
NCU_DELIMITER = "spin_kernel"  # torch.cuda._sleep's kernel, launched before each case
NCU_SHAPE = (16384, 4096)  # tokens, hidden
EPS = 1e-5
RANK = 16


def fail(tool: str, message: str, code: int = 2) -> None:
    """A user error: one line on stderr, non-zero exit."""
    print(f"{tool}: {message}", file=sys.stderr)
    sys.exit(code)


def select_kernel_mode(cpu_smoke: bool) -> None:
    """Triton's interpreter for a CPU smoke run, compiled kernels otherwise; call before the
    fused kernels are first defined (triton fixes the mode then)."""
    if cpu_smoke:
        os.environ["TRITON_INTERPRET"] = "1"
    else:
        os.environ.pop("TRITON_INTERPRET", None)


def cuda_or_reason():
    """``None`` if a CUDA device is usable, else the reason (one line)."""
    import torch

    if torch.cuda.is_available():
        return None
    return f"no CUDA device (torch {torch.__version__}: torch.cuda.is_available() is False)"


def start_megatron_helper(tool: str, cpu_smoke: bool, module: str = "megatron.core",
                          requirement: str = "megatron-core") -> None:
    """The start of a helper that builds Megatron models: the kernel mode, CUDA (unless
    ``cpu_smoke``), ``module`` importable, then torch.distributed and Megatron's parallel state —
    NCCL on CUDA; gloo and the project's CPU shim only where CUDA is absent."""
    import importlib

    select_kernel_mode(cpu_smoke)
    if not cpu_smoke:
        reason = cuda_or_reason()
        if reason:
            fail(tool, f"needs CUDA: {reason}; --cpu-smoke checks this script on CPU")
    try:
        importlib.import_module(module)
    except ImportError as e:
        fail(tool, f"needs {requirement} ({e}); gpu_check.sh installs megatron-core 0.19.2 from .whl/")
    from megatron_gatednorm.distributed import init_distributed

    init_distributed()


def error_text(e: BaseException, limit: int = 1500) -> str:
    return f"{type(e).__name__}: {e}"[:limit]


class Results:
    """A JSON result file rewritten (atomically) after every check, so a timeout keeps what ran."""

    def __init__(self, path, tool: str, budget_s: float = float("inf")):
        self.path, self.tool, self.budget_s = Path(path), tool, budget_s
        self.t0 = time.time()
        self.data = {"tool": tool, "checks": {}, "errors": []}
        self.save()

    def over_budget(self) -> bool:
        return time.time() - self.t0 > self.budget_s

    def save(self) -> None:
        self.data["elapsed_s"] = round(time.time() - self.t0, 1)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)

    def check(self, name: str, fn, *args, **kwargs):
        """Run ``fn``; record its dict (or ``{"error": ...}``) and seconds under checks[name].
        Past the time budget the check is recorded as skipped instead of run."""
        t = time.time()
        if self.over_budget():
            res = {"skipped": f"time budget of {self.budget_s:.0f} s used up"}
        else:
            try:
                res = fn(*args, **kwargs)
            except Exception as e:  # one broken check must not hide the others
                traceback.print_exc()
                res = {"error": error_text(e)}
                self.data["errors"].append(name)
        res = dict(res) if isinstance(res, dict) else {"value": res}
        res["seconds"] = round(time.time() - t, 2)
        self.data["checks"][name] = res
        print(f"[{self.tool}] {name}: {json.dumps(res, default=str)[:600]}", flush=True)
        self.save()
        return res


def rel_err(a, b) -> float:
    """max |a - b| / max |b| in float64."""
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def with_impl(impl: str) -> None:
    """Make the plugin's norms take ``impl`` (``fused`` | ``eager``) from their next call on."""
    os.environ["MGN_NORM_IMPL"] = impl


def model_grads(model) -> dict:
    """fp32 copies of every gradient (``main_grad`` under Megatron DDP), names without ``module.``."""
    out = {}
    for name, p in model.named_parameters():
        g = getattr(p, "main_grad", None)
        g = p.grad if g is None else g
        if g is not None:
            out[name.removeprefix("module.")] = g.detach().float().clone()
    return out


def impl_decisions(model) -> list:
    """Which path (fused / eager, and why) the model's plugin norms took (imported late: after
    :func:`start_megatron_helper` set the kernel mode)."""
    from megatron_gatednorm.norms import impl_decisions as decisions

    return decisions(model)


def compare_run(loss, grads, ref_loss, ref_grads) -> dict:
    """A run's loss and gradients against a reference run's: relative differences, bit-exactness."""
    import torch

    diffs = {n: rel_err(grads[n], ref_grads[n]) for n in ref_grads}
    worst = sorted(diffs.items(), key=lambda kv: -kv[1])[:3]
    return {
        "loss": loss.item(), "loss_rel_diff": abs(loss.item() - ref_loss.item()) / abs(ref_loss.item()),
        "same_parameters": sorted(grads) == sorted(ref_grads),
        "bit_exact": bool(loss == ref_loss) and all(torch.equal(grads[n], ref_grads[n]) for n in ref_grads),
        "max_grad_rel_diff": max(diffs.values()), "worst_grads": {k: v for k, v in worst},
    }


def median_step_ms(setup, model, n: int = 5) -> float:
    """Median ms of ``n`` ``setup.step(model)`` calls (fwd+bwd; synchronised on CUDA)."""
    import statistics

    import torch

    times = []
    for _ in range(n):
        model.zero_grad(set_to_none=True)
        if setup.cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        setup.step(model)
        if setup.cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1e3)
    return round(statistics.median(times), 3)


def norm_params(variant: str, d: int, dtype, device, seed: int = 0) -> dict:
    """Trained-looking parameters of ``variant`` for the functional API (no gradients)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    p = {"weight": torch.randn(d, generator=g) * 0.2 + 1.0}
    if variant.startswith("preaffine"):
        p["pre_scale"] = torch.rand(d, generator=g) + 0.5
    if variant.endswith("gatednorm"):
        p["gate_down"] = torch.randn(RANK, d, generator=g) / d**0.5
        p["gate_up"] = torch.randn(d, RANK, generator=g) * 0.5
    return {k: v.to(device=device, dtype=dtype) for k, v in p.items()}


def fused_norm(x, params: dict):
    """The public fused API for the variant that ``params`` describe."""
    from megatron_gatednorm.ops import fused_rms_norm, gated_rms_norm

    if "gate_down" in params:
        return gated_rms_norm(x, eps=EPS, **params)
    return fused_rms_norm(x, eps=EPS, **params)


def reference_norm(x, params: dict):
    """The eager reference (megatron_gatednorm.ops.reference) of the same variant."""
    from megatron_gatednorm.ops.reference import rms_norm

    return rms_norm(
        x, params["weight"], EPS, pre_scale=params.get("pre_scale"),
        gate_down=params.get("gate_down"), gate_up=params.get("gate_up"),
    )


def fwd_bwd(fn, x, dy, params: dict):
    """``fn(x, params)`` forward and backward on fresh leaves → (out, {"x": dx, name: grad})."""
    x = x.detach().clone().requires_grad_()
    ps = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    out = fn(x, ps)
    out.backward(dy)
    return out.detach(), {"x": x.grad, **{k: v.grad for k, v in ps.items()}}
