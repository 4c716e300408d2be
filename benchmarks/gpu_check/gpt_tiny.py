"""A tiny megatron-core GPTModel per norm variant (rmsnorm, preaffine, gatednorm,
preaffine_gatednorm) in bf16 on one GPU, built like production training (the plugin's
``get_gatednorm_block_spec`` through ``megatron_gatednorm.model``, local backend, no TE). Measures,
per variant:

* ``fused_vs_eager``: loss and parameter gradients with ``MGN_NORM_IMPL=fused`` against
  ``MGN_NORM_IMPL=eager`` on the same model (relative differences; which path each norm took),
  and the median ms of a fwd+bwd step on each path;
* ``recompute``: full activation recompute (granularity full, method uniform, 1 layer) against
  no recompute: loss and gradients bit-exact, max relative difference;
* ``ddp``: Megatron's DistributedDataParallel (fp32 ``main_grad`` buffers) plus
  ``finalize_model_grads`` in a 1-rank NCCL world against plain autograd (same fused path).

Writes one JSON file (``--out``), rewritten after each check. ``--cpu-smoke`` runs the same code in
fp32 on CPU (gloo, the project's CPU shim, triton's interpreter): it tests this
script, not the GPU. On a GPU the shim is never applied (``init_distributed`` refuses it).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

try:  # imported as benchmarks.gpu_check.<helper> (the tests)
    from . import _common as C
except ImportError:  # run as a script: its folder is sys.path[0]
    import _common as C

SHAPE_FIELDS = ("num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size", "vocab_size")
RECOMPUTE = dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--budget-s", type=float, default=110.0, help="skip the remaining checks after this")
    p.add_argument("--variants", nargs="+", default=list(C.VARIANTS), choices=C.VARIANTS)
    p.add_argument("--cpu-smoke", action="store_true", help="tiny fp32 model on CPU, triton interpreter")
    return p.parse_args(argv)


class Setup:
    """Shape, dtype and data of the run; builds seeded models."""

    def __init__(self, cpu_smoke: bool):
        from megatron_gatednorm.model_shape import ModelShape

        self.cuda = not cpu_smoke
        self.dev = "cuda" if self.cuda else "cpu"
        self.dtype = torch.bfloat16 if self.cuda else torch.float32
        if self.cuda:
            self.shape = ModelShape(num_layers=2, hidden_size=1024, num_attention_heads=8,
                                    ffn_hidden_size=2816, vocab_size=4096, max_position_embeddings=1024)
            self.batch, self.seq = 4, 1024
        else:
            self.shape = ModelShape(num_layers=2, hidden_size=64, num_attention_heads=4,
                                    ffn_hidden_size=128, vocab_size=128, max_position_embeddings=32)
            self.batch, self.seq = 2, 32
        g = torch.Generator().manual_seed(0)
        self.tokens = torch.randint(0, self.shape.vocab_size, (self.batch, self.seq), generator=g).to(self.dev)
        self.positions = torch.arange(self.seq, device=self.dev).unsqueeze(0).expand(self.batch, self.seq)
        # an explicit causal mask (True = masked), as Megatron-LM's data loader makes by default
        self.mask = torch.ones(1, 1, self.seq, self.seq, dtype=torch.bool, device=self.dev).triu(1)

    def build(self, variant: str, **overrides):
        from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

        from megatron_gatednorm.norm_config import NormConfig
        from megatron_gatednorm.model import build_gpt_model, transformer_config

        torch.manual_seed(1234)
        model_parallel_cuda_manual_seed(1234)
        nc = NormConfig(variant=variant, gate_up_init="init_method")  # gates start away from 0.5
        cfg = transformer_config(
            self.shape, nc, params_dtype=self.dtype, bf16=self.dtype == torch.bfloat16,
            use_cpu_initialization=not self.cuda, **overrides,
        )
        return build_gpt_model(self.shape, cfg, max_sequence_length=self.seq), cfg

    def step(self, model):
        """One fwd+bwd; the mean per-token loss."""
        loss = model(self.tokens, self.positions, self.mask, labels=self.tokens).float().mean()
        loss.backward()
        return loss.detach()


def fused_vs_eager(setup, variant, ref):
    model, _ = setup.build(variant)
    res = {}
    for impl in ("fused", "eager"):
        C.with_impl(impl)
        model.zero_grad(set_to_none=True)
        loss = setup.step(model)
        grads = C.model_grads(model)
        res[f"{impl}_decisions"] = C.impl_decisions(model)
        res[f"{impl}_ms"] = C.median_step_ms(setup, model, 5 if setup.cuda else 1)
        if impl == "fused":
            ref[variant] = (loss, grads)  # the baseline of the recompute and DDP checks
    res.update(C.compare_run(loss, grads, *ref[variant]))
    res["compared"] = "eager against fused"
    C.with_impl("fused")
    return res


def recompute(setup, variant, ref):
    C.with_impl("fused")
    model, _ = setup.build(variant, **RECOMPUTE)
    loss = setup.step(model)
    return {"config": RECOMPUTE, "decisions": C.impl_decisions(model), **C.compare_run(loss, C.model_grads(model), *ref[variant])}


def ddp(setup, variant, ref):
    from megatron.core.distributed import (
        DistributedDataParallel,
        DistributedDataParallelConfig,
        finalize_model_grads,
    )

    C.with_impl("fused")
    model, cfg = setup.build(variant)
    ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False)
    wrapped = DistributedDataParallel(cfg, ddp_config, module=model)
    wrapped.zero_grad_buffer()
    loss = setup.step(wrapped)
    finalize_model_grads([wrapped])
    grads = C.model_grads(wrapped)
    norm_names = [n for n in grads if "layernorm" in n]
    return {
        "norm_parameters": len(norm_names),
        "norm_main_grads_nonzero": all(bool(grads[n].abs().sum() > 0) for n in norm_names),
        **C.compare_run(loss, grads, *ref[variant]),
    }


def main(argv=None) -> int:
    args = _parse(argv)
    C.start_megatron_helper("gpt_tiny", args.cpu_smoke)
    import megatron.core

    setup = Setup(args.cpu_smoke)
    res = C.Results(args.out, "gpt_tiny", args.budget_s)
    res.data["env"] = {
        "megatron_core": getattr(megatron.core, "__version__", None), "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if setup.cuda else "cpu", "dtype": str(setup.dtype),
        "backend": torch.distributed.get_backend(), "batch": setup.batch, "seq": setup.seq,
        "shape": {k: getattr(setup.shape, k) for k in SHAPE_FIELDS},
    }
    res.save()
    ref = {}
    for variant in args.variants:
        res.check(f"{variant}/fused_vs_eager", fused_vs_eager, setup, variant, ref)
        if variant not in ref:
            continue
        res.check(f"{variant}/recompute", recompute, setup, variant, ref)
        res.check(f"{variant}/ddp", ddp, setup, variant, ref)
        if setup.cuda:
            torch.cuda.empty_cache()
    print(f"NOTE: {len(res.data['checks'])} checks in {time.time() - res.t0:.0f} s, errors: {res.data['errors']}",
          flush=True)
    return 1 if res.data["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
