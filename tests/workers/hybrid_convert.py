"""megatron-core 0.19.2's HybridModel and conversion, on CPU in .venv-mcore019 (``torchrun
--nproc-per-node 2``); the pytest side is tests/test_hybrid_convert.py. One launch, two phases:

1. GPT hybrid ⇄ HybridModel (single-rank models, TP=PP=1): weights moved off their initial values
   in one model, renamed by :mod:`megatron_gatednorm.checkpoint.hybrid_keys` and loaded (strict)
   into the other; both directions, the logits of both models recorded.
2. Tiny HybridModels saved at TP=2, PP=2 (the pattern split by ``|``) and EP=2 with their args, as
   convert_save.py does for GPT models: Megatron's logits per layout, greedy continuation at TP=2.
   (``to-megatron --hybrid-model``'s checkpoint is checked against these saves key by key and byte
   by byte on the pytest side, not loaded here: a second launch would cost CI time.)
"""

import argparse
import os

import torch
from _common import SEED, full_state, perturb as shared_perturb, write
from convert_save import GREEDY_LAYOUT, NEW, SEQ, case_arch as gpt_case_arch, logits_of, perturb, save_and_record, tokens

from megatron_gatednorm.checkpoint import Arch
from megatron_gatednorm.checkpoint.hybrid_keys import gpt_to_hybrid, hybrid_to_gpt
from megatron_gatednorm.model_shape import hybrid_form
from megatron_gatednorm.distributed import init_distributed

# name -> (convert_save case giving norms and extras, its shape changes: 2 GPT layers, pattern, pattern at PP=2)
CASES = {
    # the RMSNorm baseline with Qwen3-Next's choices (gated shared expert, zero-centred gamma,
    # QK-norm, output gate, partial RoPE): stock Qwen3NextForCausalLM
    "hybrid_qwen3_next": ("next_qwen3", dict(num_layers=2, linear_attention_freq=2), "GE*E", "GE|*E"),
    # a variant on a dense-FFN/MoE mix: the exported architecture
    "hybrid_gatednorm": ("next_gatednorm", dict(num_layers=2, linear_attention_freq=2, moe_layer_freq=[1, 0]),
                         "GE*-", "GE|*-"),
}
LAYOUTS = {"tp2": dict(tp=2), "pp2": dict(pp=2), "ep2": dict(ep=2)}


def case_arch(name, pp=1) -> Arch:
    base, changes, pattern, split = CASES[name]
    arch = gpt_case_arch(base)
    return arch.replace(shape=arch.shape.replace(**changes), hybrid_layer_pattern=split if pp > 1 else pattern)


def _seed():
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    torch.manual_seed(SEED)
    model_parallel_cuda_manual_seed(SEED)


def _config(arch: Arch, shape):
    from megatron_gatednorm.model import transformer_config

    return transformer_config(shape, arch.norm_config, use_cpu_initialization=True,
                              **arch.transformer_config_overrides())


def build_hybrid(arch: Arch):
    """This rank's HybridModel of ``arch`` (its pattern, its GPT-hybrid shape as HybridModel args)."""
    from megatron_gatednorm.hybrid_specs import build_hybrid_model

    _seed()
    shape = hybrid_form(arch.shape)
    return build_hybrid_model(_config(arch, shape), arch.hybrid_layer_pattern, shape.vocab_size, SEQ + NEW,
                              rotary_percent=arch.rotary_percent, rotary_base=int(arch.rotary_base)).eval()


def build_gpt(arch: Arch):
    from megatron_gatednorm.model import build_gpt_model

    _seed()
    return build_gpt_model(arch.shape, _config(arch, arch.shape), max_sequence_length=SEQ + NEW,
                           rotary_percent=arch.rotary_percent, rotary_base=int(arch.rotary_base)).eval()


def _load_renamed(target, source_state, rename, pattern):
    """Load ``rename(source_state, pattern)`` into ``target`` (strict: exactly its tensor names)."""
    local = target.state_dict()
    renamed = rename(source_state, pattern)
    wanted = {k for k, v in local.items() if not k.endswith("_extra_state") and isinstance(v, torch.Tensor)}
    assert set(renamed) == wanted, (sorted(set(renamed) ^ wanted))[:8]
    local.update(renamed)
    target.load_state_dict(local, strict=True)
    return len(renamed)


def _state(model):
    return {k: v for k, v in full_state(model).items() if isinstance(v, torch.Tensor)}


def equivalence():
    init_distributed(device="cpu")
    results, toks = {}, tokens()
    vocab = 128
    for name in CASES:
        arch = case_arch(name)
        pattern = arch.hybrid_layer_pattern
        for direction, rename in (("gpt->hybrid", gpt_to_hybrid), ("hybrid->gpt", hybrid_to_gpt)):
            gpt, hybrid = build_gpt(arch), build_hybrid(arch)
            source, target = (gpt, hybrid) if direction == "gpt->hybrid" else (hybrid, gpt)
            shared_perturb(source)
            before = logits_of(target, toks, vocab)
            n = _load_renamed(target, _state(source), rename, pattern)
            a, b = logits_of(source, toks, vocab), logits_of(target, toks, vocab)
            results[f"{name}/{direction}"] = dict(diff=float((a - b).abs().max()), scale=float(a.abs().max()),
                                                  changed=float((b - before).abs().max()), tensors=n)
    return results


def save_all(out_dir):
    results, toks = {}, tokens()
    for layout, kw in LAYOUTS.items():  # layout outermost: one set of process groups per layout
        init_distributed(tensor_model_parallel_size=kw.get("tp", 1), pipeline_model_parallel_size=kw.get("pp", 1),
                         expert_model_parallel_size=kw.get("ep", 1), device="cpu")
        for name in CASES:
            arch = case_arch(name, pp=kw.get("pp", 1))
            model = build_hybrid(arch)
            perturb(model)
            record = save_and_record(model, arch, os.path.join(out_dir, name, layout), kw, toks,
                                     with_greedy=layout == GREEDY_LAYOUT)
            results[f"{name}/{layout}"] = dict(record, pattern=arch.hybrid_layer_pattern)
    return results


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--ckpt", required=True)
    args = p.parse_args()
    import time

    start = time.time()
    results = {"equivalence": equivalence()}
    results["_seconds_equivalence"] = time.time() - start
    results["saved"] = save_all(args.ckpt)
    results["_seconds_saved"] = time.time() - start
    results["_seconds_total"] = time.time() - start
    write(args.out, results)


if __name__ == "__main__":
    main()
