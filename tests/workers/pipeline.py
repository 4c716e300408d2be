"""PP=2 through Megatron's real pipeline schedule (4 micro-batches) against PP=1.

Phase 1 runs the no-pipelining schedule at PP=1 (DP=2); phase 2 the 1F1B schedule at PP=2.
Records the per-micro-batch losses and the norm gradients (mapped to global layer numbers).
"""

import re

import torch
import torch.distributed as dist
from _common import (
    BATCH, SEQ, TINY, build, copy_from_full, full_state, max_rel_diff, norm_grads, parse_args, positions,
    tokens, write,
)

from megatron_gatednorm.norm_config import NormConfig
from megatron_gatednorm.distributed import init_distributed

N_MICRO = 4
SHAPE = TINY.replace(num_layers=4)
VARIANTS = ("rmsnorm", "gatednorm", "preaffine_gatednorm")


def _global_name(name, offset):
    return re.sub(r"layers\.(\d+)\.", lambda m: f"layers.{int(m.group(1)) + offset}.", name)


def run(nc, reference_state=None):
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    model, config = build(SHAPE, nc, pipeline_dtype=torch.float32)
    offset = parallel_state.get_pipeline_model_parallel_rank() * (SHAPE.num_layers // parallel_state.get_pipeline_model_parallel_world_size())
    if reference_state is not None:
        copy_from_full(model, reference_state, lambda n: _global_name(n, offset))
    state = full_state(model)
    batches = iter(tokens(N_MICRO))

    def forward_step(data_iterator, model):
        toks = next(data_iterator)
        out = model(toks, positions(), None, labels=toks)

        def loss_func(output_tensor):
            loss = output_tensor.float().mean()
            return loss, {"lm loss": loss.detach()}

        return out, loss_func

    losses = get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=batches, model=[model],
        num_microbatches=N_MICRO, seq_length=SEQ, micro_batch_size=BATCH, forward_only=False,
    )
    grads = {_global_name(n, offset): g for n, g in norm_grads(model).items()}
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, grads)
    merged = {}
    for g in gathered:
        merged.update(g)
    loss_values = [float(l["lm loss"]) for l in losses] if losses else None
    all_losses = [None] * dist.get_world_size()
    dist.all_gather_object(all_losses, loss_values)
    return next(l for l in all_losses if l), merged, state


def main():
    args = parse_args()
    init_distributed(pipeline_model_parallel_size=1, device="cpu")
    reference = {v: run(NormConfig(variant=v, gate_up_init="init_method")) for v in VARIANTS}
    init_distributed(pipeline_model_parallel_size=2, device="cpu")
    results = {}
    for v in VARIANTS:
        ref_losses, ref_grads, ref_state = reference[v]
        losses, grads, _ = run(NormConfig(variant=v, gate_up_init="init_method"), ref_state)
        results[v] = dict(
            losses=losses, ref_losses=ref_losses,
            loss_diff=max(abs(a - b) for a, b in zip(losses, ref_losses)),
            grads_vs_pp1=max_rel_diff(grads, ref_grads),
            grad_names=sorted(grads), ref_grad_names=sorted(ref_grads),
        )
    write(args.out, results)


if __name__ == "__main__":
    main()
