"""``mgn experiment``: the paper's comparison at small scale, end to end, on the PyPI corpus.

Trains baseline (RMSNorm + gated attention), +PreAffine, +GatedNorm and clip-100 (baseline with
the residual stream clamped to ±100) with the same seed, data order and token budget; converts
each to Hugging Face (``hf/<variant>``); runs ``mgn outliers`` and ``mgn quant`` (NVFP4 W4A4 ± SmoothQuant) on the
held-out works; writes ``results.md`` / ``results.json`` and the figures. Every number in the
table comes from this run.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

from megatron_gatednorm.model_shape import ModelShape, shape_to_argv

HELP = "Reproduce the paper's comparison at small scale (train 4 variants, outliers, W4A4) → results.md."

# Every variant has gated attention (the paper's baseline); FFN width is set per variant for
# parameter parity with the baseline (parity.parity_ffn), as the paper does.
VARIANTS = {
    "baseline": ["--norm-variant", "rmsnorm"],
    "preaffine": ["--norm-variant", "preaffine"],
    "gatednorm": ["--norm-variant", "gatednorm"],
    "clip100": ["--norm-variant", "rmsnorm", "--residual-clip", "100"],
}


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
    """Held-out windows that ``mgn outliers`` and ``mgn quant`` evaluate."""
    vocab_size: int
    """Size of the BPE vocabulary that ``mgn data`` trains (before Megatron's padding)."""
    max_works: int
    """Works of the corpus that ``mgn data`` takes (0: all)."""

    def shape(self, padded_vocab: int) -> ModelShape:
        """The baseline model (every variant has gated attention and QK-norm, the paper's baseline)."""
        return ModelShape(
            num_layers=self.num_layers, hidden_size=self.hidden_size, num_attention_heads=self.num_attention_heads,
            num_query_groups=self.num_query_groups, ffn_hidden_size=self.ffn_hidden_size, vocab_size=padded_vocab,
            qk_layernorm=True, attention_output_gate=True, max_position_embeddings=self.seq_length,
        )


SIZES = {
    "quick": ExperimentSize(num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2,
                            ffn_hidden_size=176, seq_length=64, micro_batch_size=8, global_batch_size=16,
                            train_iters=60, lr=3e-3, eval_windows=8, vocab_size=2048, max_works=12),
    "default": ExperimentSize(num_layers=4, hidden_size=128, num_attention_heads=4, num_query_groups=2,
                              ffn_hidden_size=352, seq_length=128, micro_batch_size=8, global_batch_size=16,
                              train_iters=300, lr=3e-3, eval_windows=16, vocab_size=4096, max_works=0),
    "gpu": ExperimentSize(num_layers=8, hidden_size=512, num_attention_heads=8, num_query_groups=2,
                          ffn_hidden_size=1376, seq_length=256, micro_batch_size=16, global_batch_size=64,
                          train_iters=1500, lr=2e-3, eval_windows=64, vocab_size=8192, max_works=0),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("runs/experiment"))
    p.add_argument("--size", choices=sorted(SIZES), default="default",
                   help="quick: ~3 min on 2 CPU cores; default: ~15 min; gpu: for one GPU")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {','.join(VARIANTS)}")
    p.add_argument("--seed", type=int, default=1234)


def _norm_config(variant_flags):
    from megatron_gatednorm.norm_flags import add_gatednorm_args, norm_config_from_args

    return norm_config_from_args(add_gatednorm_args(argparse.ArgumentParser()).parse_args(variant_flags))


def _parity_shape(size: ExperimentSize, padded_vocab: int, variant_flags) -> ModelShape:
    """The baseline shape with this variant's parity FFN width (the baseline's parameter count)."""
    from megatron_gatednorm.parity import parity_ffn

    shape = size.shape(padded_vocab)
    return shape.replace(ffn_hidden_size=parity_ffn(shape, _norm_config(variant_flags)).width)


def _trainer_argv(size: ExperimentSize, shape: ModelShape, data: Path, save: Path, seed: int):
    """The small trainer's flags: the model's from the flag table, then training, data and logging."""
    iters, lr = size.train_iters, size.lr
    return shape_to_argv(shape) + [
        "--seq-length", str(size.seq_length), "--micro-batch-size", str(size.micro_batch_size),
        "--global-batch-size", str(size.global_batch_size),
        "--train-iters", str(iters), "--lr", str(lr), "--min-lr", str(lr / 10), "--lr-warmup-iters", str(iters // 10),
        "--weight-decay", "0.1", "--adam-beta2", "0.95", "--clip-grad", "1.0", "--seed", str(seed),
        "--data-path", str(data / "train_text_document"), "--valid-data-path", str(data / "heldout_text_document"),
        "--tokenizer-model", str(data / "tokenizer"), "--data-cache-path", str(data / "cache"),
        "--save", str(save), "--eval-iters", "8", "--outlier-log-interval", str(max(1, iters // 10)),
        "--log-interval", str(max(1, iters // 10)),
    ]


def _row(name, train, outliers, quant):
    d = quant["delta"]
    return (f"| {name} | {train['params']:,} | {train['heldout_loss']:.4f} | {outliers['peak_abs']:.1f} | "
            f"{outliers['sink_dims'][0]['dim']} ({outliers['sink_dims'][0]['ratio_to_median']:.1f}x) | "
            f"{outliers.get('first_token_attention', {}).get('mean', float('nan')):.3f} | "
            f"{quant['perplexity']['baseline']:.2f} | {d['nvfp4']:+.2f} | {d['nvfp4+sq']:+.2f} |")


def run(args) -> int:
    from megatron_gatednorm.cli import main as mgn
    from megatron_gatednorm.convert.to_hf import convert_to_hf
    from megatron_gatednorm.parity import padded_vocab
    from megatron_gatednorm.training.small_trainer import train

    size = SIZES[args.size]
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    for n in names:
        if n not in VARIANTS:
            raise ValueError(f"invalid variant {n!r}; valid choices: {', '.join(VARIANTS)}")
    out = args.out
    data = out / "data"
    t0 = time.time()
    if not (data / "data.json").exists():
        argv = ["data", "--out", str(data), "--vocab-size", str(size.vocab_size)]
        if size.max_works:
            argv += ["--max-works", str(size.max_works)]
        if mgn(argv) != 0:
            raise RuntimeError("mgn data failed")
    results = {}
    padded = padded_vocab(json.loads((data / "data.json").read_text())["vocab_size"])
    for name in names:
        run_dir = out / "runs" / name
        shape = _parity_shape(size, padded, VARIANTS[name])
        summary = train(_trainer_argv(size, shape, data, run_dir, args.seed) + VARIANTS[name])
        report_dir = out / "reports" / name
        hf_dir = out / "hf" / name  # converted once, analysed by both tools
        convert_to_hf(run_dir, hf_dir, dtype="fp32", overwrite=True, progress=False)
        common = ["--data", str(data / "heldout_text_document"), "--seq-length", str(size.seq_length),
                  "--num-sequences", str(size.eval_windows)]
        if mgn(["outliers", str(hf_dir), "--out", str(report_dir), "--title", name, *common]) != 0:
            raise RuntimeError(f"mgn outliers failed for {name}")
        quant_json = report_dir / "quant.json"
        if mgn(["quant", str(hf_dir), "--settings", "nvfp4,nvfp4+sq", "--json", str(quant_json),
                "--calib-sequences", "4", *common]) != 0:
            raise RuntimeError(f"mgn quant failed for {name}")
        results[name] = dict(
            train=summary, outliers=json.loads((report_dir / "outliers.json").read_text()),
            quant=json.loads(quant_json.read_text()),
        )
    seq, gbs, iters = size.seq_length, size.global_batch_size, size.train_iters
    lines = [
        f"# Small-scale reproduction ({args.size}: {size.num_layers} layers, hidden {size.hidden_size}, "
        f"{iters} iterations x {gbs} x {seq} tokens = {iters * gbs * seq:,} tokens, vocab {size.vocab_size}, seed {args.seed})",
        "",
        f"Held-out: {size.eval_windows} windows of {seq} tokens from works never trained on. Peak |h| and sinks: "
        "`mgn outliers`; perplexity deltas: `mgn quant` (NVFP4 W4A4, SmoothQuant alpha 0.5, 4 calibration windows).",
        "",
        "| variant | params | held-out loss | peak abs(h) | top sink dim (x median) | first-token attn | ppl | W4A4 dppl | W4A4+SQ dppl |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [_row(n, r["train"], r["outliers"], r["quant"]) for n, r in results.items()]
    lines += ["", f"Figures: {out / 'reports'}/<variant>/*.png. Wall time {time.time() - t0:.0f} s."]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    print("\n".join(lines))
    return 0
