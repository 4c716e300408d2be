"""Roofline benchmark of the residual-stream norms: correctness first, then time, bytes, bandwidth.

Notation: ``T`` tokens (rows), hidden ``d``, activation bytes ``e`` (2 for bf16), gate rank ``r``.

Providers (``make_providers``): torch RMSNorm (``F.rms_norm``); the fused kernels as plain RMSNorm
``y = γ ⊙ x / sqrt(mean(x²) + eps)``, PreAffine ``RMSNorm(λ1 ⊙ x)``, GatedNorm
``σ(W_u silu(W_d y)) ⊙ y`` and PreAffine+GatedNorm; the eager GatedNorm (``ops.reference``) and
one ``torch.compile`` of it (token dimension dynamic, hidden static: one compile per hidden);
Liger's RMSNorm where ``liger_kernel`` is installed. Parameters are in the activation dtype, as
Megatron keeps them with ``--bf16``.

1. Correctness, before any timing: one forward+backward on the shape's ``x`` and ``dy``,
   compared with ``reference.rms_norm`` in float64 on the same values:
   ``err(t) = max|t − t_ref| / max|t_ref|`` for ``out``, ``dx`` and every parameter gradient,
   against ``TOLERANCES``. A provider over a tolerance is reported FAIL and not timed; one
   that raises is reported as an error; the run goes on either way.
2. Time of three phases: ``fwd`` (a training-mode forward), ``bwd`` (``out.backward(dy)``, its
   forward run untimed just before) and ``fwd+bwd``. Each repetition flushes L2 (a 256 MB
   write) outside the timed interval; the interval is a pair of CUDA events. Reported: median
   and p20/p80 of enough repetitions to fill ``rep_ms``.
3. Bytes. Floor (``traffic.floor_bytes``): what any norm must move, fwd ``2·T·d·e``, bwd
   ``3·T·d·e``, fwd+bwd ``5·T·d·e``. Design (fused providers only): the kernels' own model,
   ``Σ_k (read_k + write_k)`` over the kernels of ``traffic.design_bytes(launch_plan(T, d,
   r or 0, pre, SMs))`` (``l2_reread`` listed apart, not counted).
4. Bandwidth. Achieved TB/s = floor bytes / time (what a caller gets; comparable across
   providers). Design TB/s = design bytes / time (how hard the fused kernels drive memory).
   ``/copy`` = achieved TB/s ÷ copy TB/s, the copy being ``torch.empty_like(x).copy_(x)``
   (``2·T·d·e`` bytes) timed the same way on the same shape in the same run.
5. Per kernel (fused providers, CUDA): one extra ``torch.profiler`` run of ``fwd+bwd`` gives
   device µs per kernel; with the design bytes of that kernel, its TB/s.
6. Layer: one Megatron ``TransformerLayer`` (``--transformer-impl local`` specs from
   ``megatron_gatednorm.specs``: Megatron's unfused local attention; d=4096, 32 heads, SwiGLU
   11008, sequence 4096, 16384 tokens, no RoPE, no dropout) per entry of ``LAYER_VARIANTS``,
   fwd+bwd steps run round-robin across them; per variant the median and IQR of ≥ 30 steps and
   overhead % = ``100·(median_v / median_rmsnorm − 1)``, the baseline being the plugin's
   ``rmsnorm`` variant (the fused RMSNorm kernels on CUDA). Also per round (paired), median and
   IQR of ``100·(t_v / t_rmsnorm − 1)``, which drift between rounds does not bias.
7. ``TARGETS`` (one dict below): the measured value and pass/fail of each.

``--cpu-smoke`` runs the same plumbing on CPU with tiny shapes, the fused kernels in triton's
interpreter and a wall clock; its timings are meaningless and labelled so, the layer and
torch.compile are skipped and every target is reported ``measured: null`` with the reason.

Usage: ``python benchmarks/norms.py [--quick] [--json out.json] [--hidden 4096 ...]``.
Exit status: 0 ran with every provider correct, 1 some provider or the layer failed (all
recorded), 2 nothing was measured (no CUDA, without ``--cpu-smoke``).
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional
from unittest import mock

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from megatron_gatednorm import ops  # noqa: E402  (no triton import: the fused names are lazy)
from megatron_gatednorm.ops import reference, traffic  # noqa: E402
from megatron_gatednorm.ops._triton_utils import interpreting, launch_plan, num_sms  # noqa: E402

EPS = 1e-5
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

# max|t - t_ref| / max|t_ref| against the float64 reference, by activation (= parameter) dtype.
# 16-bit: out/dx carry a couple of 16-bit roundings; parameter gradients are fp32 sums rounded
# once to the 16-bit parameter dtype (2^-8 for bf16), plus the error of the gated kernels'
# tensor-core products. fp32: fp32 arithmetic; parameter gradients sum T rows.
TOLERANCES = {
    "fp32": {"out": 2e-5, "dx": 2e-5, "param_grad": 1e-4},
    "bf16": {"out": 1.6e-2, "dx": 1.6e-2, "param_grad": 1e-2},
    "fp16": {"out": 1.6e-2, "dx": 1.6e-2, "param_grad": 1e-2},
}

TARGET_TOKENS = 16384
TARGETS = {
    "gatednorm_fwd_d4096": dict(
        kind="ms", provider="fused_gatednorm", hidden=4096, tokens=TARGET_TOKENS, dtype="bf16",
        phase="fwd", limit=0.085),
    "gatednorm_fwd_bwd_d4096": dict(
        kind="ms", provider="fused_gatednorm", hidden=4096, tokens=TARGET_TOKENS, dtype="bf16",
        phase="fwd+bwd", limit=0.21),
    **{
        f"preaffine_vs_torch_rmsnorm_fwd_bwd_d{d}": dict(
            kind="ratio", provider="fused_preaffine", baseline="torch_rmsnorm", hidden=d,
            tokens=TARGET_TOKENS, dtype="bf16", phase="fwd+bwd", limit=1.05)
        for d in (2048, 4096, 8192)
    },
    "layer_gatednorm_overhead_d4096": dict(
        kind="layer", variant="gatednorm", baseline="rmsnorm", hidden=4096, dtype="bf16", limit=0.5),
}
TARGET_UNITS = {"ms": "ms", "ratio": "x", "layer": "%"}

VARIANT_PARAMS = {
    "rmsnorm": ("weight",),
    "preaffine": ("weight", "pre_scale"),
    "gatednorm": ("weight", "gate_down", "gate_up"),
    "preaffine_gatednorm": ("weight", "pre_scale", "gate_down", "gate_up"),
}
PHASES = ("fwd", "bwd", "fwd+bwd")

# Shapes and repetitions: full, --quick (~90 s on an H200 with compile and layer), --cpu-smoke.
PRESETS = {
    "full": dict(hidden=[2048, 4096, 6144, 8192], tokens=[4096, 16384], warmup_ms=25, rep_ms=100,
                 min_reps=10, layer_warmup=5, layer_steps=50),
    "quick": dict(hidden=[2048, 4096, 8192], tokens=[16384], warmup_ms=10, rep_ms=40,
                  min_reps=10, layer_warmup=3, layer_steps=30),
    "cpu-smoke": dict(hidden=[64, 136], tokens=[20], warmup_ms=0, rep_ms=0, min_reps=1,
                      layer_warmup=0, layer_steps=0),
}

# Layer variants: name -> (plugin norm variant, or None for Megatron's own local RMSNorm spec;
# MGN_NORM_IMPL while it runs). "rmsnorm" is the baseline of the overhead column.
LAYER_BASELINE = "rmsnorm"
LAYER_VARIANTS = {
    "rmsnorm": ("rmsnorm", "auto"),
    "preaffine": ("preaffine", "auto"),
    "gatednorm": ("gatednorm", "auto"),
    "preaffine_gatednorm": ("preaffine_gatednorm", "auto"),
    "gatednorm_eager": ("gatednorm", "eager"),
    "megatron_local_rmsnorm": (None, "auto"),
}


# --------------------------------------------------------------------------------------------
# Command line and run context
# --------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, nargs="+", help="hidden sizes (default: by preset)")
    p.add_argument("--tokens", type=int, nargs="+", help="token counts (default: by preset)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--rank", type=int, default=16, help="gate rank r")
    p.add_argument("--quick", action="store_true", help="fewer shapes and repetitions (~90 s)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile provider")
    p.add_argument("--no-layer", action="store_true", help="skip the Megatron layer benchmark")
    p.add_argument("--json", metavar="PATH", help="write every result to PATH")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="run the plumbing on CPU (tiny shapes, triton interpreter; timings meaningless)")
    p.add_argument("--layer-hidden", type=int, default=4096)
    p.add_argument("--layer-seq", type=int, default=4096)
    p.add_argument("--layer-tokens", type=int, default=16384, help="tokens per micro-batch")
    p.add_argument("--layer-heads", type=int, default=32)
    p.add_argument("--layer-ffn", type=int, default=11008)
    p.add_argument("--layer-steps", type=int, help="timed steps per variant (default: by preset)")
    args = p.parse_args(argv)
    args.preset = "cpu-smoke" if args.cpu_smoke else "quick" if args.quick else "full"
    preset = PRESETS[args.preset]
    args.hidden = args.hidden or preset["hidden"]
    args.tokens = args.tokens or preset["tokens"]
    args.layer_steps = args.layer_steps or preset["layer_steps"]
    return args


@dataclass
class Context:
    """Where and how this run measures; ``results`` is the JSON document being built."""

    device: torch.device
    dtype: torch.dtype
    dtype_name: str
    rank: int
    clock: "Clock"
    meaningful: bool      # timings are GPU timings of compiled kernels
    results: dict
    json_path: Optional[str] = None

    @property
    def sms(self) -> int:
        return num_sms(self.device)

    def save(self) -> None:
        if self.json_path:
            Path(self.json_path).write_text(json.dumps(self.results, indent=1, default=str))

    def fail(self, where: str, exc: BaseException) -> dict:
        """Record an exception under ``failures`` and return ``{"error", "traceback"}``."""
        err = {"error": f"{type(exc).__name__}: {exc}"[:2000], "traceback": traceback.format_exc()[-3000:]}
        self.results["failures"].append({"where": where, **err})
        print(f"[bench] {where}: {err['error'][:300]}", file=sys.stderr, flush=True)
        return err


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def _quantile(sorted_values: List[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * (len(sorted_values) - 1) + 0.5))]


def summarize(ms: List[float]) -> dict:
    """Median, p20/p80 and IQR (p25..p75) of a list of times in ms."""
    s = sorted(ms)
    q1, q3 = _quantile(s, 0.25), _quantile(s, 0.75)
    return {"ms": statistics.median(s), "p20_ms": _quantile(s, 0.2), "p80_ms": _quantile(s, 0.8),
            "q1_ms": q1, "q3_ms": q3, "iqr_ms": q3 - q1, "reps": len(s)}


class Clock:
    """Times ``fn(setup())`` repeatedly: CUDA events with an L2 flush before each repetition on
    a GPU, a wall clock on CPU (``--cpu-smoke``). ``setup`` and the flush are not timed."""

    L2_FLUSH_BYTES = 256 << 20

    def __init__(self, device: torch.device, warmup_ms: float, rep_ms: float, min_reps: int,
                 max_reps: int = 2000):
        self.device, self.cuda = device, device.type == "cuda"
        self.warmup_ms, self.rep_ms, self.min_reps, self.max_reps = warmup_ms, rep_ms, min_reps, max_reps
        self._flush = torch.empty(self.L2_FLUSH_BYTES, dtype=torch.int8, device=device) if self.cuda else None
        self.description = (
            "CUDA events, L2 flushed before each repetition" if self.cuda
            else "CPU wall clock around the triton interpreter: meaningless as performance")

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def span(self, fn: Callable[[], object]) -> Callable[[], float]:
        """Run ``fn`` inside a timed interval; returns a reader of its ms (valid after sync)."""
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            return lambda: start.elapsed_time(end)
        t0 = time.perf_counter()
        fn()
        dt = (time.perf_counter() - t0) * 1e3
        return lambda: dt

    def _rep(self, fn, setup, grad_to_none):
        for t in grad_to_none:
            t.grad = None
        arg = setup() if setup is not None else None
        if self._flush is not None:
            self._flush.zero_()
        return self.span(lambda: fn(arg))

    def _read(self, spans) -> List[float]:
        self.sync()
        return [s() for s in spans]

    def measure(self, fn, setup=None, grad_to_none=()) -> dict:
        """:func:`summarize` of enough repetitions to fill ``rep_ms`` (at least ``min_reps``),
        after a first call (compilation) and ``warmup_ms`` of warm-up, neither counted."""
        def reps(n):
            return self._read([self._rep(fn, setup, grad_to_none) for _ in range(n)])

        n = self.min_reps
        if self.rep_ms > 0:  # else (--cpu-smoke) just min_reps calls
            reps(1)
            est = max(statistics.median(reps(3)), 1e-4)
            n = int(min(self.max_reps, max(self.min_reps, self.rep_ms / est)))
            reps(int(min(n, max(1, self.warmup_ms / est))))
        return summarize(reps(n))


# --------------------------------------------------------------------------------------------
# Providers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Provider:
    name: str
    variant: str                                   # key of VARIANT_PARAMS: what it computes
    fn: Callable[[torch.Tensor, Dict[str, torch.Tensor]], torch.Tensor]
    fused: bool = False                            # design bytes from traffic.design_bytes

    @property
    def pre(self) -> bool:
        return "pre_scale" in VARIANT_PARAMS[self.variant]

    @property
    def gated(self) -> bool:
        return "gate_down" in VARIANT_PARAMS[self.variant]


def _reference_call(x, p):
    """The eager spec (``ops.reference.rms_norm``) for any variant's parameter dict."""
    return reference.rms_norm(x, p["weight"], EPS, pre_scale=p.get("pre_scale"),
                              gate_down=p.get("gate_down"), gate_up=p.get("gate_up"))


