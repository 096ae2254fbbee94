"""Per-type table: composition, classifier agreement, per-type MMD; rare types."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import constants as C
from ._metrics import mmd_rbf

PER_TYPE_COLUMNS = C.PER_TYPE_COLUMNS


def real_types(labels: dict[str, np.ndarray]) -> list[str]:
    return sorted(set(labels["train"]) | set(labels["holdout"]))


def rare_types(labels: dict[str, np.ndarray], threshold: float) -> list[str]:
    """Types holding less than *threshold* of all real cells (train + holdout)."""
    real = np.r_[labels["train"], labels["holdout"]]
    u, c = np.unique(real, return_counts=True)
    return sorted(str(t) for t, n in zip(u, c) if n / len(real) < threshold)


def per_type_mmd(
    hold: np.ndarray,
    syn: np.ndarray,
    scales: np.ndarray,
    *,
    max_cells: int,
    n_repeats: int,
    rng: np.random.Generator,
) -> float:
    """Mean over repeats of the balanced MMD between holdout and synthetic cells of one type."""
    m = int(min(len(hold), len(syn), max_cells))
    if m < 2:
        return float("nan")
    vals = []
    for _ in range(n_repeats):
        a = hold[rng.permutation(len(hold))[:m]]
        b = syn[rng.permutation(len(syn))[:m]]
        vals.append(mmd_rbf(a, b, scales))
        if m == len(hold) == len(syn):
            break  # nothing left to resample
    return float(np.mean(vals))


def per_type_table(
    labels: dict[str, np.ndarray],
    pred_synthetic: np.ndarray,
    mmd: dict[str, float],
    rare: list[str],
) -> pd.DataFrame:
    """The ``PREFIX.per_type.tsv`` table (one row per real type, columns fixed)."""
    types = real_types(labels)
    n_real = len(labels["train"]) + len(labels["holdout"])
    n_syn = len(labels["synthetic"])
    rows = []
    for t in types:
        sel = labels["synthetic"] == t
        ns = int(sel.sum())
        ntr = int((labels["train"] == t).sum())
        nho = int((labels["holdout"] == t).sum())
        rows.append(
            {
                "cell_type": t,
                "n_real_train": ntr,
                "n_real_holdout": nho,
                "n_synthetic": ns,
                "frac_real": (ntr + nho) / n_real,
                "frac_synthetic": ns / n_syn if n_syn else 0.0,
                "agreement": float(np.mean(pred_synthetic[sel] == t)) if ns else float("nan"),
                "mmd": mmd.get(t, float("nan")),
                "is_rare": t in rare,
                "missing": ns == 0,
            }
        )
    return pd.DataFrame(rows, columns=list(PER_TYPE_COLUMNS))
