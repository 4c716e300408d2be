"""Search for the smallest CPU setting where sinks form in a baseline (issue 14, item 1).

A setting is a variant of ``mgn experiment`` (``vanilla``: softmax attention without the output
gate; ``baseline``: gated attention) at a size derived from a named one by changing
:class:`~megatron_gatednorm.experiment.sizes.ExperimentSize` fields, written
``VARIANT[@SIZE][:field=value,...]`` (SIZE ``base`` unless named), e.g. ``vanilla:seq_length=256,train_iters=600``. Each is
trained, converted and analysed by the experiment's own code
(:func:`~megatron_gatednorm.experiment.pipeline.train_and_analyse`, RMSNorm, seed 1234); what
the table reports, per setting, from the outlier report on the size's held-out windows:

* top-dim ratio: ``H^j_avg`` of the top residual-sink dimension over the median dimension's;
* first-token attention: mean over (layer, head) of ``mean_{q>=1} A[q, 0]``; its max over
  (layer, head) and that max over what uniform causal attention gives (:func:`uniform_first_token`);
  the sink rate (fraction of (layer, head) above 0.3, Gu et al.'s attention-sink threshold);
* peak |h|: the largest residual-stream activation over the held-out windows;
* held-out loss (the trainer's last evaluation) and the wall time of train + convert + analysis.

Results go to ``OUT/<setting>/result.json`` (a setting with one is not rerun); the markdown
table of every setting asked for is printed and, with ``--table``, written. Run it niced on a
shared machine: ``OMP_NUM_THREADS=2 nice -n 19 python benchmarks/sink_search.py ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from pathlib import Path
from typing import List, Tuple

_V512 = "vocab_size=512,seq_length=256,micro_batch_size=8,global_batch_size=8"
GRID = (
    "vanilla", "vanilla:seq_length=256,micro_batch_size=8,global_batch_size=8", "vanilla:lr=1e-2",
    f"vanilla:{_V512},lr=1e-2", f"baseline:{_V512},lr=1e-2",
    f"vanilla:{_V512},train_iters=600", f"vanilla:{_V512},train_iters=600,lr=1e-2",
    f"vanilla:{_V512},qk_layernorm=0", f"vanilla:{_V512},qk_layernorm=0,lr=1e-2",
    f"vanilla:{_V512},num_layers=2,train_iters=1200", f"baseline:{_V512},num_layers=2,train_iters=1200",
    f"vanilla:{_V512},num_layers=2,hidden_size=64,ffn_hidden_size=176,train_iters=2400",
)
"""The settings run without ``--settings``: the search of ``docs/sink_search.md``, in its order."""

COLUMNS = ("setting", "tokens", "top-dim ratio", "first-token attn mean", "max", "max / uniform", "sink rate",
           "peak abs(h)", "held-out loss", "wall s")


def uniform_first_token(seq_length: int) -> float:
    """First-token attention mass of uniform causal attention, ``mean_{q=1..T-1} 1/(q+1)``: a head
    at this level attends to the first token no more than to any other."""
    return sum(1 / (q + 1) for q in range(1, seq_length)) / (seq_length - 1)


def parse_setting(text: str) -> Tuple[str, object, dict]:
    """``VARIANT[@SIZE][:field=value,...]`` → (variant, size, model changes): a field is one of
    :class:`ExperimentSize`'s or a switch of :class:`ModelShape` as 0/1 (``qk_layernorm=0``);
    ``ValueError`` naming what is invalid."""
    from megatron_gatednorm.experiment.sizes import ExperimentSize, experiment_size
    from megatron_gatednorm.experiment.variants import check_variants
    from megatron_gatednorm.model_shape import ModelShape

    m = re.fullmatch(r"(\w+)(?:@(\w+))?(?::(.*))?", text)
    if not m:
        raise ValueError(f"invalid setting {text!r}: expected VARIANT[@SIZE][:field=value,...]")
    variant, size_name, changes = m.group(1), m.group(2) or "base", m.group(3)
    check_variants([variant])
    size = experiment_size(size_name)
    fields = {f.name: f.type for f in dataclasses.fields(ExperimentSize)}
    switches = [f.name for f in dataclasses.fields(ModelShape) if f.type in (bool, "bool")]
    updates, shape_changes = {}, {}
    for item in filter(None, (changes or "").split(",")):
        key, _, value = item.partition("=")
        if key in switches and value in ("0", "1"):
            shape_changes[key] = value == "1"
        elif key in fields and value:
            updates[key] = float(value) if fields[key] in (float, "float") else int(value)
        else:
            raise ValueError(f"invalid field {item!r} in setting {text!r}; valid fields: {', '.join(fields)}, "
                             f"and as 0/1: {', '.join(switches)}")
    return variant, dataclasses.replace(size, **updates), shape_changes


def run_setting(out: Path, text: str, data_root: Path, seed: int) -> dict:
    """Train and analyse setting ``text`` in ``out/<text>`` (data built once per vocabulary and
    works in ``data_root``); returns the row's numbers (also written to ``result.json``)."""
    from megatron_gatednorm.experiment.pipeline import train_and_analyse

    variant, size, shape_changes = parse_setting(text)
    folder = out / re.sub(r"[^\w.=,@-]", "_", text)
    done = folder / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    data = data_root / f"v{size.vocab_size}-w{size.max_works}"
    t0 = time.time()
    run = train_and_analyse(folder, size, variant, data, seed, shape_changes=shape_changes)
    attn = run.outliers["first_token_attention"]
    per_head = [m for masses in attn["per_layer_head"].values() for m in masses]
    result = dict(
        setting=text, size=dataclasses.asdict(size), shape_changes=shape_changes, tokens=size.train_iters * size.global_batch_size * size.seq_length,
        top_dim_ratio=run.outliers["sink_dims"][0]["ratio_to_median"], top_dim=run.outliers["sink_dims"][0]["dim"],
        first_token_mean=attn["mean"], first_token_max=max(per_head), sink_rate=attn["sink_rate"],
        first_token_per_layer=attn["per_layer_head"], peak_abs=run.outliers["peak_abs"],
        peak_abs_per_state=run.outliers["peak_abs_per_state"], heldout_loss=run.train["heldout_loss"],
        params=run.train["params"], wall_s=time.time() - t0,
    )
    done.write_text(json.dumps(result, indent=1))
    return result