def _fused_call(x, p):
    if "gate_down" in p:
        return ops.gated_rms_norm(x, eps=EPS, **p)
    return ops.fused_rms_norm(x, eps=EPS, **p)


def _torch_call(x, p):
    return F.rms_norm(x, (x.shape[-1],), p["weight"], EPS)


@functools.lru_cache(maxsize=None)
def _compiled_reference():
    # One compiled function for all shapes: dims stay static unless marked (hidden static: one
    # graph per hidden), and the token dim is marked dynamic on every call (one graph for all T).
    torch._dynamo.config.automatic_dynamic_shapes = False
    return torch.compile(_reference_call)


def _compiled_call(x, p):
    torch._dynamo.maybe_mark_dynamic(x, 0)
    return _compiled_reference()(x, p)


def _liger_call(liger_fn, x, p):
    # LigerRMSNormFunction.apply(X, W, eps, offset, casting_mode, in_place): in_place=False, as
    # dy is reused across repetitions (in place, Liger writes dx into dy).
    return liger_fn.apply(x, p["weight"], EPS, 0.0, "llama", False)


def make_providers(args) -> tuple:
    """``(providers, skipped)``: the providers to run and ``{name: reason}`` for the others."""
    providers = [
        Provider("torch_rmsnorm", "rmsnorm", _torch_call),
        Provider("fused_rmsnorm", "rmsnorm", _fused_call, fused=True),
        Provider("fused_preaffine", "preaffine", _fused_call, fused=True),
        Provider("fused_gatednorm", "gatednorm", _fused_call, fused=True),
        Provider("fused_preaffine_gatednorm", "preaffine_gatednorm", _fused_call, fused=True),
        Provider("eager_gatednorm", "gatednorm", _reference_call),
    ]
    skipped = {}
    if args.cpu_smoke or args.no_compile:
        skipped["compile_gatednorm"] = "--cpu-smoke" if args.cpu_smoke else "--no-compile"
    else:
        providers.append(Provider("compile_gatednorm", "gatednorm", _compiled_call))
    try:
        from liger_kernel.ops.rms_norm import LigerRMSNormFunction
    except Exception as e:  # ImportError, or a broken install
        skipped["liger_rmsnorm"] = f"liger_kernel not importable ({type(e).__name__}: {e})"
    else:
        providers.append(Provider("liger_rmsnorm", "rmsnorm", functools.partial(_liger_call, LigerRMSNormFunction)))
    return providers, skipped


