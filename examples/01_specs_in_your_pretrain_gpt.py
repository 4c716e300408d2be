"""Example 1: the plugin's layer specs inside your own Megatron-LM ``pretrain_gpt.py``.

What you run on the cluster (Megatron-LM ``core_v0.19.x`` with the 2-line patch of
``patches/megatron-lm-core_v0.19.0-pretrain_gpt-gatednorm-args.patch`` applied)::

    cd Megatron-LM && git apply /path/to/megatron-gatednorm/patches/megatron-lm-core_v0.19.0-pretrain_gpt-gatednorm-args.patch
    torchrun --nproc-per-node 8 pretrain_gpt.py \\
        <your usual model / data / optimizer flags> --normalization RMSNorm \\
        --spec megatron_gatednorm.specs gatednorm_block_spec_from_args \\
        --norm-variant gatednorm --gatednorm-rank 16 --gatednorm-placement attn,mlp,final

* ``--spec MODULE FUNCTION``: Megatron-LM imports ``FUNCTION`` from ``MODULE`` and, since 0.19,
  calls it with the model config: ``gatednorm_block_spec_from_args(config, vp_stage=...)`` returns
  the decoder block spec (megatron-core's GPT layers with our norms in the residual-stream slots,
  sliced for the pipeline stage).
* ``--norm-variant`` / ``--gatednorm-*`` / ``--preaffine-init`` / ``--residual-clip`` are the
  plugin's flags; Megatron-LM's parser accepts them only through the ``extra_args_provider``
  ``megatron_gatednorm.norm_flags.add_gatednorm_args`` (that is all the patch adds).
* Megatron-LM 0.16-0.18 pass the ``--spec`` object to ``GPTModel`` without calling it: use
  ``mgn train`` there (example 2), which needs no patch.

No Megatron-LM checkout exists here, so the runnable part below does what ``pretrain_gpt.py``'s
model provider does with those flags: parse them (Megatron-LM's own parser when
``megatron.training`` is importable — megatron-core >= 0.17 — else a plain argparse parser with the
same ``add_gatednorm_args``), import the ``--spec`` function by its module path, call it with the
``TransformerConfig``, build a ``GPTModel`` on this machine (CPU works: ``init_distributed`` applies
the CPU shim) and run one forward/backward. It prints the norm class in every slot.

Run: ``python examples/01_specs_in_your_pretrain_gpt.py`` (about 15 s on 2 CPU cores; writes
nothing). Works with megatron-core 0.16.1 and 0.19.2.
"""

import contextlib
import importlib.util
import io
import sys
import types

import torch

# ``pretrain_gpt.py`` flags of a tiny model (2 layers, hidden 64). On a real run these are your flags.
MODEL_FLAGS = [
    "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
    "--group-query-attention", "--num-query-groups", "2", "--kv-channels", "16",
    "--ffn-hidden-size", "128", "--swiglu", "--disable-bias-linear", "--qk-layernorm",
    "--attention-output-gate",                      # the paper's baseline: gated attention
    "--normalization", "RMSNorm",                   # required: the plugin replaces RMSNorm slots
    "--position-embedding-type", "rope", "--seq-length", "16", "--max-position-embeddings", "16",
    "--vocab-size", "256", "--tokenizer-type", "NullTokenizer", "--mock-data",
    "--micro-batch-size", "2", "--global-batch-size", "2", "--train-iters", "1", "--lr", "1e-3",
    "--transformer-impl", "local",                  # "transformer_engine" on GPU nodes with TE
]
# The plugin's part: the spec function and its flags.
PLUGIN_FLAGS = [
    "--spec", "megatron_gatednorm.specs", "gatednorm_block_spec_from_args",
    "--norm-variant", "gatednorm", "--gatednorm-rank", "8", "--gatednorm-placement", "attn,mlp,final",
]
# Only because this example runs on CPU: switch off Megatron's CUDA-only fusions.
CPU_FLAGS = [
    "--no-rope-fusion", "--no-gradient-accumulation-fusion", "--no-masked-softmax-fusion",
    "--no-bias-swiglu-fusion", "--no-bias-dropout-fusion", "--no-persist-layer-norm", "--use-cpu-initialization",
]
ARGV = MODEL_FLAGS + PLUGIN_FLAGS + CPU_FLAGS


def parse_with_megatron_lm():
    """Megatron-LM's own parsing, as patched ``pretrain_gpt.py`` does it (megatron.training present)."""
    import typing

    if not hasattr(typing, "override"):  # megatron.training 0.19 wants Python >= 3.12; alias it on 3.11
        import typing_extensions

        typing.override = typing_extensions.override
    from megatron.training.arguments import core_transformer_config_from_args, parse_args, validate_args
    from megatron.training.global_vars import set_args

    from megatron_gatednorm.norm_flags import add_gatednorm_args

    sys.argv = ["pretrain_gpt.py"] + ARGV
    with contextlib.redirect_stdout(io.StringIO()):  # validate_args prints every argument
        args = parse_args(extra_args_provider=add_gatednorm_args)  # <- the patch's one change
        validate_args(args, {"tokenizer_type": "GPT2BPETokenizer"})
    args.padded_vocab_size = 256  # pretrain_gpt.py's tokenizer setup would compute this
    set_args(args)  # what megatron.training.get_args() returns: the spec function reads it
    return args, core_transformer_config_from_args(args)


