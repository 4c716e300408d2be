"""Shared pieces of the torchrun workers: the tiny model, its inputs, and grad finalisation.

Workers run under ``torchrun`` on CPU and write their measurements as JSON to the path given by
``--out``; the pytest side asserts on them. Each initialises with
``init_distributed(..., device="cpu")``: the gloo backend, chosen explicitly, so that on a machine
with a GPU torch never gets NCCL for these CPU tensors (``nccl`` is only for ``device="cuda"``).
"""

import argparse
import json

import torch
import torch.distributed as dist

from megatron_gatednorm.norm_config import NormConfig
from megatron_gatednorm.model_shape import ModelShape

SEED = 1234
SEQ, BATCH = 8, 2

TINY = ModelShape(
    num_layers=2, hidden_size=72, num_attention_heads=4, num_query_groups=2, kv_channels=18,
    ffn_hidden_size=96, vocab_size=128, qk_layernorm=True, attention_output_gate=True,
    max_position_embeddings=SEQ,
)
TINY_MOE = TINY.replace(num_experts=4, moe_ffn_hidden_size=48, moe_router_topk=2)


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--ckpt", default=None)
    return p.parse_args()


def tokens(n_microbatches=1):
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, TINY.vocab_size, (BATCH, SEQ), generator=g) for _ in range(n_microbatches)]


def positions():
    return torch.arange(SEQ).unsqueeze(0).expand(BATCH, SEQ)


def build(shape, nc: NormConfig, **config_overrides):
    """Seed, then build this rank's model: identical initial weights for every layout."""
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    from megatron_gatednorm.model import build_gpt_model, transformer_config

    torch.manual_seed(SEED)
    model_parallel_cuda_manual_seed(SEED)
    overrides = dict(use_cpu_initialization=True, params_dtype=torch.float32)
    overrides.update(config_overrides)
    config = transformer_config(shape, nc, **overrides)
    return build_gpt_model(shape, config, max_sequence_length=SEQ), config


def full_logits(model, toks):
    """Logits gathered over the tensor-parallel vocab shards: [b, s, V]."""
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    logits = model(toks, positions(), None)
    return gather_from_tensor_model_parallel_region(logits)


def finalize_grads(model, config):
    """The plugin's training-loop gradient finalisation (TP/SP norm all-reduce, DP average)."""
    from megatron_gatednorm.distributed import finalize_grads as finalize

    finalize(model, config)


def norm_grads(model):
    """Gradients of every plugin norm parameter, by name."""
    return {
        n: p.grad.detach().clone()
        for n, p in model.named_parameters()
        if "layernorm" in n and p.grad is not None
    }


def write(path, results):
    if dist.get_rank() == 0:
        with open(path, "w") as f:
            json.dump(results, f, indent=1)


def max_diff(a, b):
    return float((a.double() - b.double()).abs().max())


def max_rel_diff(grads, ref_grads):
    """Largest per-tensor ``max|a-b| / max|b|``: relative even for tiny gradients (DyT's are ~1e-12
    in places), so a tolerance means the same for every tensor."""
    worst = 0.0
    for name, g in grads.items():
        scale = float(ref_grads[name].abs().max())
        worst = max(worst, max_diff(g, ref_grads[name]) / max(scale, 1e-30))
    return worst


def full_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if not k.endswith("_extra_state")}


def copy_from_full(model, full, rename):
    """Load this rank's part of a single-rank state dict; ``rename`` maps a local parameter
    name to the full model's name (shifted layer or expert numbers)."""
    local = model.state_dict()
    for name in local:
        if name.endswith("_extra_state"):
            continue
        source = rename(name)
        if source not in full and name == "output_layer.weight":  # tied: the embedding's copy
            source = "embedding.word_embeddings.weight"
        local[name] = full[source]
    model.load_state_dict(local)


def perturb(model, skip=lambda name, p: False):
    """Move every parameter not ``skip``-ped off its initial value: ``+0.2·N(0, 1)`` from a
    generator seeded by the parameter's name (identical on every rank and run)."""
    import zlib

    with torch.no_grad():
        for name, p in model.named_parameters():
            if not skip(name, p):
                g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
                p.add_(0.2 * torch.randn(p.shape, generator=g))
