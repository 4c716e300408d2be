"""Megatron distributed checkpoints (torch_dist) of models with the plugin's norms, resharded.

Saves at TP=2 and at PP=2, then loads the TP=2 checkpoint at TP=1 and at PP=2 (TP=1), and the
PP=2 checkpoint at TP=1; each load starts from a differently seeded model and must give the
saved model's logits. PP logits are computed stage by stage with point-to-point sends.
"""

import os

import torch
import torch.distributed as dist
from _common import TINY, build, full_logits, max_diff, parse_args, positions, tokens, write

from megatron_gatednorm.norm_config import NormConfig
from megatron_gatednorm.distributed import init_distributed

VARIANTS = ("preaffine_gatednorm", "gatedyt")
SHAPE = TINY.replace(num_layers=4)


def logits_of(model):
    """Full logits on every rank, for any TP/PP layout (PP: stage 0 sends its hidden states)."""
    from megatron.core import parallel_state

    toks = tokens()[0]
    with torch.no_grad():
        if parallel_state.get_pipeline_model_parallel_world_size() == 1:
            return full_logits(model, toks)
        assert parallel_state.get_pipeline_model_parallel_world_size() == 2 and dist.get_world_size() == 2
        if parallel_state.is_pipeline_first_stage():
            hidden = model(toks, positions(), None)
            dist.send(hidden.contiguous(), dst=1)
            logits = torch.empty(toks.shape + (SHAPE.vocab_size,))
        else:
            hidden = torch.empty(toks.shape[1], toks.shape[0], SHAPE.hidden_size)
            dist.recv(hidden, src=0)
            model.set_input_tensor(hidden)
            logits = full_logits(model, toks)
        dist.broadcast(logits, src=1)
        return logits


def build_layout(nc, seed_offset, tp=1, pp=1):
    init_distributed(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, device="cpu")
    torch.manual_seed(1234 + seed_offset)
    model, _ = build(SHAPE, nc)
    if seed_offset:  # make sure a load has to overwrite every parameter
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
    return model


def save(model, path):
    from megatron.core import dist_checkpointing

    if dist.get_rank() == 0:
        os.makedirs(path, exist_ok=True)
    dist.barrier()
    dist_checkpointing.save(model.sharded_state_dict(), path)


def load(model, path):
    from megatron.core import dist_checkpointing

    state = dist_checkpointing.load(model.sharded_state_dict(), path)
    model.load_state_dict(state)


def main():
    args = parse_args()
    results = {}
    for v in VARIANTS:
        nc = NormConfig(variant=v, gate_up_init="init_method")
        saved = {}
        for name, layout in (("tp2", dict(tp=2)), ("pp2", dict(pp=2))):
            model = build_layout(nc, 0, **layout)
            saved[name] = logits_of(model)
            save(model, os.path.join(args.ckpt, v, name))
        for src, dst in (("tp2", dict()), ("tp2", dict(pp=2)), ("pp2", dict())):
            model = build_layout(nc, 1, **dst)
            before = logits_of(model)
            load(model, os.path.join(args.ckpt, v, src))
            after = logits_of(model)
            key = f"{v}/{src}->tp{dst.get('tp', 1)}pp{dst.get('pp', 1)}"
            results[key] = dict(
                logits=max_diff(after, saved[src]), before_load=max_diff(before, saved[src])
            )
    write(args.out, results)


if __name__ == "__main__":
    main()