def parse_without_megatron_lm():
    """The same flags through a plain argparse parser: the model flags this example needs, plus
    ``add_gatednorm_args`` exactly as Megatron-LM calls it. megatron-core 0.16's wheel has no
    ``megatron.training``; a stand-in module holds the parsed namespace for ``get_args()``."""
    import argparse

    import torch.nn.functional as F
    from megatron.core.transformer.transformer_config import TransformerConfig

    from megatron_gatednorm.norm_flags import add_gatednorm_args

    p = argparse.ArgumentParser()
    for flag in ("--num-layers", "--hidden-size", "--num-attention-heads", "--num-query-groups",
                 "--kv-channels", "--ffn-hidden-size", "--max-position-embeddings", "--vocab-size"):
        p.add_argument(flag, type=int)
    for flag in ("--swiglu", "--qk-layernorm", "--attention-output-gate"):
        p.add_argument(flag, action="store_true")
    p.add_argument("--spec", nargs="*")
    p.add_argument("--position-embedding-type", default="rope")
    p.add_argument("--transformer-impl", default="transformer_engine")
    add_gatednorm_args(p)
    args, _ = p.parse_known_args(ARGV)  # the training flags are Megatron-LM's business
    args.padded_vocab_size, args.untie_embeddings_and_output_weights, args.rotary_base = args.vocab_size, False, 10000
    stand_in = types.ModuleType("megatron.training")  # only what the spec function reads
    stand_in.get_args = lambda: args
    sys.modules["megatron.training"] = stand_in
    config = TransformerConfig(
        num_layers=args.num_layers, hidden_size=args.hidden_size, num_attention_heads=args.num_attention_heads,
        num_query_groups=args.num_query_groups, kv_channels=args.kv_channels, ffn_hidden_size=args.ffn_hidden_size,
        gated_linear_unit=args.swiglu, activation_func=F.silu, qk_layernorm=args.qk_layernorm,
        attention_output_gate=args.attention_output_gate, normalization="RMSNorm", add_bias_linear=False,
        bias_activation_fusion=False, hidden_dropout=0.0, attention_dropout=0.0, use_cpu_initialization=True,
        transformer_impl=args.transformer_impl,
    )
    return args, config


def main():
    from megatron.core.models.gpt import GPTModel
    from megatron.core.transformer.spec_utils import import_module

    from megatron_gatednorm.distributed import init_distributed

    if importlib.util.find_spec("megatron.training") is not None:
        args, config = parse_with_megatron_lm()
        parser = "Megatron-LM's parse_args + add_gatednorm_args"
    else:
        args, config = parse_without_megatron_lm()
        parser = "argparse + add_gatednorm_args (no megatron.training here)"
    print(f"parsed with: {parser}")
    print(f"plugin flags: norm_variant={args.norm_variant} gatednorm_rank={args.gatednorm_rank} "
          f"gatednorm_placement={args.gatednorm_placement}")

    # One process group and Megatron's parallel state (gloo + CPU shim without CUDA); in a real
    # run pretrain() initialises these.
    device = init_distributed()

    # What Megatron-LM does with --spec: import the function by module path, call it with the config.
    spec_fn = import_module(tuple(args.spec))
    spec = spec_fn(config, vp_stage=None)
    print(f"--spec {' '.join(args.spec)} -> {type(spec).__name__} with {len(spec.layer_specs)} layer specs")

    model = GPTModel(
        config=config, transformer_layer_spec=spec, vocab_size=args.padded_vocab_size,
        max_sequence_length=args.max_position_embeddings, position_embedding_type=args.position_embedding_type,
        share_embeddings_and_output_weights=not args.untie_embeddings_and_output_weights, rotary_base=args.rotary_base,
    ).to(device)

    # The norm class in each slot: GatedRMSNorm where the placement says so; QK-norm stays RMSNorm.
    for i, layer in enumerate(model.decoder.layers):
        attn = layer.self_attention
        print(f"layer {i}: input_layernorm={type(layer.input_layernorm).__name__} "
              f"pre_mlp_layernorm={type(layer.pre_mlp_layernorm).__name__} "
              f"q_layernorm={type(attn.q_layernorm).__name__} k_layernorm={type(attn.k_layernorm).__name__}")
    print(f"final_layernorm={type(model.decoder.final_layernorm).__name__}")
    print(f"parameters: {sum(p.numel() for p in model.parameters()):,}")

    # One forward/backward, as pretrain_gpt.py's forward_step does (labels -> per-token loss).
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, args.padded_vocab_size, (2, 16), generator=g).to(device)
    position_ids = torch.arange(16, device=device).unsqueeze(0).expand_as(tokens)
    loss = model(tokens, position_ids, None, labels=torch.roll(tokens, -1, dims=1)).float().mean()
    loss.backward()
    gate = model.decoder.layers[0].input_layernorm
    print(f"loss={loss.item():.4f} (ln 256 = 5.545); grad norms of layer 0's gate: "
          f"W_up {gate.gate_up.grad.norm():.3e}, W_down {gate.gate_down.grad.norm():.3e} "
          "(W_up starts at 0, so W_down's first gradient is 0)")
    print("OK")


if __name__ == "__main__":
    main()
