"""TP=2 (with and without sequence parallelism) against TP=1, for every norm variant.

Run with ``torchrun --nproc-per-node 2``. Phase 1 builds each case at TP=1 (DP=2) and keeps
logits, loss and norm gradients; phase 2 rebuilds it at TP=2 from the same seed and records
the differences, and the difference of the finalised norm gradients between the two ranks.
"""

import torch
import torch.distributed as dist
from _common import (
    TINY, build, finalize_grads, full_logits, max_diff, max_rel_diff, norm_grads, parse_args, positions,
    tokens, write,
)

from megatron_gatednorm.norm_config import VARIANTS, NormConfig
from megatron_gatednorm.distributed import init_distributed

_NC = dict(gate_up_init="init_method")  # W_up = 0 would make W_down's gradient exactly zero
CASES = {f"{v}+ga": (TINY, NormConfig(variant=v, **_NC), {}) for v in VARIANTS}
CASES["gatednorm-noga"] = (TINY.replace(attention_output_gate=False), NormConfig(**_NC), {})
CASES["gatednorm-tensorwise-clip-qk"] = (
    TINY, NormConfig(granularity="tensorwise", residual_clip=0.5, placement="attn,mlp,final,qk", **_NC), {}
)
CASES["preaffine_gatednorm-zero-centered"] = (
    TINY, NormConfig(variant="preaffine_gatednorm", **_NC), {"layernorm_zero_centered_gamma": True}
)


def run_case(shape, nc, overrides, toks):
    model, config = build(shape, nc, **overrides)
    loss = model(toks, positions(), None, labels=toks)
    loss.mean().backward()
    finalize_grads(model, config)
    with torch.no_grad():
        logits = full_logits(model, toks)
    return logits, loss.detach(), norm_grads(model)


def main():
    args = parse_args()
    toks = tokens()[0]
    init_distributed(tensor_model_parallel_size=1, device="cpu")
    reference = {name: run_case(*case, toks) for name, case in CASES.items()}

    init_distributed(tensor_model_parallel_size=2, device="cpu")
    from megatron.core import parallel_state

    tp_group = parallel_state.get_tensor_model_parallel_group()
    results = {}
    for name, (shape, nc, overrides) in CASES.items():
        ref_logits, ref_loss, ref_grads = reference[name]
        for sp in (False, True):
            logits, loss, grads = run_case(shape, nc, dict(overrides, sequence_parallel=sp), toks)
            across = 0.0
            for g in grads.values():
                both = [torch.empty_like(g) for _ in range(2)]
                dist.all_gather(both, g.contiguous(), group=tp_group)
                across = max(across, max_diff(both[0], both[1]))
            results[f"{name}/sp={sp}"] = dict(
                logits=max_diff(logits, ref_logits),
                loss=max_diff(loss, ref_loss),
                loss_value=float(loss.mean()),
                grads_vs_tp1=max_rel_diff(grads, ref_grads),
                grads_across_tp=across,
                grad_names=sorted(grads),
                ref_grad_names=sorted(ref_grads),
                min_ref_grad_norm=min(float(g.norm()) for g in ref_grads.values()),
            )
    write(args.out, results)


if __name__ == "__main__":
    main()
