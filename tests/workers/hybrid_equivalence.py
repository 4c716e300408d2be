"""megatron-core's HybridModel (0.19: ``megatron.core.models.hybrid``) with the plugin's hybrid
specs: TP=2 (with and without sequence parallelism), EP=2 and PP=2 (a pattern split by ``|``)
against the single-rank layout (TP=PP=EP=1, DP=2), on CPU in .venv-mcore019 (the CPU shim
replaces fla's kernels by megatron-core's torch reference).

Run with ``torchrun --nproc-per-node 2``. The pattern ``GE*-`` has one layer of every kind the
specs provide (Gated DeltaNet, MoE, attention, MLP); megatron-core refuses MoE with TP > 1 and no
sequence parallelism in training, so TP=2 without SP runs the dense pattern ``G*-``. Phase 1
builds each case at TP=1, saves it as a Megatron distributed checkpoint (``--ckpt``) and keeps
logits, loss and the gradients of every plugin norm (``*layernorm*``, ``final_norm``) and of
Gated DeltaNet's internal ``out_norm``; phase 2 builds it at TP=2 and loads that checkpoint.
(Loading, not reseeding: a seeded TP=2 build is a different model — Gated DeltaNet's conv,
A_log, dt_bias and the experts draw from the per-rank RNG, and its in_proj is sharded per
section [q|k|v|z|beta|alpha], which ``sharded_state_dict`` knows and a row split does not.)

Phase 3 builds the ``GE*-`` cases at EP=2 (each rank holds 2 of the 4 experts) from the same
checkpoint. Phase 4 builds them at PP=2 with the pattern split as ``GE|*-`` (stage 0: Gated
DeltaNet + MoE, stage 1: attention + MLP and the final norm) from the same checkpoint, and runs
Megatron's 1F1B schedule over :data:`N_MICRO` micro-batches against the no-pipelining schedule
at PP=1 (run in phase 1): per-micro-batch losses and the accumulated norm gradients, by global
layer number.
"""

import os
import re
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


N_MICRO = 3
SPLIT = {"GE*-": "GE|*-"}  # the PP=2 form of a pattern


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


def build_from(pattern, nc, ckpt, **overrides):
    """This rank's model; ``ckpt``: save it there (single rank) or, if it exists, load it first."""
    from megatron.core import dist_checkpointing

    model, config = build(pattern, nc, **overrides)
    dist.barrier()
    if os.path.exists(os.path.join(ckpt, "metadata.json")):
        model.load_state_dict(dist_checkpointing.load(model.sharded_state_dict(), ckpt))
    else:
        if dist.get_rank() == 0:
            os.makedirs(ckpt)
        dist.barrier()
        dist_checkpointing.save(model.sharded_state_dict(), ckpt)
    return model, config


def run_case(pattern, nc, toks, ckpt, **overrides):
    """Logits, loss, norm gradients and plugin norm classes of one forward/backward."""
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    model, config = build_from(pattern, nc, ckpt, **overrides)
    loss = model(toks, positions(), None, labels=toks)
    loss.mean().backward()
    finalize_grads(model, config)
    with torch.no_grad():
        logits = gather_from_tensor_model_parallel_region(model(toks, positions(), None))
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if "norm" in n and p.grad is not None}
    kinds = sorted({type(m).__name__ for n, m in model.named_modules() if is_plugin_norm(n)})
    experts = sum(1 for n, _ in model.named_modules() if re.fullmatch(r".*\.local_experts\.\d+", n))
    return logits, loss.detach(), grads, kinds, experts


