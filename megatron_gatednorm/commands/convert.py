"""``mgn convert``: Megatron torch_dist checkpoints ⇄ Hugging Face folders, offline on CPU.

``mgn convert to-hf --load <megatron save dir> --out <hf dir> [--tokenizer DIR]`` and
``mgn convert to-megatron --hf <hf dir> --out <megatron dir> [--tp N --pp N --ep N] [--hybrid-model]``.
See ``megatron_gatednorm/convert/README.md``.
"""

from __future__ import annotations

import argparse
import sys

HELP = "Convert Megatron distributed checkpoints to Hugging Face folders and back (CPU, offline)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="direction", required=True, metavar="DIRECTION")
    h = sub.add_parser("to-hf", help="Megatron torch_dist checkpoint -> HF safetensors folder")
    h.add_argument("--load", required=True, help="Megatron-LM save dir (with latest_checkpointed_iteration.txt) or an iter_* dir")
    h.add_argument("--out", required=True, help="output HF folder (must not exist unless --overwrite)")
    h.add_argument("--tokenizer", default=None,
                   help="local HF tokenizer folder to copy into the output (default: the folder the "
                        "checkpoint's args name as --tokenizer-model, if it is there; a line says which)")
    h.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default=None, help="cast weights (default: as saved)")
    h.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (default 5GB)")
    h.add_argument("--gatednorm-arch", action="store_true",
                   help="write the GatedNorm HF architecture even for a stock-expressible baseline")
    h.add_argument("--overwrite", action="store_true",
                   help="replace --out if it is an HF folder mgn wrote (nothing else in it)")
    h.add_argument("--no-verify", action="store_true",
                   help="read the input even if its files differ from the .mgn-manifest.json mgn wrote with it")
    h.add_argument("--no-progress", action="store_true")
    m = sub.add_parser("to-megatron", help="HF folder -> Megatron-LM torch_dist checkpoint")
    m.add_argument("--hf", required=True, help="HF folder (Qwen3, Qwen3-MoE, Qwen3-Next, Llama or GatedNorm)")
    m.add_argument("--out", required=True, help="output Megatron save dir (must not exist unless --overwrite)")
    m.add_argument("--tp", type=int, default=1, help="tensor_model_parallel_size saved in args")
    m.add_argument("--pp", type=int, default=1, help="pipeline_model_parallel_size saved in args")
    m.add_argument("--ep", type=int, default=1, help="expert_model_parallel_size saved in args")
    m.add_argument("--vocab-size", type=int, default=None, help="unpadded tokenizer vocab size for args (default: the padded size)")
    m.add_argument("--tokenizer-type", default=None,
                   help="Megatron's --tokenizer-type recorded in args (megatron.training compares it when "
                        "resuming without --finetune from a vocab-file tokenizer)")
    m.add_argument("--hybrid-model", action="store_true",
                   help="write a megatron-core HybridModel checkpoint (pretrain_hybrid.py, megatron-core >= 0.18; "
                        "args carry --hybrid-layer-pattern, split into --pp stages by '|') instead of a GPTModel one")
    m.add_argument("--overwrite", action="store_true",
                   help="replace --out if it is a checkpoint mgn wrote (nothing else in it)")
    m.add_argument("--no-verify", action="store_true",
                   help="read the input even if its files differ from the .mgn-manifest.json mgn wrote with it")


def run(args) -> int:
    if args.direction == "to-hf":
        from megatron_gatednorm.convert.to_hf import convert_to_hf

        name = convert_to_hf(
            args.load, args.out, tokenizer=args.tokenizer, dtype=args.dtype,
            max_shard_size=args.max_shard_size, overwrite=args.overwrite,
            force_gatednorm=args.gatednorm_arch, progress=not args.no_progress, verify=not args.no_verify,
            notes=lambda note: print(f"to-hf: {note}", file=sys.stderr),
        )
        print(f"wrote {args.out} ({name})")
    else:
        from megatron_gatednorm.convert.to_megatron import convert_to_megatron

        arch = convert_to_megatron(
            args.hf, args.out, tp=args.tp, pp=args.pp, ep=args.ep, overwrite=args.overwrite,
            vocab_size=args.vocab_size, tokenizer_type=args.tokenizer_type, verify=not args.no_verify,
            hybrid_model=args.hybrid_model, notes=lambda note: print(f"to-megatron: {note}", file=sys.stderr),
        )
        model = f"HybridModel {arch.hybrid_layer_pattern!r}, " if arch.hybrid_layer_pattern else ""
        print(f"wrote {args.out} ({model}norm variant {arch.norm_config.variant}; load with --finetune or --no-load-optim --no-load-rng)")
    return 0
