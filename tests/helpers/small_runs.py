"""The small trainer's flags for the 2-layer test model on the ``tiny_data`` fixture's corpus."""

from megatron_gatednorm.data.build import cache_path
from megatron_gatednorm.model_shape import ModelShape, shape_to_argv

# Gated attention + QK-norm (the paper's baseline); vocabulary from the data's tokenizer.
SHAPE = ModelShape(
    num_layers=2, hidden_size=48, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=96,
    vocab_size=512, qk_layernorm=True, attention_output_gate=True, max_position_embeddings=32,
)


def trainer_argv(data, save, iters=6, extra=()):
    """Model flags from the flag table (:func:`shape_to_argv`), then training, data and logging."""
    return shape_to_argv(SHAPE) + [
        "--seq-length", str(SHAPE.max_position_embeddings), "--micro-batch-size", "2",
        "--global-batch-size", "4", "--train-iters", str(iters), "--lr", "3e-3", "--lr-warmup-iters", "2",
        "--data-path", str(data / "train_text_document"), "--valid-data-path", str(data / "heldout_text_document"),
        "--tokenizer-model", str(data / "tokenizer"), "--data-cache-path", str(cache_path(data)),
        "--save", str(save), "--eval-iters", "2", "--outlier-log-interval", "3", "--gatednorm-rank", "4",
        *extra,
    ]
