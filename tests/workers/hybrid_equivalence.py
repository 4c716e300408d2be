"""megatron-core's HybridModel (0.19: ``megatron.core.models.hybrid``) with the plugin's hybrid
specs: TP=2 (with and without sequence parallelism) against TP=1 (DP=2), on CPU in
.venv-mcore019 (the CPU shim replaces fla's kernels by megatron-core's torch reference).

Run with ``torchrun --nproc-per-node 2``. The pattern ``GE*-`` has one layer of every kind the
specs provide (Gated DeltaNet, MoE, attention, MLP); megatron-core refuses MoE with TP > 1 and no
sequence parallelism in training, so TP=2 without SP runs the dense pattern ``G*-``. Phase 1
builds each case at TP=1, saves it as a Megatron distributed checkpoint (``--ckpt``) and keeps
logits, loss and the gradients of every plugin norm (``*layernorm*``, ``final_norm``) and of
Gated DeltaNet's internal ``out_norm``; phase 2 builds it at TP=2 and loads that checkpoint.
(Loading, not reseeding: a seeded TP=2 build is a different model — Gated DeltaNet's conv,
A_log, dt_bias and the experts draw from the per-rank RNG, and its in_proj is sharded per
section [q|k|v|z|beta|alpha], which ``sharded_state_dict`` knows and a row split does not.)
"""

import os

import time

import torch
import torch.distributed as dist
from _common import (
    BATCH, SEED, SEQ, TINY, finalize_grads, max_diff, max_rel_diff, parse_args, positions, tokens, write,
)

from megatron_gatednorm.distributed import init_distributed
from megatron_gatednorm.norm_config import NormConfig

HYBRID = TINY.replace(
    num_experts=4, moe_ffn_hidden_size=48, moe_router_topk=2,
    linear_key_head_dim=16, linear_value_head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4,
)
_NC = dict(gate_up_init="init_method")  # W_up = 0 would make W_down's gradient exactly zero
# name: (pattern, norm config, sequence parallelism at TP=2)
CASES = {
    "gatednorm/GE*-": ("GE*-", NormConfig(variant="gatednorm", **_NC), (True,)),
    "preaffine_gatednorm-qk-clip/GE*-": ("GE*-", NormConfig(
        variant="preaffine_gatednorm", placement="attn,mlp,final,qk", residual_clip=2.0, **_NC
    ), (True,)),
    "gatednorm/G*-": ("G*-", NormConfig(variant="gatednorm", **_NC), (False,)),
}


def build(pattern, nc, **overrides):
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    from megatron_gatednorm.hybrid_specs import build_hybrid_model
    from megatron_gatednorm.model import transformer_config

    torch.manual_seed(SEED)
    model_parallel_cuda_manual_seed(SEED)
    shape = HYBRID.replace(num_layers=len(pattern.replace("|", "")))
    config = transformer_config(shape, nc, use_cpu_initialization=True, params_dtype=torch.float32, **overrides)
    model = build_hybrid_model(config, pattern, shape.vocab_size, SEQ)
    return model, config


def is_plugin_norm(name):
    return "layernorm" in name or "final_norm" in name


def run_case(pattern, nc, toks, ckpt, **overrides):
    """``ckpt``: save this model there (TP=1) or, if it exists, load it first (TP=2)."""
    from megatron.core import dist_checkpointing
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    model, config = build(pattern, nc, **overrides)
    dist.barrier()
    if os.path.exists(os.path.join(ckpt, "metadata.json")):
        model.load_state_dict(dist_checkpointing.load(model.sharded_state_dict(), ckpt))
    else:
        if dist.get_rank() == 0:
            os.makedirs(ckpt)
        dist.barrier()
        dist_checkpointing.save(model.sharded_state_dict(), ckpt)
    loss = model(toks, positions(), None, labels=toks)
    loss.mean().backward()
    finalize_grads(model, config)
    with torch.no_grad():
        logits = gather_from_tensor_model_parallel_region(model(toks, positions(), None))
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if "norm" in n and p.grad is not None}
    kinds = sorted({type(m).__name__ for n, m in model.named_modules() if is_plugin_norm(n)})
    return logits, loss.detach(), grads, kinds


def main():
    args = parse_args()
    toks = tokens()[0]
    assert toks.shape == (BATCH, SEQ)
    init_distributed(tensor_model_parallel_size=1, device="cpu")
    start = time.time()
    ckpt = {name: os.path.join(args.ckpt, name.replace("/", "_").replace("*", "A")) for name in CASES}
    reference = {name: run_case(pattern, nc, toks, ckpt[name]) for name, (pattern, nc, _) in CASES.items()}
    results = {"_seconds_tp1": time.time() - start}

    init_distributed(tensor_model_parallel_size=2, device="cpu")
    from megatron.core import parallel_state

    tp_group = parallel_state.get_tensor_model_parallel_group()
    start = time.time()
    for name, (pattern, nc, sps) in CASES.items():
        ref_logits, ref_loss, ref_grads, ref_kinds = reference[name]
        for sp in sps:
            logits, loss, grads, kinds = run_case(pattern, nc, toks, ckpt[name], sequence_parallel=sp)
            across = {}
            for n, g in grads.items():
                both = [torch.empty_like(g) for _ in range(2)]
                dist.all_gather(both, g.contiguous(), group=tp_group)
                across[n] = max_diff(both[0], both[1])
            plugin = {n: g for n, g in grads.items() if is_plugin_norm(n)}
            out_norm = {n: g for n, g in grads.items() if "out_norm" in n}
            results[f"{name}/sp={sp}"] = dict(
                logits=max_diff(logits, ref_logits),
                loss=max_diff(loss, ref_loss),
                loss_value=float(loss.mean()),
                grads_vs_tp1=max_rel_diff(plugin, ref_grads),
                grads_across_tp=max(across[n] for n in plugin),
                out_norm_grads_vs_tp1=max_rel_diff(out_norm, ref_grads),
                out_norm_grads_across_tp=max(across[n] for n in out_norm),
                grad_names=sorted(plugin),
                ref_grad_names=sorted(n for n in ref_grads if is_plugin_norm(n)),
                min_ref_grad_norm=min(float(ref_grads[n].norm()) for n in plugin),
                norm_kinds=kinds,
                ref_norm_kinds=ref_kinds,
            )
    results["_seconds_tp2"] = time.time() - start
    write(args.out, results)


if __name__ == "__main__":
    main()
