"""Pictures: UMAP of real vs synthetic cells, and a per-type bar chart.

Matplotlib with the Agg backend (no display needed).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from .. import constants as C

logger = logging.getLogger(__name__)

SUFFIX_UMAP = C.SUFFIX_UMAP
SUFFIX_PER_TYPE_PLOT = C.SUFFIX_PER_TYPE_PLOT


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _colors(types: list[str]) -> dict[str, tuple]:
    plt = _pyplot()
    cmap = plt.get_cmap("tab20" if len(types) > 10 else "tab10")
    return {t: cmap(i % cmap.N) for i, t in enumerate(types)}


def embed_2d(x: np.ndarray, seed: int) -> tuple[np.ndarray, str]:
    """UMAP of *x* (falls back to the first two PCs if umap-learn is unavailable)."""
    try:
        import umap
    except ImportError:  # pragma: no cover - umap-learn comes with scanpy's extras
        logger.warning("umap-learn not installed; plotting PC1/PC2 instead")
        return x[:, :2], "PC"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        emb = umap.UMAP(
            n_neighbors=15, min_dist=0.3, random_state=seed, n_components=2, n_epochs=200
        ).fit_transform(x)
    return emb, "UMAP"


def plot_umap(
    path: Path,
    real: np.ndarray,
    real_labels: np.ndarray,
    syn: np.ndarray,
    syn_labels: np.ndarray,
    types: list[str],
    *,
    seed: int,
    title: str,
    conditions: tuple | None = None,
) -> None:
    """Panels on one joint embedding: coloured by source, by cell type and (with
    *conditions* = ``(real_conditions, synthetic_conditions or None, key)``) by condition."""
    plt = _pyplot()
    emb, kind = embed_2d(np.vstack([real, syn]), seed)
    er, es = emb[: len(real)], emb[len(real):]
    col = _colors(types)
    n_panels = 3 if conditions is not None else 2
    fig, axes = plt.subplots(1, n_panels, figsize=(6.5 * n_panels, 5.6))
    ax = axes[0]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(emb))  # interleave so neither side hides the other
    src = np.r_[np.zeros(len(real)), np.ones(len(syn))]
    c = np.where(src[order, None] == 0, [[0.35, 0.35, 0.35, 0.6]], [[0.85, 0.33, 0.1, 0.6]])
    ax.scatter(emb[order, 0], emb[order, 1], s=4, c=c, linewidths=0)
    ax.scatter([], [], s=20, color=(0.35, 0.35, 0.35), label=f"real ({len(real)})")
    ax.scatter([], [], s=20, color=(0.85, 0.33, 0.1), label=f"synthetic ({len(syn)})")
    ax.legend(loc="best", frameon=False, markerscale=1.5)
    ax.set_title("by source")
    ax = axes[1]
    for t in types:
        m = real_labels == t
        ax.scatter(er[m, 0], er[m, 1], s=4, color=col[t], marker="o", linewidths=0, alpha=0.6)
        m = syn_labels == t
        ax.scatter(es[m, 0], es[m, 1], s=8, color=col[t], marker="x", linewidths=0.6, alpha=0.8)
    for t in types:
        ax.scatter([], [], s=20, color=col[t], label=t)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=8)
    ax.set_title("by cell type (o real, x synthetic)")
    if conditions is not None:
        rc, sc, key = conditions
        levels = sorted(set(rc) | (set(sc) if sc is not None else set()))
        ccol = {c: plt.get_cmap("Set1")(i % 9) for i, c in enumerate(levels)}
        ax = axes[2]
        for c in levels:
            m = rc == c
            ax.scatter(er[m, 0], er[m, 1], s=4, color=ccol[c], marker="o", linewidths=0,
                       alpha=0.6)
            if sc is not None:
                m = sc == c
                ax.scatter(es[m, 0], es[m, 1], s=8, color=ccol[c], marker="x", linewidths=0.6,
                           alpha=0.8)
            ax.scatter([], [], s=20, color=ccol[c], label=c)
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=8)
        note = "" if sc is not None else "; synthetic cells have no condition"
        ax.set_title(f"by condition ({key}; o real, x synthetic{note})")
    for ax in axes:
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_xlabel(f"{kind}1"), ax.set_ylabel(f"{kind}2")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def plot_per_type(
    path: Path, table: pd.DataFrame, holdout_recall: dict[str, float], *, title: str
) -> None:
    """Left: cells per type, real vs synthetic (log scale). Right: agreement per type."""
    plt = _pyplot()
    types = list(table["cell_type"])
    x = np.arange(len(types))
    fig, axes = plt.subplots(1, 2, figsize=(max(10, 1.1 * len(types) + 4), 5))
    ax = axes[0]
    n_real = table["n_real_train"] + table["n_real_holdout"]
    w = 0.4
    ax.bar(x - w / 2, n_real, w, color=(0.35, 0.35, 0.35), label="real (train + holdout)")
    ax.bar(x + w / 2, table["n_synthetic"], w, color=(0.85, 0.33, 0.1), label="synthetic")
    ax.set_yscale("symlog", linthresh=1)
    top = float(max(n_real.max(), table["n_synthetic"].max(), 1))
    ax.set_ylim(0, top * 10)  # headroom for the legend
    ax.set_ylabel("cells")
    ax.set_title("cells per type")
    ax.legend(frameon=False, fontsize=8, loc="upper left", ncol=2)
    ax = axes[1]
    agree = table["agreement"].to_numpy(dtype=float)
    ax.bar(x, np.nan_to_num(agree), 0.6, color=(0.85, 0.33, 0.1), label="synthetic agreement")
    lo = table["agreement_ci_low"].to_numpy(dtype=float) if "agreement_ci_low" in table else None
    hi = table["agreement_ci_high"].to_numpy(dtype=float) if "agreement_ci_high" in table else None
    if lo is not None and hi is not None:
        ok = np.isfinite(lo) & np.isfinite(hi) & np.isfinite(agree)
        ax.errorbar(x[ok], agree[ok], yerr=[agree[ok] - lo[ok], hi[ok] - agree[ok]], fmt="none",
                    ecolor=(0.5, 0.2, 0.05), elinewidth=1, capsize=3, label="95% interval")
    ctrl = [holdout_recall.get(t, np.nan) for t in types]
    ax.scatter(x, ctrl, marker="_", s=400, color="black", zorder=3,
               label="control: real train cells")
    for i, miss in enumerate(table["missing"]):
        if miss:
            ax.text(i, 0.02, "missing", rotation=90, ha="center", va="bottom", color="red",
                    fontsize=8)
    ax.set_ylim(0, 1.18)
    ax.set_ylabel("agreement (judge trained on real holdout)")
    ax.set_title("label agreement per type")
    ax.legend(frameon=False, fontsize=8, loc="upper left", ncol=2)
    for ax in axes:
        ax.set_xticks(x)
        ax.set_xticklabels([f"{t} (holdout {n})" for t, n in zip(types, table["n_real_holdout"])],
                           rotation=45, ha="right", fontsize=8)
        for lab, rare in zip(ax.get_xticklabels(), table["is_rare"]):
            if rare:
                lab.set_color("tab:red")
                lab.set_fontweight("bold")
    fig.suptitle(title + "  (rare types in red)")
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
