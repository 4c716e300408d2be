"""A tiny megatron-core ``HybridModel`` (pattern ``GE*E``: Gated DeltaNet, MoE, attention, MoE)
per norm variant, built with the plugin's hybrid specs (``megatron_gatednorm.hybrid_specs``, local
backend, no TE), trained a few steps in bf16 on one GPU. Needs megatron-core >= 0.18 (gpu_check.sh
installs 0.19.2) and, on a GPU, ``fla`` (fla-core, carried as a wheel): megatron-core's Gated
DeltaNet refuses to build without it there. Records, per variant:

* ``fused_vs_eager``: one forward/backward with ``MGN_NORM_IMPL=fused`` against ``eager`` on the
  same weights: loss and gradient relative differences, which path each norm took;
* ``train``: :data:`STEPS` AdamW steps (lr 1e-3) on one fixed batch — every loss finite and the
  last below the first (a model that cannot memorise one batch is broken) — and the median ms of
  a fwd+bwd step; which gated delta rule ran (fla's ``chunk_gated_delta_rule`` or megatron-core's
  torch reference).

Writes one JSON file (``--out``), rewritten after each check. ``--cpu-smoke`` runs the same code
in fp32 on CPU (gloo, the project's CPU shim, which swaps fla for megatron-core's torch rule): it
tests this script, not the GPU.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch

try:  # imported as benchmarks.gpu_check.<helper> (the tests)
    from . import _common as C
except ImportError:  # run as a script: its folder is sys.path[0]
    import _common as C

PATTERN = "GE*E"
STEPS = 8


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--budget-s", type=float, default=60.0, help="skip the remaining checks after this")
    p.add_argument("--variants", nargs="+", default=list(C.VARIANTS), choices=C.VARIANTS)
    p.add_argument("--cpu-smoke", action="store_true", help="tiny fp32 model on CPU, triton interpreter")
    return p.parse_args(argv)


class HybridSetup:
    """Shape, dtype and data of the run; builds seeded HybridModels (``cuda`` and ``step``: what
    ``_common.median_step_ms`` uses)."""

    def __init__(self, cpu_smoke: bool):
        from megatron_gatednorm.model_shape import ModelShape

        self.cuda = not cpu_smoke
        self.dev = "cuda" if self.cuda else "cpu"
        self.dtype = torch.bfloat16 if self.cuda else torch.float32
        if self.cuda:
            self.shape = ModelShape(
                num_layers=len(PATTERN), hidden_size=512, num_attention_heads=8, num_query_groups=2, kv_channels=64,
                ffn_hidden_size=1024, vocab_size=4096, max_position_embeddings=512, qk_layernorm=True,
                attention_output_gate=True, num_experts=4, moe_ffn_hidden_size=512, moe_router_topk=2,
                linear_key_head_dim=64, linear_value_head_dim=64, linear_num_key_heads=4, linear_num_value_heads=8)
            self.batch, self.seq = 4, 512
        else:
            self.shape = ModelShape(
                num_layers=len(PATTERN), hidden_size=64, num_attention_heads=4, num_query_groups=2, kv_channels=16,
                ffn_hidden_size=128, vocab_size=128, max_position_embeddings=32, qk_layernorm=True,
                attention_output_gate=True, num_experts=4, moe_ffn_hidden_size=64, moe_router_topk=2,
                linear_key_head_dim=16, linear_value_head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4)
            self.batch, self.seq = 2, 32
        g = torch.Generator().manual_seed(0)
        self.tokens = torch.randint(0, self.shape.vocab_size, (self.batch, self.seq), generator=g).to(self.dev)
        self.positions = torch.arange(self.seq, device=self.dev).unsqueeze(0).expand(self.batch, self.seq)

    def build(self, variant: str):
        from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

        from megatron_gatednorm.hybrid_specs import build_hybrid_model
        from megatron_gatednorm.model import transformer_config
        from megatron_gatednorm.norm_config import NormConfig

        torch.manual_seed(1234)
        model_parallel_cuda_manual_seed(1234)
        nc = NormConfig(variant=variant, gate_up_init="init_method")
        cfg = transformer_config(self.shape, nc, params_dtype=self.dtype, bf16=self.dtype == torch.bfloat16,
                                 use_cpu_initialization=not self.cuda, moe_token_dispatcher_type="allgather")
        model = build_hybrid_model(cfg, PATTERN, self.shape.vocab_size, self.seq, nc)
        return model.to(self.dev)

    def step(self, model):
        """One fwd+bwd; the mean per-token loss (causal attention without an explicit mask)."""
        loss = model(self.tokens, self.positions, None, labels=self.tokens).float().mean()
        loss.backward()
        return loss.detach()


def _delta_rule() -> str:
    """Which gated delta rule megatron-core's Gated DeltaNet runs here."""
    from megatron.core.ssm.gated_delta_net import gdn

    fn = gdn.chunk_gated_delta_rule
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__name__', type(fn).__name__)}"


def fused_vs_eager(setup, variant):
    model = setup.build(variant)
    out = {}
    for impl in ("fused", "eager"):
        C.with_impl(impl)
        model.zero_grad(set_to_none=True)
        out[impl] = (setup.step(model), C.model_grads(model))
        out[f"{impl}_decisions"] = C.impl_decisions(model)
    C.with_impl("fused")
    res = C.compare_run(*out["eager"], *out["fused"])
    res.update(compared="eager against fused", fused_decisions=out["fused_decisions"],
               eager_decisions=out["eager_decisions"])
    return res


def train(setup, variant):
    C.with_impl("fused")
    model = setup.build(variant)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    losses = []
    for _ in range(STEPS):
        opt.zero_grad(set_to_none=True)
        losses.append(setup.step(model).item())
        opt.step()
    return {
        "pattern": PATTERN, "steps": STEPS, "losses": [round(x, 5) for x in losses],
        "finite": all(math.isfinite(x) for x in losses), "decreasing": losses[-1] < losses[0],
        "step_ms": C.median_step_ms(setup, model, 5 if setup.cuda else 1), "decisions": C.impl_decisions(model),
        "gated_delta_rule": _delta_rule(),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def main(argv=None) -> int:
    args = _parse(argv)
    C.start_megatron_helper("hybrid_tiny", args.cpu_smoke, "megatron.core.models.hybrid", "megatron-core >= 0.18")
    import megatron.core

    setup = HybridSetup(args.cpu_smoke)
    res = C.Results(args.out, "hybrid_tiny", args.budget_s)
    res.data["env"] = {
        "megatron_core": getattr(megatron.core, "__version__", None), "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if setup.cuda else "cpu", "dtype": str(setup.dtype),
        "batch": setup.batch, "seq": setup.seq, "pattern": PATTERN, "gated_delta_rule": _delta_rule(),
        "hidden_size": setup.shape.hidden_size,
    }
    res.save()
    for variant in args.variants:
        res.check(f"{variant}/fused_vs_eager", fused_vs_eager, setup, variant)
        res.check(f"{variant}/train", train, setup, variant)
        if setup.cuda:
            torch.cuda.empty_cache()
    bad = [n for n, r in res.data["checks"].items() if n.endswith("/train") and "losses" in r
           and not (r["finite"] and r["decreasing"])]
    print(f"NOTE: {len(res.data['checks'])} checks in {time.time() - res.t0:.0f} s, errors: {res.data['errors']}, "
          f"not training: {bad}, delta rule: {res.data['env']['gated_delta_rule']}", flush=True)
    return 1 if res.data["errors"] or bad else 0


if __name__ == "__main__":
    sys.exit(main())
