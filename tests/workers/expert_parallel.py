"""MoE (4 experts, top-2, alltoall dispatcher): EP=2 against EP=1, for the norm variants.

Phase 1 builds each case at EP=1 (DP=2); phase 2 at EP=2 loads the same weights (rank r
holds experts 2r, 2r+1) and records per-token loss and norm-gradient differences.
"""

import re

from _common import (
    TINY_MOE, build, copy_from_full, full_state, max_diff, max_rel_diff, norm_grads, parse_args, positions,
    tokens, write,
)

from megatron_gatednorm.norm_config import NormConfig
from megatron_gatednorm.distributed import init_distributed

VARIANTS = ("rmsnorm", "gatednorm", "preaffine", "preaffine_gatednorm")


def run(nc, reference_state=None):
    from megatron.core import parallel_state

    model, config = build(TINY_MOE, nc, moe_token_dispatcher_type="alltoall")
    if reference_state is not None:
        ep_rank = parallel_state.get_expert_model_parallel_rank()
        local = TINY_MOE.num_experts // parallel_state.get_expert_model_parallel_world_size()
        shift = lambda n: re.sub(
            r"local_experts\.(\d+)\.", lambda m: f"local_experts.{int(m.group(1)) + ep_rank * local}.", n
        )
        copy_from_full(model, reference_state, shift)
    toks = tokens()[0]
    loss = model(toks, positions(), None, labels=toks)
    loss.mean().backward()
    experts = {m.group(1) for n, _ in model.named_parameters() for m in [re.search(r"local_experts\.(\d+)\.", n)] if m}
    return loss.detach(), norm_grads(model), full_state(model), len(experts)


def main():
    args = parse_args()
    init_distributed(expert_model_parallel_size=1, device="cpu")
    reference = {v: run(NormConfig(variant=v, gate_up_init="init_method")) for v in VARIANTS}
    init_distributed(expert_model_parallel_size=2, device="cpu")
    results = {}
    for v in VARIANTS:
        ref_loss, ref_grads, ref_state, ref_experts = reference[v]
        loss, grads, _, experts = run(NormConfig(variant=v, gate_up_init="init_method"), ref_state)
        results[v] = dict(
            loss=max_diff(loss, ref_loss), loss_value=float(loss.mean()),
            local_experts=experts, ref_local_experts=ref_experts,
            grads_vs_ep1=max_rel_diff(grads, ref_grads),
            grad_names=sorted(grads), ref_grad_names=sorted(ref_grads),
        )
    write(args.out, results)


if __name__ == "__main__":
    main()
