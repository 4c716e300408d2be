"""The experiment's sizes (``mgn experiment --size``): the baseline model, its training run and its evaluation."""

from __future__ import annotations

from dataclasses import dataclass

from megatron_gatednorm.model_shape import ModelShape


@dataclass(frozen=True)
class ExperimentSize:
    """One ``--size`` of the experiment: the baseline model, its training run and its evaluation."""

    num_layers: int
    """Transformer layers."""
    hidden_size: int
    """Residual-stream width."""
    num_attention_heads: int
    """Query heads."""
    num_query_groups: int
    """Key/value heads (grouped-query attention)."""
    ffn_hidden_size: int
    """The baseline's FFN width; the other variants get their parity width (parity.parity_ffn)."""
    seq_length: int
    """Tokens per training sequence and per held-out window."""
    micro_batch_size: int
    """Sequences per forward/backward pass."""
    global_batch_size: int
    """Sequences per optimizer step."""
    train_iters: int
    """Optimizer steps."""
    lr: float
    """Peak learning rate (warm-up over a tenth of the run, cosine to a tenth of it)."""
    eval_windows: int
    """Held-out windows that the outlier analysis and the quantization evaluate."""
    vocab_size: int
    """Size of the BPE vocabulary trained on the corpus (before Megatron's padding)."""
    max_works: int
    """Works of the corpus taken (0: all)."""
    gpu: bool
    """Meant for one GPU: bf16 mixed precision (the small trainer's ``--bf16``), the plugin's fused
    kernels (what a CUDA device runs); refused where CUDA is absent."""
    seeds: int
    """Training seeds per variant (``--seed``, ``--seed + 1``, ...; ``mgn experiment --seeds`` overrides):
    the spread over them is the noise the results table compares differences with."""

    def shape(self, padded_vocab: int) -> ModelShape:
        """The baseline model: gated attention and QK-norm, the paper's baseline (variants.SHAPE_CHANGES: what a variant changes)."""
        return ModelShape(
            num_layers=self.num_layers, hidden_size=self.hidden_size, num_attention_heads=self.num_attention_heads,
            num_query_groups=self.num_query_groups, ffn_hidden_size=self.ffn_hidden_size, vocab_size=padded_vocab,
            qk_layernorm=True, attention_output_gate=True, max_position_embeddings=self.seq_length,
        )


SIZES = {
    "quick": ExperimentSize(num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2,
                            ffn_hidden_size=176, seq_length=64, micro_batch_size=8, global_batch_size=16,
                            train_iters=60, lr=3e-3, eval_windows=8, vocab_size=2048, max_works=12, gpu=False, seeds=1),
    # The sink search's strongest setting (docs/sink_search.md: lr 1e-2 with a 512-token BPE and
    # 256-token sequences gave the largest top-dimension ratio; no setting formed sinks), 3 seeds.
    "default": ExperimentSize(num_layers=4, hidden_size=128, num_attention_heads=4, num_query_groups=2,
                              ffn_hidden_size=352, seq_length=256, micro_batch_size=8, global_batch_size=8,
                              train_iters=300, lr=1e-2, eval_windows=16, vocab_size=512, max_works=0, gpu=False, seeds=3),
    # The previous default (docs/results_base.md) and the sink search's starting point.
    "base": ExperimentSize(num_layers=4, hidden_size=128, num_attention_heads=4, num_query_groups=2,
                           ffn_hidden_size=352, seq_length=128, micro_batch_size=8, global_batch_size=16,
                           train_iters=300, lr=3e-3, eval_windows=16, vocab_size=4096, max_works=0, gpu=False, seeds=1),
    # For one GPU (benchmarks/gpu_experiment.sh): one micro-batch of 64 a step (fewer kernel
    # launches a step for a model this small); the analysis runs on the CPU, hence 32 windows. Not
    # yet run on a GPU: its time is unmeasured.
    "gpu": ExperimentSize(num_layers=8, hidden_size=512, num_attention_heads=8, num_query_groups=2,
                          ffn_hidden_size=1376, seq_length=256, micro_batch_size=64, global_batch_size=64,
                          train_iters=1500, lr=2e-3, eval_windows=32, vocab_size=8192, max_works=0, gpu=True, seeds=1),
}


def experiment_size(name: str) -> ExperimentSize:
    """The size called ``name``; ``ValueError`` naming the valid ones otherwise."""
    if name not in SIZES:
        raise ValueError(f"invalid size {name!r}; valid choices: {', '.join(SIZES)}")
    return SIZES[name]
