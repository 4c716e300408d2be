"""The small trainer's flags for one run of the experiment."""

from __future__ import annotations

from pathlib import Path
from typing import List

from megatron_gatednorm.data.build import cache_path
from megatron_gatednorm.experiment.sizes import ExperimentSize
from megatron_gatednorm.model_shape import ModelShape, shape_to_argv


def trainer_argv(size: ExperimentSize, shape: ModelShape, data: Path, save: Path, seed: int) -> List[str]:
    """The small trainer's flags: the model's from the flag table, then training, data (the data
    folder ``data``; Megatron's index cache in ``data/cache/<dataset id>``) and logging;
    checkpoints and the log go to ``save``. The variant's plugin flags are appended by the caller."""
    iters, lr = size.train_iters, size.lr
    return shape_to_argv(shape) + [
        "--seq-length", str(size.seq_length), "--micro-batch-size", str(size.micro_batch_size),
        "--global-batch-size", str(size.global_batch_size),
        "--train-iters", str(iters), "--lr", str(lr), "--min-lr", str(lr / 10), "--lr-warmup-iters", str(iters // 10),
        "--weight-decay", "0.1", "--adam-beta2", "0.95", "--clip-grad", "1.0", "--seed", str(seed),
        "--data-path", str(data / "train_text_document"), "--valid-data-path", str(data / "heldout_text_document"),
        "--tokenizer-model", str(data / "tokenizer"), "--data-cache-path", str(cache_path(data)),
        "--save", str(save), "--eval-iters", "8", "--outlier-log-interval", str(max(1, iters // 10)),
        "--log-interval", str(max(1, iters // 10)),
    ] + (["--bf16"] if size.gpu else [])
