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
from pathlib import Path

HELP = "Reproduce the paper's comparison at small scale (train 4 variants, outliers, W4A4) → results.md."

# Every variant has gated attention (the paper's baseline); FFN width is set per variant for
# parameter parity with the baseline (parity.parity_ffn), as the paper does.
VARIANTS = {
    "baseline": ["--norm-variant", "rmsnorm"],
    "preaffine": ["--norm-variant", "preaffine"],
    "gatednorm": ["--norm-variant", "gatednorm"],
    "clip100": ["--norm-variant", "rmsnorm", "--residual-clip", "100"],
}
# name -> (layers, hidden, heads, groups, ffn, seq, micro, global, iters, lr, eval windows, vocab, works)
SIZES = {
    "quick": (2, 64, 4, 2, 176, 64, 8, 16, 60, 3e-3, 8, 2048, 12),
    "default": (4, 128, 4, 2, 352, 128, 8, 16, 300, 3e-3, 16, 4096, 0),
    "gpu": (8, 512, 8, 2, 1376, 256, 16, 64, 1500, 2e-3, 64, 8192, 0),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("runs/experiment"))
    p.add_argument("--size", choices=sorted(SIZES), default="default",
                   help="quick: ~3 min on 2 CPU cores; default: ~15 min; gpu: for one GPU")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {','.join(VARIANTS)}")
    p.add_argument("--seed", type=int, default=1234)


def _parity_ffn(size, vocab: int, variant_flags) -> int:
    """FFN width giving this variant the baseline's parameter count."""
    from megatron_gatednorm.args import add_gatednorm_args, norm_config_from_args
    from megatron_gatednorm.parity import ModelShape, parity_ffn

    layers, hidden, heads, groups, ffn, seq = size[:6]
    shape = ModelShape(num_layers=layers, hidden_size=hidden, num_attention_heads=heads, num_query_groups=groups,
                       ffn_hidden_size=ffn, vocab_size=vocab, qk_layernorm=True, attention_output_gate=True,
                       max_position_embeddings=seq)
    nc = norm_config_from_args(add_gatednorm_args(argparse.ArgumentParser()).parse_args(variant_flags))
    return parity_ffn(shape, nc).width


def _trainer_argv(size, data: Path, save: Path, seed: int, ffn: int):
    layers, hidden, heads, groups, _, seq, micro, gbs, iters, lr, _, _, _ = size
    return [
        "--num-layers", str(layers), "--hidden-size", str(hidden), "--num-attention-heads", str(heads),
        "--group-query-attention", "--num-query-groups", str(groups), "--ffn-hidden-size", str(ffn),
        "--swiglu", "--disable-bias-linear", "--qk-layernorm", "--attention-output-gate",
        "--seq-length", str(seq), "--micro-batch-size", str(micro), "--global-batch-size", str(gbs),
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
    from megatron_gatednorm.small_trainer import train

    size = SIZES[args.size]
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    for n in names:
        if n not in VARIANTS:
            raise ValueError(f"invalid variant {n!r}; valid choices: {', '.join(VARIANTS)}")
    out = args.out
    data = out / "data"
    t0 = time.time()
    if not (data / "data.json").exists():
        vocab, works = size[11], size[12]
        argv = ["data", "--out", str(data), "--vocab-size", str(vocab)]
        if works:
            argv += ["--max-works", str(works)]
        if mgn(argv) != 0:
            raise RuntimeError("mgn data failed")
    results = {}
    padded = padded_vocab(json.loads((data / "data.json").read_text())["vocab_size"])
    for name in names:
        run_dir = out / "runs" / name
        ffn = _parity_ffn(size, padded, VARIANTS[name])
        summary = train(_trainer_argv(size, data, run_dir, args.seed, ffn) + VARIANTS[name])
        report_dir = out / "reports" / name
        hf_dir = out / "hf" / name  # converted once, analysed by both tools
        convert_to_hf(run_dir, hf_dir, dtype="fp32", overwrite=True, progress=False)
        common = ["--data", str(data / "heldout_text_document"), "--seq-length", str(size[5]),
                  "--num-sequences", str(size[10])]
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
    layers, hidden, _, _, _, seq, _, gbs, iters, _, windows, vocab, _ = size
    lines = [
        f"# Small-scale reproduction ({args.size}: {layers} layers, hidden {hidden}, {iters} iterations x "
        f"{gbs} x {seq} tokens = {iters * gbs * seq:,} tokens, vocab {vocab}, seed {args.seed})",
        "",
        f"Held-out: {windows} windows of {seq} tokens from works never trained on. Peak |h| and sinks: "
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
