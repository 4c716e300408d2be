"""Example 5: the fused GatedNorm kernel against the eager reference — correctness, then time.

    python examples/05_kernel_microbenchmark.py

* With CUDA: checks the fused forward/backward against the eager reference on a training-size
  shape (16384 tokens x 4096, bf16, gate rank 16, the shape of the repository's speed targets) and
  times both with CUDA events (median of 50, forward and forward+backward). Writes nothing.
* Without CUDA: the Triton kernels run in triton's CPU interpreter (``TRITON_INTERPRET=1``, which
  must be set before the kernels are first imported) on a tiny shape — a correctness check of the
  same code, in a few seconds. Interpreter timings say nothing about the GPU, so none are printed.

The two functions:

* ``megatron_gatednorm.ops.gated_rms_norm(x, weight=, gate_down=, gate_up=, pre_scale=None, eps=,
  zero_centered_gamma=)``: Triton forward + backward (autograd), fp32 statistics, deterministic.
  ``ops.fused_rms_norm`` is the ungated RMSNorm / PreAffine kernel.
* ``megatron_gatednorm.ops.reference.rms_norm(...)``: the eager PyTorch spec every kernel, module and
  the exported HF code is tested against.

In a model you call neither: the norm modules pick the fused path on CUDA when it covers the
configuration (``MGN_NORM_IMPL=eager|fused|auto`` forces one) and log which path runs and why.

For the full roofline harness — torch RMSNorm, the fused variants, eager and ``torch.compile``
GatedNorm, bytes moved vs the floor, TB/s vs a copy, per-kernel profiles, a Megatron layer's
overhead and the pass/fail targets — run ``python benchmarks/norms.py --quick`` on a GPU
(``--cpu-smoke`` exercises its plumbing on CPU; see ``benchmarks/README.md``).
"""

import os

import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are imported (first access below)

from megatron_gatednorm import ops  # noqa: E402
from megatron_gatednorm.ops import reference  # noqa: E402

if CUDA:
    TOKENS, HIDDEN, RANK, DTYPE, DEVICE = 16384, 4096, 16, torch.bfloat16, "cuda"
else:
    TOKENS, HIDDEN, RANK, DTYPE, DEVICE = 8, 64, 4, torch.float32, "cpu"
# max |error| / max |reference| allowed, per dtype (benchmarks/norms.py's TOLERANCES)
TOL = {torch.float32: {"out": 2e-5, "dx": 2e-5, "param": 1e-4},
       torch.bfloat16: {"out": 1.6e-2, "dx": 1.6e-2, "param": 1e-2}}[DTYPE]


def make_inputs(seed=0):
    """x, dy and the GatedNorm parameters (weight γ, W_down [r, d], W_up [d, r]) as in a trained model."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    randn = lambda *shape, scale=1.0: (torch.randn(*shape, generator=g) * scale).to(DEVICE, DTYPE)  # noqa: E731
    x = randn(TOKENS, HIDDEN, scale=3.0)
    dy = randn(TOKENS, HIDDEN)
    params = dict(weight=1 + randn(HIDDEN, scale=0.1), gate_down=randn(RANK, HIDDEN, scale=0.05),
                  gate_up=randn(HIDDEN, RANK, scale=0.05))
    return x, dy, params


def forward_backward(fn, x, dy, params):
    """fn's output and the gradients of x and every parameter for upstream gradient dy."""
    x = x.detach().requires_grad_()
    params = {k: v.detach().requires_grad_() for k, v in params.items()}
    out = fn(x, eps=1e-5, **params)
    out.backward(dy)
    return out.detach(), {"dx": x.grad, **{"d" + k: v.grad for k, v in params.items()}}


def rel_err(a, b):
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))


def check_correctness():
    x, dy, params = make_inputs()
    out_f, grads_f = forward_backward(ops.gated_rms_norm, x, dy, params)
    # the reference in float64 on the same values: the error of the kernel alone
    out_r, grads_r = forward_backward(
        reference.rms_norm, x.double(), dy.double(), {k: v.double() for k, v in params.items()})
    errors = {"out": rel_err(out_f, out_r), **{k: rel_err(grads_f[k], grads_r[k]) for k in grads_f}}
    print(f"shape [{TOKENS}, {HIDDEN}] {str(DTYPE).replace('torch.', '')}, gate rank {RANK}, "
          f"{'CUDA' if CUDA else 'triton interpreter on CPU'}")
    ok = True
    for name, err in errors.items():
        tol = TOL.get(name, TOL["param"])
        ok &= err <= tol
        print(f"  max rel. error {name:<11} {err:.2e}  (tolerance {tol:.1e})")
    print(f"correctness: {'PASS' if ok else 'FAIL'}")
    return ok


def time_ms(fn, reps=50):
    """Median milliseconds of fn() with CUDA events, after warm-up (compilation, autotuning)."""
    for _ in range(5):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def benchmark():
    x, dy, params = make_inputs()
    xg = x.detach().requires_grad_()
    pg = {k: v.detach().requires_grad_() for k, v in params.items()}
    floor_fwd = 2 * x.numel() * x.element_size()  # read x, write y: what any norm must move
    print(f"{'':<22}{'fwd ms':>9}{'fwd GB/s':>10}{'fwd+bwd ms':>12}")
    for name, fn in (("fused (Triton)", ops.gated_rms_norm), ("eager reference", reference.rms_norm)):
        fwd = time_ms(lambda: fn(x, eps=1e-5, **params))
        both = time_ms(lambda: fn(xg, eps=1e-5, **pg).backward(dy))
        print(f"{name:<22}{fwd:>9.3f}{floor_fwd / fwd / 1e6:>10.0f}{both:>12.3f}")


def main():
    ok = check_correctness()
    if CUDA:
        benchmark()
    else:
        print("timings: skipped (no CUDA; interpreter timings mean nothing). On a GPU this script times "
              "both; python benchmarks/norms.py --quick is the full roofline harness.")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