# --------------------------------------------------------------------------------------------
# Inputs, reference and correctness
# --------------------------------------------------------------------------------------------


def make_inputs(tokens: int, hidden: int, dtype, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, hidden, generator=g).to(device, dtype)
    dy = torch.randn(tokens, hidden, generator=g).to(device, dtype)
    return x, dy


def make_params(variant: str, hidden: int, rank: int, dtype, device, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Leaf parameters of ``variant`` (non-trivial values so every gradient is checked)."""
    g = torch.Generator().manual_seed(seed)
    values = {
        "weight": torch.randn(hidden, generator=g) * 0.1 + 1.0,
        "pre_scale": torch.rand(hidden, generator=g) + 0.5,
        "gate_down": torch.randn(rank, hidden, generator=g) / hidden ** 0.5,
        "gate_up": torch.randn(hidden, rank, generator=g) * 0.2,
    }
    return {k: values[k].to(device, dtype).requires_grad_() for k in VARIANT_PARAMS[variant]}


def forward_backward(fn, x, dy, params):
    """``(out, {"dx": ..., name: grad})`` of one forward+backward from fresh leaves."""
    xg = x.detach().clone().requires_grad_()
    ps = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    out = fn(xg, ps)
    out.backward(dy)
    return out.detach(), {"dx": xg.grad, **{k: v.grad for k, v in ps.items()}}


def reference_float64(x, dy, params):
    return forward_backward(_reference_call, x.double(), dy.double(), {k: v.double() for k, v in params.items()})


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max|a − b| / max|b|`` in float64."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def check(provider: Provider, x, dy, params, ref, dtype_name: str) -> dict:
    """Correctness verdict of one provider against the float64 reference ``ref``."""
    out, grads = forward_backward(provider.fn, x, dy, params)
    ref_out, ref_grads = ref
    tol = TOLERANCES[dtype_name]
    errors = {"out": rel_err(out, ref_out), **{k: rel_err(g, ref_grads[k]) for k, g in grads.items()}}
    limits = {k: tol[k] if k in ("out", "dx") else tol["param_grad"] for k in errors}
    wrong_dtype = [k for k, t in (("out", out), *grads.items())
                   if t.dtype != (x.dtype if k in ("out", "dx") else params[k].dtype)]
    over = [k for k in errors if not errors[k] <= limits[k]]  # NaN counts as over
    return {"verdict": "PASS" if not over and not wrong_dtype else "FAIL", "errors": errors,
            "tolerances": limits, "over_tolerance": over, "wrong_dtype": wrong_dtype}


# --------------------------------------------------------------------------------------------
# Bytes and bandwidth
# --------------------------------------------------------------------------------------------


def design_bytes(provider: Provider, tokens: int, hidden: int, rank: int, act_bytes: int,
                 param_bytes: int, sms: int) -> dict:
    """The fused kernels' traffic model for one call: plan, per-kernel and per-phase bytes."""
    plan = launch_plan(tokens, hidden, rank if provider.gated else 0, pre=provider.pre, sms=sms)
    kernels = traffic.design_bytes(plan, act_bytes, param_bytes)
    per_phase = {ph: sum(k.total for k in kernels[ph].values()) for ph in ("fwd", "bwd")}
    per_phase["fwd+bwd"] = per_phase["fwd"] + per_phase["bwd"]
    return {
        "sms": sms,
        "plan": {k: getattr(plan, k) for k in plan.__dataclass_fields__},
        "kernels": {ph: {name: {**kb._asdict(), "total": kb.total} for name, kb in ks.items()}
                    for ph, ks in kernels.items()},
        "bytes": per_phase,
    }


def tbps(nbytes: float, ms: float) -> float:
    return nbytes / ms / 1e9


def bandwidth(timing: dict, floor: int, design: Optional[int], copy_tbps: float) -> dict:
    """Timing plus floor/design bytes, achieved (floor) TB/s, design TB/s and /copy."""
    achieved = tbps(floor, timing["ms"])
    row = {**timing, "floor_bytes": floor, "achieved_tbps": achieved, "copy_fraction": achieved / copy_tbps}
    if design is not None:
        row.update(design_bytes=design, design_tbps=tbps(design, timing["ms"]),
                   design_copy_fraction=tbps(design, timing["ms"]) / copy_tbps)
    return row


def copy_bandwidth(ctx: Context, x: torch.Tensor) -> dict:
    """Device-to-device copy of ``x`` (``torch.empty_like(x).copy_(x)``): read + write bytes."""
    timing = ctx.clock.measure(lambda _: torch.empty_like(x).copy_(x))
    nbytes = 2 * x.numel() * x.element_size()
    return {**timing, "bytes": nbytes, "tbps": tbps(nbytes, timing["ms"])}


# --------------------------------------------------------------------------------------------
# Per-kernel profile
# --------------------------------------------------------------------------------------------


PROFILE_ITERS = 5


def profile_spans(fn, x, dy, params, iters: int = PROFILE_ITERS) -> List[tuple]:
    """``[(kernel name, µs)]`` of every device kernel in ``iters`` fwd+bwd calls (torch.profiler)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    leaves = [x, *params.values()]
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            for t in leaves:
                t.grad = None
            fn(x, params).backward(dy)
        torch.cuda.synchronize()
    return [(ev.name, ev.time_range.elapsed_us()) for ev in prof.events() if ev.device_type == DeviceType.CUDA]


def kernel_table(spans, iters: int, design_kernels: Dict[str, dict]) -> List[dict]:
    """Per kernel name: µs and calls per fwd+bwd, with its design bytes and TB/s when the name is
    one of ``design_kernels`` (exact, or the design name followed by a compiler suffix)."""
    acc: Dict[str, List[float]] = {}
    for name, us in spans:
        acc.setdefault(name, []).append(us)
    table = []
    for name, times in acc.items():
        row = {"kernel": name, "us": sum(times) / iters, "calls": len(times) / iters}
        match = next((k for k in design_kernels if name == k or name.startswith(k)), None)
        if match is not None:
            nbytes = design_kernels[match]["total"]
            row.update(design_kernel=match, design_bytes=nbytes, design_tbps=nbytes / row["us"] / 1e6)
        table.append(row)
    return sorted(table, key=lambda r: -r["us"])


# --------------------------------------------------------------------------------------------
# One provider, one shape, the sweep
# --------------------------------------------------------------------------------------------


def time_phases(clock: Clock, fn, x, dy, params) -> Dict[str, dict]:
    """fwd, bwd (forward untimed before it) and fwd+bwd, gradients reset outside the interval."""
    xg = x.detach().requires_grad_()
    leaves = [xg, *params.values()]
    return {
        "fwd": clock.measure(lambda _: fn(xg, params)),
        "bwd": clock.measure(lambda out: out.backward(dy), setup=lambda: fn(xg, params), grad_to_none=leaves),
        "fwd+bwd": clock.measure(lambda _: fn(xg, params).backward(dy), grad_to_none=leaves),
    }


def new_row(ctx: Context, provider: Provider, tokens: int, hidden: int) -> dict:
    """A result row before anything ran (status ``error`` until measured)."""
    return {"provider": provider.name, "variant": provider.variant, "hidden": hidden, "tokens": tokens,
            "dtype": ctx.dtype_name, "param_dtype": ctx.dtype_name, "rank": ctx.rank if provider.gated else 0,
            "fused": provider.fused, "status": "error"}


def measure_provider(ctx: Context, provider: Provider, x, dy, params, ref, copy_tbps: float) -> dict:
    """One row: correctness, then (if PASS) the three phases with bytes and bandwidth, and the
    per-kernel profile of fused providers on a GPU. Exceptions are recorded, not raised."""
    tokens, hidden = x.shape
    row = new_row(ctx, provider, tokens, hidden)
    where = f"{provider.name} d={hidden} T={tokens}"
    try:
        row["correctness"] = check(provider, x, dy, params, ref, ctx.dtype_name)
        if row["correctness"]["verdict"] != "PASS":
            row["status"] = "FAIL"
            c = row["correctness"]
            ctx.results["failures"].append({"where": where, "error": f"correctness FAIL: over tolerance "
                                            f"{c['over_tolerance']}, wrong dtype {c['wrong_dtype']}"})
            return row
        floor = traffic.floor_bytes(tokens, hidden, x.element_size())
        row["floor_bytes"] = floor
        design = None
        if provider.fused:
            param_bytes = next(iter(params.values())).element_size()
            row["design"] = design = design_bytes(provider, tokens, hidden, ctx.rank, x.element_size(),
                                                  param_bytes, ctx.sms)
        timings = time_phases(ctx.clock, provider.fn, x, dy, params)
        row["phases"] = {ph: bandwidth(timings[ph], floor[ph], design and design["bytes"][ph], copy_tbps)
                         for ph in PHASES}
        if provider.fused and ctx.meaningful:
            kernels = {**design["kernels"]["fwd"], **design["kernels"]["bwd"]}
            spans = profile_spans(provider.fn, x.detach().requires_grad_(), dy, params)
            row["kernels"] = kernel_table(spans, PROFILE_ITERS, kernels)
        row["status"] = "ok"
    except Exception as e:  # one provider failing must not stop the sweep
        row.update(ctx.fail(where, e))
    return row


def measure_shape(ctx: Context, providers: List[Provider], tokens: int, hidden: int) -> List[dict]:
    """Copy bandwidth, then every provider on one ``(tokens, hidden)`` shape."""
    x, dy = make_inputs(tokens, hidden, ctx.dtype, ctx.device)
    copy = copy_bandwidth(ctx, x)
    ctx.results["copy"].append({"tokens": tokens, "hidden": hidden, **copy})
    params, refs = {}, {}
    rows = []
    for provider in providers:
        v = provider.variant
        try:
            if v not in params:
                params[v] = make_params(v, hidden, ctx.rank, ctx.dtype, ctx.device)
                refs[v] = reference_float64(x, dy, params[v])
        except Exception as e:
            rows.append({**new_row(ctx, provider, tokens, hidden), **ctx.fail(f"reference {v} d={hidden} T={tokens}", e)})
            continue
        rows.append(measure_provider(ctx, provider, x, dy, params[v], refs[v], copy["tbps"]))
        print(f"[bench] {provider.name:<26} d={hidden:<5} T={tokens:<6} {rows[-1]['status']}", flush=True)
    return rows


def sweep(ctx: Context, providers: List[Provider], shapes) -> None:
    for tokens, hidden in shapes:
        try:
            ctx.results["rows"].extend(measure_shape(ctx, providers, tokens, hidden))
        except Exception as e:  # inputs or copy (e.g. out of memory): record, next shape
            ctx.fail(f"shape d={hidden} T={tokens}", e)
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
        ctx.save()


# --------------------------------------------------------------------------------------------
# Megatron layer
# --------------------------------------------------------------------------------------------


def _layer_config(args, dtype, device):
    from megatron.core.transformer.transformer_config import TransformerConfig

    return TransformerConfig(
        num_layers=1, hidden_size=args.layer_hidden, num_attention_heads=args.layer_heads,
        ffn_hidden_size=args.layer_ffn, gated_linear_unit=True, activation_func=F.silu,
        add_bias_linear=False, normalization="RMSNorm", layernorm_epsilon=EPS,
        hidden_dropout=0.0, attention_dropout=0.0, params_dtype=dtype,
        bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16,
        use_cpu_initialization=device.type == "cpu",
    )


def _build_layer(cfg, variant: Optional[str], rank: int):
    """A TransformerLayer from the plugin's local spec for ``variant`` (None: Megatron's own)."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.spec_utils import build_module

    from megatron_gatednorm.norm_config import NormConfig
    from megatron_gatednorm.specs import get_gatednorm_layer_spec

    if variant is None:
        spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    else:
        spec = get_gatednorm_layer_spec(NormConfig(variant=variant, rank=rank), use_transformer_engine=False)
    torch.manual_seed(0)
    return build_module(spec, config=cfg, layer_number=1)


