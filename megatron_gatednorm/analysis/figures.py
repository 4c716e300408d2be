"""PNG figures of an outlier report (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import torch


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def write_figures(stats, report: dict, out_dir, title: str) -> List[str]:
    """Write the figures for ``stats`` (an OutlierStats) into ``out_dir``; returns their paths."""
    plt = _plt()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.semilogy(report["peak_abs_per_state"], marker="o", label="max |h| (all tokens)")
    ax.semilogy(report["first_token_peak_abs_per_state"], marker="x", label="max |h| (first token)")
    ax.set_xticks(range(len(report["peak_abs_per_state"])))
    ax.set_xlabel("residual state (0 = embeddings)")
    ax.set_ylabel("|h|")
    ax.set_title(f"{title}: peak activation per layer")
    ax.legend()
    paths.append(_save(plt, fig, out / "peak_activation.png"))

    # Paper Fig. 1 style: mean |h| per state (rows) and dimension (columns, sorted by H_avg).
    grid = stats.per_layer_dim_avg()
    order = stats.dim_avg().argsort(descending=True)
    shown = grid[:, order[: min(256, len(order))]]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    from matplotlib.colors import LogNorm

    im = ax.imshow(shown.clamp(min=1e-6).numpy(), aspect="auto", cmap="viridis", interpolation="nearest",
                   norm=LogNorm())
    fig.colorbar(im, ax=ax, label="mean |h| (log)")
    ax.set_xlabel(f"hidden dimension, sorted by H_avg (top {shown.shape[1]}; first = {int(order[0])})")
    ax.set_ylabel("residual state")
    ax.set_title(f"{title}: residual sinks")
    paths.append(_save(plt, fig, out / "residual_sinks.png"))

    attention: Dict = report.get("first_token_attention", {}).get("per_layer_head", {})
    if attention:
        layers = sorted(attention)
        mass = torch.tensor([attention[l] for l in layers])
        fig, ax = plt.subplots(figsize=(5, 3.5))
        im = ax.imshow(mass.numpy(), aspect="auto", cmap="magma", vmin=0, vmax=1, interpolation="nearest")
        fig.colorbar(im, ax=ax, label="attention to token 0")
        ax.set_yticks(range(len(layers)), [str(l) for l in layers])
        ax.set_xticks(range(mass.shape[1]))
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(f"{title}: attention sinks")
        paths.append(_save(plt, fig, out / "attention_sinks.png"))

    # residual-stream norms only (per-head QK-norms are in the JSON)
    params = {k: v for k, v in report.get("norm_params", {}).items() if not k.endswith(("q_norm", "k_norm"))}
    if params:
        names = list(params)
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.plot([params[n]["weight_min"] for n in names], marker="v", label="λ min")
        ax.plot([params[n]["weight_max"] for n in names], marker="^", label="λ max")
        if any("pre_scale_max" in params[n] for n in names):
            ax.plot([params[n].get("pre_scale_max", float("nan")) for n in names], marker="s", label="λ1 max")
        ax.set_xticks(range(len(names)))
        ax.set_xlabel("residual-stream norm (model order: attn, mlp per layer, then final)")
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_title(f"{title}: norm parameters")
        ax.legend()
        paths.append(_save(plt, fig, out / "norm_params.png"))
    return paths
