"""Megatron indexed datasets (.bin/.idx) from text, with megatron-core's own builder.

Each document is tokenised and followed by the end-of-document token, as Megatron-LM's
``tools/preprocess_data.py --append-eod`` does, so the files work with Megatron's GPTDataset.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy


def write_indexed_dataset(texts: Iterable[str], tokenizer, prefix) -> dict:
    """Write ``prefix.bin`` / ``prefix.idx`` (through a temporary name, renamed at the end)."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    tmp = prefix.with_name(prefix.name + ".tmp")
    dtype = numpy.uint16 if tokenizer.vocab_size < 65500 else numpy.int32
    builder = IndexedDatasetBuilder(str(tmp) + ".bin", dtype=dtype)
    documents = tokens = 0
    for text in texts:
        ids = tokenizer.encode(text) + [tokenizer.eod]
        builder.add_document(ids, [len(ids)])
        documents += 1
        tokens += len(ids)
    if documents == 0:
        raise ValueError("no documents to write: the input is empty")
    builder.finalize(str(tmp) + ".idx")
    for ext in (".bin", ".idx"):
        os.replace(str(tmp) + ext, str(prefix) + ext)
    return dict(prefix=str(prefix), documents=documents, tokens=tokens, dtype=numpy.dtype(dtype).name)