def _norm_impls(layer) -> List[str]:
    """What ran in the layer's two norm slots: the plugin's dispatch decisions, or the class."""
    from megatron_gatednorm.norms import _ResidualNorm

    slots = (layer.input_layernorm, layer.pre_mlp_layernorm)
    return sorted({f"{type(m).__name__}: {m.impl_decision.reason}" if isinstance(m, _ResidualNorm)
                   and m.impl_decision is not None else f"{type(m).__module__}.{type(m).__name__}"
                   for m in slots})


def _layer_step(clock: Clock, layer, x, dy, impl: str):
    """Time one fwd+bwd of ``layer`` (gradients set to None outside the interval)."""
    x.grad = None
    for p in layer.parameters():
        p.grad = None

    def step():
        out = layer(x, attention_mask=None)
        (out[0] if isinstance(out, tuple) else out).backward(dy)

    with mock.patch.dict(os.environ, {"MGN_NORM_IMPL": impl}):
        return clock.span(step)


def overhead_pct(ms: float, base_ms: float) -> float:
    return 100 * (ms / base_ms - 1)


def _layer_stats(times: Dict[str, List[float]]) -> Dict[str, dict]:
    """Per variant: summary of its step times and overhead vs the baseline, from the medians and
    paired per round (``100·(t_v,i / t_base,i − 1)``, median and IQR)."""
    base = times[LAYER_BASELINE]
    base_ms = statistics.median(base)
    stats = {}
    for name, ts in times.items():
        s = summarize(ts)
        paired = summarize([overhead_pct(t, b) for t, b in zip(ts, base)])
        stats[name] = {**s, "overhead_pct": overhead_pct(s["ms"], base_ms),
                       "paired_overhead_pct": {"median": paired["ms"], "q1": paired["q1_ms"], "q3": paired["q3_ms"]}}
    return stats


