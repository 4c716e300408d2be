"""Benchmark the residual-stream norms on one CUDA GPU.

Sweeps hidden ∈ {2048, 4096, 6144, 8192} × tokens ∈ {4096, 16384} (overridable), forward
and forward+backward, for: torch RMSNorm (``F.rms_norm``), eager GatedNorm (the reference),
torch.compile GatedNorm, fused GatedNorm and fused PreAffine RMSNorm. Each row prints the
median time (``triton.testing.do_bench``), the modelled bandwidth and its ratio to a
device-to-device copy measured in the same run. Then a Llama-7B-like layer
(d=4096, 32 heads, SwiGLU 11008) is timed forward+backward with torch RMSNorm, eager
GatedNorm and fused GatedNorm in its two norm slots, and the gated variants' overhead is
printed relative to the RMSNorm layer.

Bandwidth model (bytes actually required, activation dtype size ``e``, ``T`` tokens):
forward reads x and writes y: ``2·T·d·e``; forward+backward additionally reads x and dy and
writes dx: ``5·T·d·e``. Parameters, rstd and the rank-r vectors are left out (< 1 %).

Usage: ``python benchmarks/norms.py [--dtype bf16] [--rank 16] [--no-compile]``.
Needs CUDA and triton; exits with a message otherwise.
"""

from __future__ import annotations

import argparse
import math
import sys

import torch
import torch.nn.functional as F

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
EPS = 1e-5


def _parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, nargs="+", default=[2048, 4096, 6144, 8192])
    p.add_argument("--tokens", type=int, nargs="+", default=[4096, 16384])
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--warmup", type=int, default=25, help="do_bench warmup (ms)")
    p.add_argument("--rep", type=int, default=100, help="do_bench measurement time (ms)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile provider")
    p.add_argument("--layer-tokens", type=int, default=16384, help="tokens per micro-batch of the layer test")
    p.add_argument("--layer-seq", type=int, default=4096, help="sequence length of the layer test")
    return p.parse_args()


def _require_cuda_and_triton():
    if not torch.cuda.is_available():
        sys.exit(
            "benchmarks/norms.py needs a CUDA GPU: torch.cuda.is_available() is False "
            f"(torch {torch.__version__}). Nothing was measured."
        )
    try:
        import triton  # noqa: F401
    except ImportError as e:
        sys.exit(f"benchmarks/norms.py needs triton for the fused kernels ({e}). Nothing was measured.")


def _bench(fn, args, grad_to_none=None):
    import triton.testing

    # Run once outside do_bench so torch.compile / triton compilation time does not leak into
    # do_bench's run-count estimate.
    fn()
    torch.cuda.synchronize()
    return triton.testing.do_bench(
        fn, warmup=args.warmup, rep=args.rep, grad_to_none=grad_to_none, return_mode="median"
    )


def _copy_gbps(args, numel, dtype):
    src = torch.empty(numel, dtype=dtype, device="cuda").normal_()
    dst = torch.empty_like(src)
    ms = _bench(lambda: dst.copy_(src), args)
    return 2 * numel * src.element_size() / ms / 1e6


def _providers(args, d, dtype):
    from megatron_gatednorm.ops import fused_rms_norm, gated_rms_norm, reference

    dev = dict(device="cuda", dtype=torch.float32)
    w = torch.ones(d, **dev).requires_grad_()
    s = torch.ones(d, **dev).requires_grad_()
    gd = (torch.randn(args.rank, d, **dev) / math.sqrt(d)).requires_grad_()
    gu = (torch.randn(d, args.rank, **dev) * 0.02).requires_grad_()
    wd = w.detach().to(dtype).requires_grad_()  # torch RMSNorm: weight in activation dtype

    def eager_gated(x):
        return reference.rms_norm(x, w, EPS, gate_down=gd, gate_up=gu)

    provs = {
        "torch RMSNorm": (lambda x: F.rms_norm(x, (d,), wd, EPS), [wd]),
        "eager GatedNorm": (eager_gated, [w, gd, gu]),
    }
    if not args.no_compile:
        provs["compile GatedNorm"] = (torch.compile(eager_gated, dynamic=False), [w, gd, gu])
    provs["fused GatedNorm"] = (
        lambda x: gated_rms_norm(x, weight=w, gate_down=gd, gate_up=gu, eps=EPS), [w, gd, gu]
    )
    provs["fused PreAffine"] = (lambda x: fused_rms_norm(x, weight=w, pre_scale=s, eps=EPS), [w, s])
    return provs


