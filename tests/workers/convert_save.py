"""Save tiny models of every norm variant (dense and MoE) at TP=2, PP=2 and EP=2 as Megatron-LM
checkpoints (with ``args``), and record Megatron's logits for each, and its greedy continuation
at TP=2.

``--load`` mode instead loads the given checkpoints (``dir@layout`` pairs) into models built
from the checkpoint's own args at that layout and records their logits: used for the
HF → Megatron direction and the Megatron → HF → Megatron round trip.
"""

import argparse
import os

import torch
import torch.distributed as dist
from _common import SEED, TINY, TINY_MOE, write
from _common import perturb as shared_perturb

from megatron_gatednorm.norm_config import NormConfig
from megatron_gatednorm.checkpoint import (
    Arch, arch_from_args, iteration_dir, load_megatron_checkpoint, megatron_args, save_checkpoint,
)
from megatron_gatednorm.checkpoint.common_state import read_common
from megatron_gatednorm.distributed import init_distributed
from megatron_gatednorm.model import build_gpt_model, transformer_config

BATCH, SEQ, NEW = 2, 8, 8
DENSE = TINY.replace(max_position_embeddings=SEQ + NEW)
MOE = TINY_MOE.replace(max_position_embeddings=SEQ + NEW)
PLAIN = dict(attention_output_gate=False)
# hybrid: Gated DeltaNet in layers 0 and 2, softmax attention in 1 and 3 (Qwen3-Next's pattern)
HYBRID = DENSE.replace(
    num_layers=4, experimental_attention_variant="gated_delta_net", linear_attention_freq=2,
    linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=12,
)
HYBRID_MOE = HYBRID.replace(num_experts=4, moe_ffn_hidden_size=48, moe_router_topk=2,
                            moe_shared_expert_intermediate_size=32, moe_shared_expert_gate=True)
QWEN3_NEXT = dict(zero_centered_gamma=True, rotary_percent=0.5)

# name -> (shape, NormConfig kwargs, Arch extras)
CASES = {
    "qwen3": (DENSE.replace(**PLAIN), dict(variant="rmsnorm"), {}),
    "llama": (DENSE.replace(qk_layernorm=False, untie_embeddings_and_output_weights=True, **PLAIN),
              dict(variant="rmsnorm"), {}),
    "gated_attn": (DENSE, dict(variant="rmsnorm"), {}),
    "gatednorm": (DENSE, dict(variant="gatednorm"), {}),
    "preaffine": (DENSE.replace(**PLAIN), dict(variant="preaffine"), dict(zero_centered_gamma=True)),
    "preaffine_gatednorm": (DENSE, dict(variant="preaffine_gatednorm", placement="attn,mlp,final,qk",
                                        granularity="tensorwise", gate_activation="tanh"), {}),
    "dyt": (DENSE.replace(untie_embeddings_and_output_weights=True), dict(variant="dyt"), {}),
    "gatedyt": (DENSE, dict(variant="gatedyt", residual_clip=2.0, placement="attn,final"), {}),
    "moe_qwen3": (MOE.replace(**PLAIN), dict(variant="rmsnorm"), {}),
    "moe_gatednorm": (MOE.replace(moe_shared_expert_intermediate_size=32, moe_shared_expert_gate=True,
                                  moe_layer_freq=[1, 0]), dict(variant="gatednorm"), {}),
    "moe_preaffine": (MOE, dict(variant="preaffine"), dict(moe_router_pre_softmax=True)),
    "moe_preaffine_gatednorm": (MOE.replace(moe_shared_expert_intermediate_size=32),
                                dict(variant="preaffine_gatednorm"), {}),
    "moe_dyt": (MOE.replace(untie_embeddings_and_output_weights=True), dict(variant="dyt"), {}),
    "moe_gatedyt": (MOE, dict(variant="gatedyt", gate_activation="silu"), {}),
    "next_qwen3": (HYBRID_MOE, dict(variant="rmsnorm"), QWEN3_NEXT),
    "next_gatednorm": (HYBRID_MOE.replace(moe_layer_freq=[1, 1, 0, 1]),
                       dict(variant="gatednorm", placement="mlp,final"), QWEN3_NEXT),
    "next_dense_preaffine": (HYBRID.replace(untie_embeddings_and_output_weights=True),
                             dict(variant="preaffine"), {}),
}
LAYOUTS = {"tp2": dict(tp=2), "pp2": dict(pp=2), "ep2": dict(ep=2)}
GREEDY_LAYOUT = "tp2"  # greedy decoding (8 growing forwards) is recorded at one layout per case


def case_arch(name) -> Arch:
    shape, nc, extras = CASES[name]
    return Arch(shape, NormConfig(gate_up_init="init_method", **nc), **extras)


