"""Fixed evaluation windows from a Megatron indexed dataset (.bin/.idx).

Documents are concatenated in file order (with their end-of-document tokens) and cut into
non-overlapping windows of ``seq_length`` tokens; window ``i`` is the same for every tool and
run, so perplexities and outlier statistics are comparable across checkpoints.
"""

from __future__ import annotations

from pathlib import Path

import numpy
import torch


def open_indexed_dataset(prefix, flag: str = "--data"):
    """Megatron's ``IndexedDataset`` at ``prefix`` (``prefix.bin`` + ``prefix.idx``); a
    ``ValueError`` naming ``flag`` when the files are missing, folders, or not an index."""
    import struct

    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megatron_gatednorm.user_input import existing_file

    if str(prefix).endswith((".bin", ".idx")):
        raise ValueError(f"{flag} {prefix}: give the prefix without .bin/.idx")
    if Path(prefix).is_dir():
        raise ValueError(f"{flag} {prefix} is a folder; expected a .bin/.idx prefix such as "
                         f"{Path(prefix) / 'heldout_text_document'} (mgn data)")
    for ext in (".idx", ".bin"):
        existing_file(f"{prefix}{ext}", flag)
    ds = IndexedDataset.__new__(IndexedDataset)
    try:
        ds.__init__(str(prefix))
        return ds
    except (struct.error, AssertionError, ValueError, OSError, IndexError) as e:
        ds.bin_reader = ds.index = None  # what its __del__ deletes: no "Exception ignored" on stderr
        raise ValueError(f"{flag} {prefix}: cannot read {prefix}.idx/.bin ({type(e).__name__}: {e}); the files are "
                         "truncated or not a Megatron indexed dataset: rebuild them with mgn data") from None


def check_window_counts(seq_length: int, count: int) -> None:
    """``seq_length >= 2`` (a next-token target needs two tokens) and ``count >= 1``."""
    if seq_length < 2:
        raise ValueError(f"--seq-length={seq_length}: expected a number >= 2")
    if count < 1:
        raise ValueError(f"--num-sequences={count}: expected a number >= 1")


def token_windows(prefix: str, seq_length: int, count: int, first: int = 0) -> torch.Tensor:
    """Windows ``first .. first+count-1``: a ``[count, seq_length]`` int64 tensor."""
    check_window_counts(seq_length, count)
    ds = open_indexed_dataset(prefix)
    need = (first + count) * seq_length
    chunks, have = [], 0
    for i in range(len(ds)):
        doc = numpy.asarray(ds[i], dtype=numpy.int64)
        chunks.append(doc)
        have += len(doc)
        if have >= need:
            break
    if have < need:
        raise ValueError(
            f"--data {prefix}: {have} tokens hold {have // seq_length} windows of {seq_length}; "
            f"{first + count} were asked for; lower --num-sequences or --seq-length"
        )
    stream = torch.from_numpy(numpy.concatenate(chunks)[:need])
    return stream.view(first + count, seq_length)[first:]