def layer_benchmark(ctx: Context, args) -> dict:
    """Megatron TransformerLayer fwd+bwd per norm variant, round-robin over ``warmup + steps``."""
    from megatron_gatednorm.distributed import init_distributed

    init_distributed()  # 1-rank world (NCCL with CUDA) and Megatron's parallel state
    import megatron.core

    cfg = _layer_config(args, ctx.dtype, ctx.device)
    layers, impls = {}, {}
    for name, (variant, impl) in LAYER_VARIANTS.items():
        layers[name] = (_build_layer(cfg, variant, ctx.rank).to(ctx.device), impl)
    seq = args.layer_seq
    batch = max(1, args.layer_tokens // seq)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(seq, batch, args.layer_hidden, generator=g).to(ctx.device, ctx.dtype).requires_grad_()
    dy = torch.randn(seq, batch, args.layer_hidden, generator=g).to(ctx.device, ctx.dtype)
    warmup = PRESETS[args.preset]["layer_warmup"]
    spans: Dict[str, list] = {name: [] for name in layers}
    for i in range(warmup + args.layer_steps):
        for name, (layer, impl) in layers.items():
            span = _layer_step(ctx.clock, layer, x, dy, impl)
            if i >= warmup:
                spans[name].append(span)
        ctx.clock.sync()
    for name, (layer, _) in layers.items():
        impls[name] = _norm_impls(layer)
    times = {name: [s() for s in ss] for name, ss in spans.items()}
    stats = _layer_stats(times)
    for name in stats:
        stats[name]["norm_impl"] = impls[name]
        stats[name]["norm_variant"], stats[name]["MGN_NORM_IMPL"] = LAYER_VARIANTS[name]
    return {
        "megatron_core": getattr(megatron.core, "__version__", "unknown"),
        "config": {"hidden": args.layer_hidden, "heads": args.layer_heads, "ffn": args.layer_ffn, "seq": seq,
                   "micro_batch": batch, "tokens": seq * batch, "dtype": ctx.dtype_name, "rank": ctx.rank,
                   "spec": "megatron_gatednorm.specs local (no RoPE, no dropout)", "warmup_steps": warmup,
                   "timed_steps": args.layer_steps, "order": "round-robin over variants each step",
                   "note": None if args.layer_steps >= 30 else "fewer than 30 timed steps: median/IQR unstable"},
        "baseline": LAYER_BASELINE,
        "variants": stats,
    }


# --------------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------------


class NotMeasured(Exception):
    pass


def _find_row(rows, provider, t) -> dict:
    for r in rows:
        if (r["provider"], r["hidden"], r["tokens"], r.get("dtype")) == (provider, t["hidden"], t["tokens"], t["dtype"]):
            if r["status"] != "ok":
                raise NotMeasured(f"{provider} at d={t['hidden']} T={t['tokens']} {r['status']}: "
                                  f"{r.get('error', 'correctness FAIL')}"[:300])
            return r
    raise NotMeasured(f"{provider} at d={t['hidden']} T={t['tokens']} {t['dtype']} not in this run")


def _measure_target(t: dict, rows, layer) -> float:
    if t["kind"] == "ms":
        return _find_row(rows, t["provider"], t)["phases"][t["phase"]]["ms"]
    if t["kind"] == "ratio":
        num = _find_row(rows, t["provider"], t)["phases"][t["phase"]]["ms"]
        return num / _find_row(rows, t["baseline"], t)["phases"][t["phase"]]["ms"]
    if "variants" not in layer:
        raise NotMeasured(f"layer not measured: {layer.get('skipped') or layer.get('error', 'unknown')}"[:300])
    cfg = layer["config"]
    if (cfg["hidden"], cfg["dtype"]) != (t["hidden"], t["dtype"]):
        raise NotMeasured(f"layer ran d={cfg['hidden']} {cfg['dtype']}, target is d={t['hidden']} {t['dtype']}")
    if not {t["variant"], t["baseline"]} <= set(layer["variants"]):
        raise NotMeasured(f"layer variants {t['variant']}, {t['baseline']} not both measured")
    return overhead_pct(layer["variants"][t["variant"]]["ms"], layer["variants"][t["baseline"]]["ms"])


def describe_target(t: dict) -> str:
    if t["kind"] == "ms":
        return f"{t['provider']} {t['phase']} at d={t['hidden']}, T={t['tokens']}, {t['dtype']}: <= {t['limit']} ms"
    if t["kind"] == "ratio":
        return (f"{t['provider']} / {t['baseline']} {t['phase']} time at d={t['hidden']}, T={t['tokens']}, "
                f"{t['dtype']}: <= {t['limit']}x")
    return f"layer fwd+bwd overhead of {t['variant']} vs {t['baseline']} at d={t['hidden']}, {t['dtype']}: <= {t['limit']} %"


def evaluate_targets(rows, layer, not_meaningful: Optional[str]) -> dict:
    out = {}
    for name, t in TARGETS.items():
        entry = {"description": describe_target(t), "limit": t["limit"], "unit": TARGET_UNITS[t["kind"]],
                 "measured": None, "pass": None, "reason": not_meaningful}
        if not_meaningful is None:
            try:
                entry["measured"] = _measure_target(t, rows, layer)
                entry["pass"] = entry["measured"] <= t["limit"]
            except NotMeasured as e:
                entry["reason"] = str(e)
        out[name] = entry
    return out


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _fmt(v, spec=".4f", empty="-"):
    return empty if v is None else format(v, spec)


def print_table(results: dict) -> None:
    if not results["timings_meaningful"]:
        print(f"\n*** {results['mode']}: timings below are NOT performance ({results['timer']}) ***")
    copies = {(c["tokens"], c["hidden"]): c["tbps"] for c in results["copy"]}
    shapes = sorted({(r["hidden"], r["tokens"]) for r in results["rows"]})
    head = (f"{'provider':<26} {'check':<5} " + " ".join(f"{ph + ' ms':>9} {'/torch':>6}" for ph in PHASES)
            + f" {'TB/s':>6} {'/copy':>6} {'design MB':>9} {'dTB/s':>6}")
    for hidden, tokens in shapes:
        rows = [r for r in results["rows"] if (r["hidden"], r["tokens"]) == (hidden, tokens)]
        base = next((r["phases"] for r in rows if r["provider"] == "torch_rmsnorm" and r["status"] == "ok"), None)
        print(f"\nd={hidden} T={tokens} {results['env']['dtype']}  copy {_fmt(copies.get((tokens, hidden)), '.2f')} TB/s"
              f"  (TB/s, /copy, design: fwd+bwd; TB/s = floor bytes / time; design = the fused kernels' bytes model)")
        print(head)
        for r in rows:
            if r["status"] != "ok":
                why = r.get("error") or f"over tolerance {r['correctness']['over_tolerance']}"
                print(f"{r['provider']:<26} {r['status']:<5} {why[:90]}")
                continue
            ph = r["phases"]
            fb = ph["fwd+bwd"]
            times = " ".join(f"{ph[k]['ms']:>9.4f} {_fmt(base and ph[k]['ms'] / base[k]['ms'], '.2f'):>6}"
                             for k in PHASES)
            print(f"{r['provider']:<26} {r['correctness']['verdict']:<5} {times} {fb['achieved_tbps']:>6.2f} "
                  f"{fb['copy_fraction']:>6.2f} {_fmt(fb.get('design_bytes') and fb['design_bytes'] / 1e6, '.1f'):>9} "
                  f"{_fmt(fb.get('design_tbps'), '.2f'):>6}")
            for k in r.get("kernels") or []:
                print(f"    {k['kernel'][:48]:<48} {k['us']:>9.1f} us  x{k['calls']:<4g} "
                      f"{_fmt(k.get('design_tbps'), '.2f')} TB/s")
    for name, reason in results["skipped"].items():
        print(f"skipped {name}: {reason}")
    layer = results["layer"]
    if "variants" in layer:
        c = layer["config"]
        print(f"\nMegatron TransformerLayer d={c['hidden']} heads={c['heads']} ffn={c['ffn']} {c['micro_batch']}x{c['seq']} "
              f"{c['dtype']}, fwd+bwd, {c['timed_steps']} steps (megatron-core {layer['megatron_core']})")
        for name, s in layer["variants"].items():
            p = s["paired_overhead_pct"]
            print(f"  {name:<24} median {s['ms']:9.3f} ms  IQR {s['iqr_ms']:7.3f}  overhead {s['overhead_pct']:+6.2f} % "
                  f"(paired {p['median']:+.2f} [{p['q1']:+.2f}, {p['q3']:+.2f}])  {'; '.join(s['norm_impl'])}")
    else:
        print(f"\nlayer: {layer.get('skipped') or layer.get('error')}")
    print("\ntargets:")
    for name, t in results["targets"].items():
        verdict = "n/a " if t["pass"] is None else "PASS" if t["pass"] else "MISS"
        print(f"  {verdict} {name:<40} measured {_fmt(t['measured'])} {t['unit']} (limit {t['limit']})"
              f"{'  ' + t['reason'] if t['reason'] else ''}")
    if results["failures"]:
        print(f"\n{len(results['failures'])} failure(s): " + "; ".join(f["where"] for f in results["failures"]))


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def _git(*argv) -> Optional[str]:
    try:
        return subprocess.run(["git", "-C", str(REPO), *argv], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
    except Exception:
        return None


def _version(dist: str) -> Optional[str]:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(ctx: Context, args) -> dict:
    cuda = ctx.device.type == "cuda"
    props = torch.cuda.get_device_properties(ctx.device) if cuda else None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "gpu": props.name if cuda else None, "sms": ctx.sms, "device": str(ctx.device),
        "torch": torch.__version__, "cuda": torch.version.cuda, "triton": _version("triton"),
        "triton_interpret": interpreting(), "python": platform.python_version(),
        "megatron_core": _version("megatron-core"), "liger_kernel": _version("liger-kernel"),
        "commit": _git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status),
        "dtype": ctx.dtype_name, "param_dtype": ctx.dtype_name, "rank": ctx.rank, "eps": EPS,
        "preset": args.preset, "args": vars(args),
    }