def run_schedule(pattern, nc, ckpt, **overrides):
    """Per-micro-batch losses (on every rank) and the accumulated norm gradients by global layer
    number (all stages), through Megatron's pipeline schedule for this layout."""
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_gatednorm.hybrid_pattern import segments

    model, config = build_from(pattern, nc, ckpt, pipeline_dtype=torch.float32, **overrides)
    offset = sum(len(seg) for seg in segments(pattern)[: parallel_state.get_pipeline_model_parallel_rank()])

    def forward_step(data_iterator, model):
        toks = next(data_iterator)
        out = model(toks, positions(), None, labels=toks)
        return out, lambda output: (output.float().mean(), {"lm loss": output.float().mean().detach()})

    losses = get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=iter(tokens(N_MICRO)), model=[model],
        num_microbatches=N_MICRO, seq_length=SEQ, micro_batch_size=BATCH, forward_only=False,
    )
    finalize_grads(model, config)
    shift = lambda n: re.sub(r"layers\.(\d+)\.", lambda m: f"layers.{int(m.group(1)) + offset}.", n)
    grads = {shift(n): p.grad.detach().clone() for n, p in model.named_parameters()
             if is_plugin_norm(n) and p.grad is not None}
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (grads, [float(x["lm loss"]) for x in losses] if losses else None))
    merged = {}
    for g, _ in gathered:
        merged.update(g)
    stage_losses = next(l for _, l in reversed(gathered) if l)  # the last stage's
    return stage_losses, merged


def compare_case(name, ref, got):
    """The phase-2 record of one layout's run of ``name`` against its single-rank reference."""
    from megatron.core import parallel_state

    ref_logits, ref_loss, ref_grads, ref_kinds, ref_experts = ref
    logits, loss, grads, kinds, experts = got
    tp_group = parallel_state.get_tensor_model_parallel_group()
    across = {}
    for n, g in grads.items():
        both = [torch.empty_like(g) for _ in range(dist.get_world_size(tp_group))]
        dist.all_gather(both, g.contiguous(), group=tp_group)
        across[n] = max(max_diff(both[0], b) for b in both)
    plugin = {n: g for n, g in grads.items() if is_plugin_norm(n)}
    out_norm = {n: g for n, g in grads.items() if "out_norm" in n}
    return dict(
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
        local_experts=experts,
        ref_local_experts=ref_experts,
    )


def main():
    args = parse_args()
    toks = tokens()[0]
    assert toks.shape == (BATCH, SEQ)
    init_distributed(tensor_model_parallel_size=1, device="cpu")
    start = time.time()
    ckpt = {name: os.path.join(args.ckpt, name.replace("/", "_").replace("*", "A")) for name in CASES}
    reference = {name: run_case(pattern, nc, toks, ckpt[name]) for name, (pattern, nc, _) in CASES.items()}

    scheduled = {name: run_schedule(pattern, nc, ckpt[name]) for name, (pattern, nc, _) in CASES.items()
                 if pattern in SPLIT}
    results = {"_seconds_tp1": time.time() - start}

    init_distributed(tensor_model_parallel_size=2, device="cpu")
    start = time.time()
    for name, (pattern, nc, sps) in CASES.items():
        for sp in sps:
            got = run_case(pattern, nc, toks, ckpt[name], sequence_parallel=sp)
            results[f"{name}/sp={sp}"] = compare_case(name, reference[name], got)
    results["_seconds_tp2"] = time.time() - start

    init_distributed(expert_model_parallel_size=2, device="cpu")
    start = time.time()
    for name, (pattern, nc, _) in CASES.items():
        if "E" in pattern:
            got = run_case(pattern, nc, toks, ckpt[name], moe_token_dispatcher_type="alltoall")
            results[f"{name}/ep=2"] = compare_case(name, reference[name], got)
    results["_seconds_ep2"] = time.time() - start

    init_distributed(pipeline_model_parallel_size=2, device="cpu")
    start = time.time()
    for name, (ref_losses, ref_grads) in scheduled.items():
        pattern, nc, _ = CASES[name]
        losses, grads = run_schedule(SPLIT[pattern], nc, ckpt[name])
        results[f"{name}/pp=2"] = dict(
            pattern=SPLIT[pattern], losses=losses, ref_losses=ref_losses,
            loss=max(abs(a - b) for a, b in zip(losses, ref_losses)),
            grads_vs_pp1=max_rel_diff(grads, ref_grads),
            grad_names=sorted(grads), ref_grad_names=sorted(ref_grads),
            min_ref_grad_norm=min(float(g.norm()) for g in ref_grads.values()),
        )
    results["_seconds_pp2"] = time.time() - start
    write(args.out, results)


if __name__ == "__main__":
    main()
