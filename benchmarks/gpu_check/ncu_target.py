"""The program ``gpu_check.sh`` runs under ``ncu --profile-from-start off``: one forward+backward of
each norm at 16384x4096 bf16 (bf16 parameters, as Megatron --bf16 keeps them) between
``torch.cuda.profiler.start()`` and ``stop()``, so ncu measures DRAM bytes, time and registers of
exactly those kernels. Cases, in order (``_common.NCU_CASES``): torch's ``F.rms_norm``, then the
fused rmsnorm, preaffine, gatednorm and preaffine_gatednorm through the public API. A
``torch.cuda._sleep`` kernel (``spin_kernel``) precedes each case so that ``report.py`` can split
ncu's rows by case. Every case runs once before the profiled range (Triton compiles there).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

try:  # imported as benchmarks.gpu_check.<helper> (the tests)
    from . import _common as C
except ImportError:  # run as a script: its folder is sys.path[0]
    import _common as C


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=C.NCU_SHAPE[0])
    p.add_argument("--hidden", type=int, default=C.NCU_SHAPE[1])
    return p.parse_args(argv)


def _cases(d):
    """name -> (fn(x, params), params), in NCU_CASES order."""
    dev, bf16 = "cuda", torch.bfloat16
    cases = {"torch_rms_norm": (lambda x, p: F.rms_norm(x, (d,), p["weight"], C.EPS),
                                {"weight": C.norm_params("rmsnorm", d, bf16, dev)["weight"]})}
    for variant in C.VARIANTS:
        cases[f"fused_{variant}"] = (C.fused_norm, C.norm_params(variant, d, bf16, dev))
    assert tuple(cases) == C.NCU_CASES
    return cases


def _run(fn, x, dy, params):
    # fresh leaves without copies: no clone or gradient-accumulation kernel enters the profile
    ps = {k: v.detach().requires_grad_() for k, v in params.items()}
    fn(x.detach().requires_grad_(), ps).backward(dy)


def main(argv=None) -> int:
    args = _parse(argv)
    os.environ.pop("TRITON_INTERPRET", None)
    reason = C.cuda_or_reason()
    if reason:
        C.fail("ncu_target", f"needs CUDA: {reason}")
    torch.manual_seed(0)
    x = torch.randn(args.tokens, args.hidden, device="cuda", dtype=torch.bfloat16)
    dy = torch.randn_like(x)
    cases = _cases(args.hidden)
    for fn, params in cases.values():
        _run(fn, x, dy, params)
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    for fn, params in cases.values():
        torch.cuda._sleep(1000)  # the case delimiter (spin_kernel)
        _run(fn, x, dy, params)
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()
    print(f"ncu_target: profiled {', '.join(cases)} at {args.tokens}x{args.hidden} bf16", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
