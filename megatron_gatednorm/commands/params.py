"""``mgn params``: the paper's models per variant — parameters, norm overhead, FFN parity.

Each variant's model is also built with the plugin's specs on the meta device (no memory,
no GPU) and its parameters counted, which checks the analytic counts used by the launcher.
Hybrid Gated DeltaNet models are only counted analytically unless ``fla`` is installed.
"""

from __future__ import annotations

import argparse
import json

from megatron_gatednorm.norm_config import DEFAULTS, VARIANTS, NormConfig

HELP = "Report parameters, GatedNorm/PreAffine overhead and parity FFN width for the paper's models."


def add_arguments(p: argparse.ArgumentParser) -> None:
    from megatron_gatednorm.paper import PAPER_MODELS

    p.add_argument("--model", default="dense-2b", choices=sorted(PAPER_MODELS))
    p.add_argument("--variants", default="rmsnorm,gatednorm,preaffine,preaffine_gatednorm",
                   help=f"comma-separated, from {','.join(VARIANTS)}")
    p.add_argument("--gatednorm-rank", type=int, default=DEFAULTS.rank)
    p.add_argument("--no-build", action="store_true", help="analytic counts only (no Megatron)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _built_params(shape, nc) -> int:
    """Parameters of the GPTModel the specs build, on the meta device."""
    from megatron_gatednorm.distributed import init_distributed
    from megatron_gatednorm.model import build_gpt_model, transformer_config

    init_distributed()
    config = transformer_config(
        shape, nc, init_model_with_meta_device=True, use_cpu_initialization=True,
        perform_initialization=False,
    )
    model = build_gpt_model(shape, config)
    return sum(p.numel() for p in model.parameters())


def run(args) -> int:
    from megatron_gatednorm.paper import PAPER_MODELS
    from megatron_gatednorm.parity import count_params, parity_ffn

    shape = PAPER_MODELS[args.model]
    can_build = not args.no_build and shape.experimental_attention_variant is None
    if not args.no_build and not can_build:
        import importlib.util

        can_build = importlib.util.find_spec("fla") is not None
    rows = []
    baseline = count_params(shape)["total"]
    for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
        nc = NormConfig(variant=variant, rank=args.gatednorm_rank)
        report = parity_ffn(shape, nc)
        adjusted = shape.replace(**{report.field: report.width})
        row = dict(
            variant=variant,
            norm_overhead=report.norm_overhead,
            params_before_parity=report.variant_params_before,
            parity_field=report.field,
            width=report.width,
            params=report.params,
            delta_vs_baseline=report.params - baseline,
            active_params=count_params(adjusted, nc, active=True)["total"],
            built_params=_built_params(adjusted, nc) if can_build else None,
        )
        rows.append(row)
    if args.json:
        print(json.dumps(dict(model=args.model, baseline_params=baseline, variants=rows), indent=2))
        return 0
    print(f"model {args.model}: baseline (RMSNorm) {baseline:,} parameters")
    if not can_build:
        print("(meta-device build skipped: Gated DeltaNet layers need the 'fla' package)")
    header = f"{'variant':<20}{'norm overhead':>15}{'FFN field':>38}{'width':>7}{'params':>16}{'vs base':>10}{'active':>16}{'built':>16}"
    print(header)
    print("-" * len(header))
    for r in rows:
        built = f"{r['built_params']:,}" if r["built_params"] is not None else "-"
        print(
            f"{r['variant']:<20}{r['norm_overhead']:>15,}{r['parity_field']:>38}{r['width']:>7}"
            f"{r['params']:>16,}{r['delta_vs_baseline']:>10,}{r['active_params']:>16,}{built:>16}"
        )
    return 0