def table(results: List[dict]) -> List[str]:
    """The markdown table of ``results`` (rows of :func:`run_setting`)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in results:
        lines.append(
            f"| `{r['setting']}` | {r['tokens']:,} | {r['top_dim_ratio']:.1f} | {r['first_token_mean']:.3f} | "
            f"{r['first_token_max']:.3f} | {r['first_token_max'] / uniform_first_token(r['size']['seq_length']):.1f} | "
            f"{r['sink_rate']:.2f} | {r['peak_abs']:.1f} | {r['heldout_loss']:.3f} | "
            f"{r['wall_s']:.0f} |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/sink_search"))
    p.add_argument("--settings", default=";".join(GRID),
                   help="';'-separated VARIANT[@SIZE][:field=value,...] (default: the GRID)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--table", type=Path, default=None, help="also write the markdown table here")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    settings = [s.strip() for s in args.settings.split(";") if s.strip()]
    try:
        for s in settings:
            parse_setting(s)  # every setting valid before anything runs
    except ValueError as e:
        print(f"sink_search: error: {e}", file=sys.stderr)
        return 2
    results = []
    for s in settings:
        results.append(run_setting(args.out, s, args.out / "data", args.seed))
        print("\n".join(table(results[-1:])[2:]), flush=True)
    lines = table(results)
    print("\n".join(lines))
    if args.table:
        args.table.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