def tokens():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, DENSE.vocab_size, (BATCH, SEQ), generator=g)


def build(arch: Arch, tp=1, pp=1, ep=1):
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    init_distributed(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, expert_model_parallel_size=ep,
                     device="cpu")
    torch.manual_seed(SEED)
    model_parallel_cuda_manual_seed(SEED)
    overrides = dict(use_cpu_initialization=True, **arch.transformer_config_overrides())
    config = transformer_config(arch.shape, arch.norm_config, **overrides)
    return build_gpt_model(arch.shape, config, max_sequence_length=SEQ + NEW,
                           rotary_percent=arch.rotary_percent, rotary_base=int(arch.rotary_base))


def perturb(model):
    """Move every replicated parameter (norms, router, gates) off its initial value, identically
    on all tensor-parallel replicas."""
    shared_perturb(model, skip=lambda name, p: getattr(p, "tensor_model_parallel", False) or "experts" in name)


def logits_of(model, toks, vocab):
    """Full logits [b, s, V] on every rank, for TP/EP and PP=2 (stage 0 sends its hidden states)."""
    from megatron.core import parallel_state

    positions = torch.arange(toks.shape[1]).unsqueeze(0).expand_as(toks)
    with torch.no_grad():
        if parallel_state.get_pipeline_model_parallel_world_size() == 1:
            return full_logits_at(model, toks, positions)
        if parallel_state.is_pipeline_first_stage():
            hidden = model(toks, positions, None)
            dist.send(hidden.contiguous(), dst=1)
            logits = torch.empty(toks.shape + (vocab,))
        else:
            hidden = torch.empty(toks.shape[1], toks.shape[0], model.config.hidden_size)
            dist.recv(hidden, src=0)
            model.set_input_tensor(hidden)
            logits = full_logits_at(model, toks, positions)
        dist.broadcast(logits, src=1)
        return logits


def full_logits_at(model, toks, positions):
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    return gather_from_tensor_model_parallel_region(model(toks, positions, None))


def greedy(model, toks, vocab, n=NEW):
    for _ in range(n):
        nxt = logits_of(model, toks, vocab)[:, -1].argmax(-1, keepdim=True)
        toks = torch.cat([toks, nxt], dim=1)
    return toks


def save_all(out_dir):
    results = {}
    toks = tokens()
    for layout, kw in LAYOUTS.items():  # layout outermost: one set of process groups per layout
        for name in CASES:
            arch = case_arch(name)
            if layout == "ep2" and not arch.shape.num_experts:
                continue
            model = build(arch, **kw)
            model.eval()
            perturb(model)
            # the other layouts' logits equal the same model's: greedy decoding at one
            results[f"{name}/{layout}"] = save_and_record(model, arch, os.path.join(out_dir, name, layout), kw, toks,
                                                          with_greedy=layout == GREEDY_LAYOUT)
    return results


def save_and_record(model, arch: Arch, path, layout: dict, toks, with_greedy: bool) -> dict:
    """Save ``model`` at ``path`` with the args of ``layout`` (``tp``/``pp``/``ep``) and return what
    the pytest side compares the conversion with: the checkpoint, Megatron's logits, the greedy tokens."""
    args = megatron_args(arch, tensor_model_parallel_size=layout.get("tp", 1),
                         pipeline_model_parallel_size=layout.get("pp", 1),
                         expert_model_parallel_size=layout.get("ep", 1))
    save_checkpoint(path, 0, model, args)
    vocab = arch.shape.vocab_size
    record = dict(ckpt=path, logits=logits_of(model, toks, vocab).tolist())
    if with_greedy:
        record["greedy"] = greedy(model, toks, vocab).tolist()
    return record


def load_all(pairs):
    results = {}
    toks = tokens()
    for pair in sorted(pairs, key=lambda p: p.rsplit("@", 1)[1]):  # one set of process groups per layout
        path, layout = pair.rsplit("@", 1)
        kw = LAYOUTS.get(layout, {})
        iter_dir, _ = iteration_dir(path)
        arch = arch_from_args(read_common(iter_dir)["args"])
        model = build(arch, **kw)
        model.eval()
        before = logits_of(model, toks, arch.shape.vocab_size)
        load_megatron_checkpoint(model, path)
        logits = logits_of(model, toks, arch.shape.vocab_size)
        results[pair] = dict(logits=logits.tolist(), changed=float((logits - before).abs().max()))
    return results


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--ckpt", default=None)
    p.add_argument("--load", nargs="*", default=None)
    args = p.parse_args()
    results = load_all(args.load) if args.load is not None else save_all(args.ckpt)
    write(args.out, results)


if __name__ == "__main__":
    main()
