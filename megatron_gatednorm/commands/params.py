"""``mgn params``: the paper's models per variant — parameters, norm overhead, FFN parity.

The flags and the printed table; :func:`megatron_gatednorm.variant_params.variant_params`
computes it (and builds each variant's model on the meta device unless ``--no-build``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from megatron_gatednorm.norm_config import DEFAULTS, VARIANTS

HELP = "Report parameters, GatedNorm/PreAffine overhead and parity FFN width for the paper's models."


def add_arguments(p: argparse.ArgumentParser) -> None:
    from megatron_gatednorm.paper import PAPER_MODELS

    p.add_argument("--model", default="dense-2b", choices=sorted(PAPER_MODELS))
    p.add_argument("--variants", default="rmsnorm,gatednorm,preaffine,preaffine_gatednorm",
                   help=f"comma-separated, from {','.join(VARIANTS)}")
    p.add_argument("--gatednorm-rank", type=int, default=DEFAULTS.rank)
    p.add_argument("--hybrid", action="store_true",
                   help="the model as megatron-core's HybridModel (>= 0.18 to build it): each layer a token mixer "
                        "and an FFN layer of a --hybrid-layer-pattern, as 'mgn launch <recipe>+hybrid' runs it")
    p.add_argument("--no-build", action="store_true", help="analytic counts only (no Megatron)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def print_table(model: str, table) -> None:
    """The table ``mgn params`` prints for a :class:`~megatron_gatednorm.variant_params.VariantParamsTable`."""
    print(f"model {model}: baseline (RMSNorm) {table.baseline_params:,} parameters")
    if table.not_built:
        print(f"(meta-device build skipped: {table.not_built})")
    header = f"{'variant':<20}{'norm overhead':>15}{'FFN field':>38}{'width':>7}{'params':>16}{'vs base':>10}{'active':>16}{'built':>16}"
    print(header)
    print("-" * len(header))
    for r in table.rows:
        built = f"{r.built_params:,}" if r.built_params is not None else "-"
        print(
            f"{r.variant:<20}{r.norm_overhead:>15,}{r.parity_field:>38}{r.width:>7}"
            f"{r.params:>16,}{r.delta_vs_baseline:>10,}{r.active_params:>16,}{built:>16}"
        )


def run(args) -> int:
    from megatron_gatednorm.model_shape import hybrid_form
    from megatron_gatednorm.paper import PAPER_MODELS
    from megatron_gatednorm.variant_params import variant_params

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    shape = hybrid_form(PAPER_MODELS[args.model]) if args.hybrid else PAPER_MODELS[args.model]
    table = variant_params(shape, variants, args.gatednorm_rank, build=not args.no_build)
    if args.json:
        rows = [dataclasses.asdict(r) for r in table.rows]
        print(json.dumps(dict(model=args.model, hybrid_layer_pattern=shape.hybrid_layer_pattern,
                              baseline_params=table.baseline_params, built=table.built, variants=rows), indent=2))
        return 0
    name = f"{args.model} as HybridModel {shape.hybrid_layer_pattern}" if args.hybrid else args.model
    print_table(name, table)
    return 0