def sweep(args, dtype, copy_gbps):
    esize = torch.empty((), dtype=dtype).element_size()
    print(f"\n{'provider':<18} {'hidden':>6} {'tokens':>6} {'pass':<8} {'ms':>8} {'GB/s':>8} {'/copy':>6}")
    for d in args.hidden:
        for t in args.tokens:
            x = torch.randn(t, d, device="cuda", dtype=dtype)
            dy = torch.randn_like(x)
            for name, (fn, params) in _providers(args, d, dtype).items():
                with torch.no_grad():
                    ms_f = _bench(lambda: fn(x), args)
                xg = x.detach().clone().requires_grad_()
                ms_fb = _bench(lambda: fn(xg).backward(dy), args, grad_to_none=[xg, *params])
                for pass_, ms, nbytes in (("fwd", ms_f, 2 * t * d * esize), ("fwd+bwd", ms_fb, 5 * t * d * esize)):
                    gbps = nbytes / ms / 1e6
                    print(f"{name:<18} {d:>6} {t:>6} {pass_:<8} {ms:>8.4f} {gbps:>8.0f} {gbps / copy_gbps:>6.2f}")
            del x, dy
            torch.cuda.empty_cache()


class _LlamaLayer(torch.nn.Module):
    """Pre-norm decoder layer: attention (causal SDPA, no RoPE) and SwiGLU MLP, no TP."""

    def __init__(self, norm1, norm2, d=4096, heads=32, ffn=11008, dtype=torch.bfloat16):
        super().__init__()
        f = dict(device="cuda", dtype=dtype, bias=False)
        self.heads = heads
        self.norm1, self.norm2 = norm1, norm2
        self.qkv = torch.nn.Linear(d, 3 * d, **f)
        self.proj = torch.nn.Linear(d, d, **f)
        self.gate_up = torch.nn.Linear(d, 2 * ffn, **f)
        self.down = torch.nn.Linear(ffn, d, **f)

    def forward(self, x):  # x: [b, s, d]
        b, s, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, s, 3, self.heads, d // self.heads).unbind(2)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, s, d))
        g, u = self.gate_up(self.norm2(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(g) * u)


def _norm_modules(kind, d, rank, dtype):
    from megatron_gatednorm.ops import gated_rms_norm, reference

    class Norm(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(d, device="cuda", dtype=dtype))
            if kind != "rmsnorm":
                self.gate_down = torch.nn.Parameter(torch.randn(rank, d, device="cuda", dtype=dtype) / math.sqrt(d))
                self.gate_up = torch.nn.Parameter(torch.randn(d, rank, device="cuda", dtype=dtype) * 0.02)

        def forward(self, x):
            if kind == "rmsnorm":
                return F.rms_norm(x, (d,), self.weight, EPS)
            if kind == "eager":
                return reference.rms_norm(x, self.weight, EPS, gate_down=self.gate_down, gate_up=self.gate_up)
            return gated_rms_norm(x, weight=self.weight, gate_down=self.gate_down, gate_up=self.gate_up, eps=EPS)

    return Norm(), Norm()


def layer_overhead(args, dtype):
    d, seq = 4096, args.layer_seq
    b = max(1, args.layer_tokens // seq)
    print(f"\nLlama-7B-like layer (d={d}, 32 heads, SwiGLU 11008), {b}x{seq} tokens, {dtype}, fwd+bwd:")
    torch.manual_seed(0)
    x = torch.randn(b, seq, d, device="cuda", dtype=dtype)
    dy = torch.randn_like(x)
    times = {}
    for kind, label in (("rmsnorm", "torch RMSNorm"), ("eager", "eager GatedNorm"), ("fused", "fused GatedNorm")):
        layer = _LlamaLayer(*_norm_modules(kind, d, args.rank, dtype), d=d, dtype=dtype)
        xg = x.detach().clone().requires_grad_()
        times[label] = _bench(lambda: layer(xg).backward(dy), args, grad_to_none=[xg, *layer.parameters()])
        del layer
        torch.cuda.empty_cache()
    base = times["torch RMSNorm"]
    for label, ms in times.items():
        print(f"  {label:<18} {ms:9.3f} ms   overhead vs RMSNorm layer: {100 * (ms / base - 1):+6.2f} %")


def main():
    args = _parse()
    _require_cuda_and_triton()
    import triton

    dtype = DTYPES[args.dtype]
    props = torch.cuda.get_device_properties(0)
    numel = max(args.tokens) * max(args.hidden)
    copy_gbps = _copy_gbps(args, numel, dtype)
    print(
        f"{props.name} ({props.multi_processor_count} SMs), torch {torch.__version__}, "
        f"triton {triton.__version__}, dtype {args.dtype}, rank {args.rank}"
    )
    print(f"device-to-device copy of {numel} elements: {copy_gbps:.0f} GB/s (read + write)")
    sweep(args, dtype, copy_gbps)
    layer_overhead(args, dtype)


if __name__ == "__main__":
    main()
