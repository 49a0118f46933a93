"""Pictures for reviewers: per-domain bars (merged vs parents) and a domains x models heatmap.

Both are written atomically as PNG with matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd


def _save(fig, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    tmp.replace(path)
    return path


_FLOOR_STYLE = {"domain_minimum": ("tab:red", "-"), "retention": ("tab:orange", "--"),
                "champion_regression": ("tab:purple", ":")}


def write_plots(scores: pd.DataFrame, out_dir: Path, stem: str, *, merged: str | None = None,
                metric: str = "exact_match", floors: dict[str, list[tuple[str, float]]] | None = None) -> list[Path]:
    """``<stem>.bars.png`` and ``<stem>.heatmap.png`` in ``out_dir`` from a domains x models table.
    ``floors`` ({domain: [(gate kind, lowest passing merged score)]}, evaluation.gates.score_floors)
    are drawn across each domain's group of bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    domains, models = list(scores.index), list(scores.columns)
    values = scores.to_numpy(dtype=float)
    paths = []

    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(domains) * max(1, len(models)) / 3), 3.6))
    width = 0.8 / max(1, len(models))
    x = np.arange(len(domains))
    for i, model in enumerate(models):
        is_merged = model == merged
        ax.bar(x + (i - (len(models) - 1) / 2) * width, values[:, i], width, label=f"{model}{' (merged)' if is_merged else ''}",
               edgecolor="black" if is_merged else "none", linewidth=1.2 if is_merged else 0, zorder=3)
    drawn = set()
    for i, domain in enumerate(domains):
        for kind, floor in (floors or {}).get(str(domain), []):
            color, style = _FLOOR_STYLE.get(kind, ("black", "-."))
            ax.hlines(floor, i - 0.45, i + 0.45, colors=color, linestyles=style, linewidth=1.6, zorder=4,
                      label=None if kind in drawn else f"gate: {kind.replace('_', ' ')}")
            drawn.add(kind)
    ax.set_xticks(x, domains)
    ax.set_ylabel(metric)
    ax.set_ylim(0, max(1.0, float(np.nanmax(values)) if values.size else 1.0))
    ax.grid(axis="y", alpha=0.3, zorder=0)
    ax.legend(fontsize=7, ncols=min(4, len(models)), loc="upper center", bbox_to_anchor=(0.5, -0.12))
    ax.set_title(f"{metric} per domain: merged vs parents")
    paths.append(_save(fig, out_dir / f"{stem}.bars.png"))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(models), 1.0 + 0.5 * len(domains)))
    image = ax.imshow(values, cmap="viridis", vmin=0.0, vmax=max(1.0, float(np.nanmax(values)) if values.size else 1.0),
                      aspect="auto")
    ax.set_xticks(range(len(models)), [f"{m} (merged)" if m == merged else m for m in models], rotation=30, ha="right")
    ax.set_yticks(range(len(domains)), domains)
    for (r, c), v in np.ndenumerate(values):
        ax.text(c, r, "n/a" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=8,
                color="white" if (np.isnan(v) or v < 0.5) else "black")
    fig.colorbar(image, ax=ax, label=metric)
    ax.set_title(f"{metric}: domains x models")
    paths.append(_save(fig, out_dir / f"{stem}.heatmap.png"))
    plt.close(fig)
    return paths
