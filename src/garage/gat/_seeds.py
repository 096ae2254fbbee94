"""Seed selection by type: guaranteed quotas for rare types, proportional for the rest."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class SeedPlan:
    """Per-type quota table (one row per type, sorted by name)."""

    table: pd.DataFrame  # index: type; columns n_cells, n_train, is_rare, quota

    @property
    def rare_types(self) -> list[str]:
        return [str(t) for t in self.table.index[self.table["is_rare"]]]


def seed_quotas(
    labels: pd.Series,
    is_train: np.ndarray,
    *,
    seed_fraction: float,
    rare_threshold: float,
    rare_min_seeds: int,
) -> SeedPlan:
    """How many seeds each type gets.

    - ``total = ceil(seed_fraction * n_train)``;
    - a type is rare when its fraction of all cells is below ``rare_threshold``;
      it gets ``min(n_train_t, max(rare_min_seeds, round(seed_fraction * n_train_t)))``;
    - the remaining ``total - sum(rare quotas)`` go to the other types in
      proportion to their train cells (largest remainder, ties by name), at
      least one each, never more than their train cells.
    """
    labels = pd.Series(np.asarray(labels, dtype=object).astype(str))
    is_train = np.asarray(is_train, dtype=bool)
    n_cells = labels.value_counts()
    n_train = labels[is_train].value_counts().reindex(n_cells.index, fill_value=0)
    types = sorted(n_cells.index)
    tab = pd.DataFrame(
        {"n_cells": n_cells.reindex(types).astype(int), "n_train": n_train.reindex(types).astype(int)}
    )
    tab["is_rare"] = (tab["n_cells"] / len(labels)) < rare_threshold
    total = int(math.ceil(seed_fraction * int(is_train.sum())))
    quota = pd.Series(0, index=tab.index, dtype=int)

    rare = tab.index[tab["is_rare"]]
    for t in rare:
        nt = int(tab.at[t, "n_train"])
        quota[t] = min(nt, max(int(rare_min_seeds), int(round(seed_fraction * nt))))

    common = [t for t in tab.index[~tab["is_rare"]] if tab.at[t, "n_train"] > 0]
    left = max(0, total - int(quota.sum()))
    if common:
        nt = tab.loc[common, "n_train"].astype(float)
        share = left * nt / nt.sum()
        base = np.floor(share).astype(int)
        rest = left - int(base.sum())
        if rest > 0:  # largest remainder, ties broken by type name (index is sorted)
            frac = (share - base).sort_values(ascending=False, kind="mergesort")
            base[frac.index[:rest]] += 1
        base = np.maximum(base, 1)
        quota[common] = np.minimum(base, tab.loc[common, "n_train"]).astype(int)
    tab["quota"] = quota.astype(int)
    return SeedPlan(tab)


def select_seeds(
    labels: pd.Series,
    is_train: np.ndarray,
    score: np.ndarray,
    obs_names: pd.Index,
    plan: SeedPlan,
) -> np.ndarray:
    """Boolean mask: per type, the ``quota`` train cells with the highest score.

    Ties are broken by obs name, so the chosen set does not depend on row order.
    """
    labels = np.asarray(labels, dtype=object).astype(str)
    is_train = np.asarray(is_train, dtype=bool)
    df = pd.DataFrame({"t": labels, "s": np.asarray(score, dtype=np.float64),
                       "name": np.asarray(obs_names, dtype=str), "row": np.arange(len(labels))})
    df = df[is_train]
    df = df.sort_values(["t", "s", "name"], ascending=[True, False, True], kind="mergesort")
    rank_in_type = df.groupby("t", sort=False).cumcount().to_numpy()
    quota = df["t"].map(plan.table["quota"]).fillna(0).to_numpy()
    chosen = df["row"].to_numpy()[rank_in_type < quota]
    mask = np.zeros(len(labels), dtype=bool)
    mask[chosen] = True
    return mask
