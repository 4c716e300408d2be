"""Fixed evaluation windows from a Megatron indexed dataset (.bin/.idx).

Documents are concatenated in file order (with their end-of-document tokens) and cut into
non-overlapping windows of ``seq_length`` tokens; window ``i`` is the same for every tool and
run, so perplexities and outlier statistics are comparable across checkpoints.
"""

from __future__ import annotations

import numpy
import torch


def token_windows(prefix: str, seq_length: int, count: int, first: int = 0) -> torch.Tensor:
    """Windows ``first .. first+count-1``: a ``[count, seq_length]`` int64 tensor."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(str(prefix))
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
            f"{prefix}: {have} tokens hold {have // seq_length} windows of {seq_length}; "
            f"{first + count} were asked for"
        )
    stream = torch.from_numpy(numpy.concatenate(chunks)[:need])
    return stream.view(first + count, seq_length)[first:]