def make_context(args) -> Context:
    preset = PRESETS[args.preset]
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    clock = Clock(device, preset["warmup_ms"], preset["rep_ms"], preset["min_reps"])
    meaningful = device.type == "cuda" and not interpreting()
    results = {
        "mode": "cpu-smoke" if args.cpu_smoke else "gpu", "timings_meaningful": meaningful,
        "timer": clock.description, "tolerances": TOLERANCES, "copy": [], "rows": [], "skipped": {},
        "layer": {}, "targets": {}, "failures": [],
    }
    return Context(device, DTYPES[args.dtype], args.dtype, args.rank, clock, meaningful, results, args.json)


def run(args) -> dict:
    """The whole benchmark; returns (and saves) the results document."""
    ctx = make_context(args)
    ctx.results["env"] = environment(ctx, args)
    providers, ctx.results["skipped"] = make_providers(args)
    ctx.save()
    sweep(ctx, providers, [(t, d) for d in args.hidden for t in args.tokens])
    if args.cpu_smoke or args.no_layer:
        ctx.results["layer"] = {"skipped": "--cpu-smoke" if args.cpu_smoke else "--no-layer"}
    else:
        try:
            ctx.results["layer"] = layer_benchmark(ctx, args)
        except Exception as e:
            ctx.results["layer"] = ctx.fail("layer", e)
    ctx.results["copy_tbps_max"] = max((c["tbps"] for c in ctx.results["copy"]), default=None)
    not_meaningful = None if ctx.meaningful else f"{ctx.results['mode']}: no GPU timing ({ctx.clock.description})"
    ctx.results["targets"] = evaluate_targets(ctx.results["rows"], ctx.results["layer"], not_meaningful)
    ctx.save()
    return ctx.results


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.cpu_smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before the first fused call defines the kernels
    elif not torch.cuda.is_available():
        print(f"benchmarks/norms.py: no CUDA device (torch {torch.__version__}); nothing was measured "
              "(--cpu-smoke runs the plumbing on CPU)", file=sys.stderr)
        return 2
    elif interpreting():
        print("benchmarks/norms.py: TRITON_INTERPRET is set; the compiled kernels are needed for timing, "
              "nothing was measured", file=sys.stderr)
        return 2
    results = run(args)
    print_table(results)
    return 1 if results["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
