r"""Seed selection by type: quotas first, then one of three ways to fill them.

Quotas (:func:`seed_quotas`) do not depend on the strategy: rare types (the
list preprocess decided, ``uns['garage']['rare_types']``) get a guaranteed
quota, the other types quotas in proportion to their train cells.  A strategy
only decides *which* train cells of a type fill its quota:

- ``score``: the ``quota`` highest-scoring cells (:func:`select_seeds`);
- ``random``: ``quota`` cells uniformly at random (:func:`random_keys`, seeded,
  independent of the row order) -- the ablation that tells whether the score
  earns its place;
- ``coverage``: the type's train cells are partitioned into exactly ``quota``
  regions (:func:`coverage_regions`); each region's seed is its highest-scoring
  cell among the region's *core*, the half of its cells closest to the region's
  centroid (:func:`region_core`, :func:`select_per_region`).  Seeds then spread
  over the type's manifold (conditions, protocols, activation states inside one
  label all get some) while the score still picks a representative cell inside
  each region, and the core keeps that cell off the region's edge.

The partition is bisecting 2-means, run for all types at once: every cluster
that must still hold ``w >= 2`` regions is split in two (initialised by the sign
of the projection on its first principal axis, found by power iteration, then a
few Lloyd iterations), and its ``w`` regions are shared between the halves in
proportion to ``n_c * rbar_c`` (cells times mean distance to the half's centroid;
for a mean nearest-seed distance ``~ n r k^(-1/D)`` the optimal share of ``k`` is
``(n r)^(D/(D+1))``, about ``n r`` in many dimensions).  Each round costs
``O(cells * dims)`` and halves the regions still owed, so the whole partition is
``O(cells * dims * log(quota))``: linear in cells, unlike k-means or
farthest-point sampling with ``quota`` centres (``O(cells * quota)``).  After a
fixed number of rounds, clusters still owed regions are split at the median of
their principal projection, which bounds the rounds even on pathological data.
Everything is vectorised (sparse indicator products, no loop over cells).

Measured on 7 real datasets x 2 training seeds (``python -m bench.bench_gat
--seeds-report``, bench/results/gat_seeds.md), as a ratio to random seeds with
the same quotas (mean, range; below 1 = seeds closer to the cells of their type):

    strategy (centrality)   mean nearest seed    same, 10 PCs         worst-covered cell
    coverage (raw)          0.938 (0.922-0.955)  0.932 (0.881-0.972)  0.953 (0.901-0.995)
    score (raw, default)    0.969 (0.958-0.982)  1.030 (0.970-1.079)  1.008 (0.978-1.062)
    score (relative)        1.064 (1.014-1.164)  1.085 (0.988-1.238)  1.034 (0.984-1.097)

and on the three datasets with a condition inside each type (sc_mixology
protocol, kang_ifnb stimulation, baron_mouse donor), the condition mix of a
type's seeds differs from that of its train cells by a total variation of 0.032
(coverage) against 0.068 (random), 0.069 (score, raw) and 0.086 (score, relative).
Whether better-spread seeds make better synthetic cells is for the fidelity
benchmark to show; the default strategy stays ``score``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp


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
    rare_types: Iterable[str],
    rare_min_seeds: int,
) -> SeedPlan:
    """How many seeds each type gets.

    - ``total = ceil(seed_fraction * n_train)``;
    - a type is rare when it is in *rare_types* (the list ``garage preprocess``
      decided, read with :func:`garage._meta.rare_types_of`; names that are not
      among *labels* are ignored); it gets
      ``min(n_train_t, max(rare_min_seeds, round(seed_fraction * n_train_t)))``;
    - the remaining ``total - sum(rare quotas)`` go to the other types in
      proportion to their train cells (largest remainder, ties by name), at
      least one each, never more than their train cells.
    """
    labels = pd.Series(np.asarray(labels, dtype=object).astype(str))
    is_train = np.asarray(is_train, dtype=bool)
    rare_set = {str(t) for t in rare_types}
    n_cells = labels.value_counts()
    n_train = labels[is_train].value_counts().reindex(n_cells.index, fill_value=0)
    types = sorted(n_cells.index)
    tab = pd.DataFrame(
        {"n_cells": n_cells.reindex(types).astype(int), "n_train": n_train.reindex(types).astype(int)}
    )
    tab["is_rare"] = tab.index.isin(sorted(rare_set))
    total = int(math.ceil(seed_fraction * int(is_train.sum())))
    quota = pd.Series(0, index=tab.index, dtype=int)

    rare = tab.index[tab["is_rare"]]
    for t in rare:  # loops over types, not cells
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


def _top_k(groups: np.ndarray, key: np.ndarray, names: np.ndarray, k: np.ndarray,
           first: np.ndarray | None = None) -> np.ndarray:
    """Row positions of the ``k[g]`` largest *key* in each group (ties by name).

    With *first* (bool), cells where it is True come before all others of the group.
    """
    first = np.zeros(len(groups), dtype=bool) if first is None else np.asarray(first, dtype=bool)
    df = pd.DataFrame({"g": groups, "f": first, "s": key, "name": names,
                       "row": np.arange(len(groups))})
    df = df.sort_values(["g", "f", "s", "name"], ascending=[True, False, False, True],
                        kind="mergesort")
    rank = df.groupby("g", sort=False).cumcount().to_numpy()
    return df["row"].to_numpy()[rank < k[df["g"].to_numpy()]]


def select_seeds(
    labels: pd.Series,
    is_train: np.ndarray,
    score: np.ndarray,
    obs_names: pd.Index,
    plan: SeedPlan,
) -> np.ndarray:
    """Boolean mask: per type, the ``quota`` train cells with the highest *score*.

    *score* is any per-cell key: the GAT score (strategy ``score``) or
    :func:`random_keys` (strategy ``random``).  Ties are broken by obs name, so
    the chosen set does not depend on row order.
    """
    labels = np.asarray(labels, dtype=object).astype(str)
    is_train = np.asarray(is_train, dtype=bool)
    rows = np.flatnonzero(is_train)
    codes, uniq = pd.factorize(labels[rows])
    k = plan.table["quota"].reindex(uniq, fill_value=0).to_numpy(dtype=np.int64)
    chosen = _top_k(codes, np.asarray(score, dtype=np.float64)[rows],
                    np.asarray(obs_names, dtype=str)[rows], k)
    mask = np.zeros(len(labels), dtype=bool)
    mask[rows[chosen]] = True
    return mask


def random_keys(obs_names: pd.Index, seed: int) -> np.ndarray:
    """Uniform random keys in ``[0, 1)``, one per cell, tied to the cell's name.

    The keys are drawn in the order of the sorted obs names, so a cell keeps its
    key (and the ``random`` strategy its seeds) whatever the row order of the file.
    """
    names = np.asarray(obs_names, dtype=str)
    order = np.argsort(names, kind="stable")
    keys = np.empty(len(names), dtype=np.float64)
    keys[order] = np.random.default_rng(int(seed)).random(len(names))
    return keys


# ----------------------------------------------------------------- coverage
def _indicator(cluster: np.ndarray, n_clusters: int) -> sp.csr_matrix:
    m = cluster.size
    return sp.csr_matrix((np.ones(m), (cluster, np.arange(m))), shape=(n_clusters, m))


def _seg_mean(ind: sp.csr_matrix, x: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    return np.asarray(ind @ x) / np.maximum(sizes, 1)[:, None]


def _median_split(proj: np.ndarray, cluster: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Side 1 = the upper half of each cluster by *proj* (ties by position)."""
    order = np.lexsort((np.arange(proj.size), proj, cluster))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank = np.empty(proj.size, dtype=np.int64)
    rank[order] = np.arange(proj.size) - starts[cluster[order]]
    return rank >= sizes[cluster] // 2


def _bisect(x: np.ndarray, cluster: np.ndarray, n_clusters: int, *, balanced: bool,
            power_iter: int = 6, lloyd_iter: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Split every cluster of *x* in two; returns ``(side, spread[2 * n_clusters])``.

    ``spread[2c + s]`` is the summed distance of half ``s`` of cluster ``c`` to
    its centroid.  Every half of a cluster with >= 2 cells is non-empty.
    """
    ind = _indicator(cluster, n_clusters)
    sizes = np.bincount(cluster, minlength=n_clusters)
    z = x - _seg_mean(ind, x, sizes)[cluster]
    # first principal axis per cluster: power iteration from the per-dimension variances
    v = np.asarray(ind @ (z * z))
    for _ in range(power_iter):
        v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-300)
        proj = np.einsum("ij,ij->i", z, v[cluster])
        v = np.asarray(ind @ (z * proj[:, None]))
    v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-300)
    proj = np.einsum("ij,ij->i", z, v[cluster])
    if balanced:
        side = _median_split(proj, cluster, sizes)
    else:
        side = proj > 0
        for _ in range(lloyd_iter):  # 2-means, every cluster at once
            half = 2 * cluster + side
            ind2 = _indicator(half, 2 * n_clusters)
            n2 = np.bincount(half, minlength=2 * n_clusters)
            cen = _seg_mean(ind2, x, n2)
            c0, c1 = cen[0::2], cen[1::2]
            # |x - c1|^2 < |x - c0|^2  <=>  x . (c1 - c0) > (|c1|^2 - |c0|^2) / 2
            thr = 0.5 * ((c1 * c1).sum(1) - (c0 * c0).sum(1))
            new = np.einsum("ij,ij->i", x, (c1 - c0)[cluster]) > thr[cluster]
            if np.array_equal(new, side):
                break
            side = new
        # a degenerate cluster (identical cells) may leave one half empty: split it by median
        n1 = np.bincount(cluster, weights=side, minlength=n_clusters)
        bad = (sizes >= 2) & ((n1 == 0) | (n1 == sizes))
        if bad.any():
            med = _median_split(proj, cluster, sizes)
            side = np.where(bad[cluster], med, side)
    half = 2 * cluster + side
    n2 = np.bincount(half, minlength=2 * n_clusters)
    cen = _seg_mean(_indicator(half, 2 * n_clusters), x, n2)
    dist = np.sqrt(((x - cen[half]) ** 2).sum(1))
    return side, np.bincount(half, weights=dist, minlength=2 * n_clusters)


def coverage_regions(coords: np.ndarray, groups: np.ndarray, quota: np.ndarray) -> np.ndarray:
    """Partition each group's cells into exactly ``quota[g]`` regions.

    Parameters
    ----------
    coords
        ``[m, d]`` coordinates of the cells (e.g. PCA), one row per cell.
    groups
        ``[m]`` group (type) code of every cell, ``0 .. G-1``.
    quota
        ``[G]`` regions wanted per group, ``0 <= quota[g] <= cells of g``.

    Returns
    -------
    ``[m]`` region id of every cell (``-1`` in groups with quota 0).  Ids are
    global and arbitrary; the cells of one region share one group.  Bisecting
    2-means (see the module docstring): ``O(m * d * log(max quota))``.
    """
    x = np.asarray(coords, dtype=np.float64)
    groups = np.asarray(groups, dtype=np.int64)
    quota = np.asarray(quota, dtype=np.int64)
    cluster = groups.copy()
    want = quota.copy()  # regions owed, per cluster id
    max_want = int(quota.max()) if quota.size else 0
    unbalanced_rounds = 2 * math.ceil(math.log2(max(2, max_want))) + 4
    rnd = 0
    while True:
        sizes = np.bincount(cluster, minlength=want.size)
        active = (want >= 2) & (sizes > want)
        if not active.any():
            break
        act_ids = np.flatnonzero(active)
        local = np.full(want.size, -1, dtype=np.int64)
        local[act_ids] = np.arange(act_ids.size)
        pts = np.flatnonzero(active[cluster])
        side, spread = _bisect(x[pts], local[cluster[pts]], act_ids.size,
                               balanced=rnd >= unbalanced_rounds)
        n1 = np.bincount(local[cluster[pts]], weights=side, minlength=act_ids.size).astype(np.int64)
        n0 = sizes[act_ids] - n1
        w = want[act_ids]
        s0, s1 = spread[0::2], spread[1::2]
        tot = s0 + s1
        share0 = np.where(tot > 0, s0 / np.where(tot > 0, tot, 1.0), n0 / (n0 + n1))
        k0 = np.clip(np.rint(w * share0).astype(np.int64), np.maximum(1, w - n1),
                     np.minimum(n0, w - 1))
        new_ids = want.size + np.arange(act_ids.size)  # half 1 gets a new cluster id
        want[act_ids] = k0
        want = np.concatenate([want, w - k0])
        moved = pts[side.astype(bool)]
        cluster[moved] = new_ids[local[cluster[moved]]]
        rnd += 1
    # clusters owed as many regions as they have cells: one region per cell
    region = cluster.copy()
    single = (want >= 2)[cluster]  # here want == size
    region[single] = want.size + np.flatnonzero(single)
    region[(want == 0)[cluster]] = -1
    return region


def region_core(coords: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Cells no farther from their region's centroid than the region's median cell.

    Every region with cells has a non-empty core; ``False`` where ``region == -1``.
    """
    x = np.asarray(coords, dtype=np.float64)
    region = np.asarray(region, dtype=np.int64)
    ok = np.flatnonzero(region >= 0)
    core = np.zeros(region.size, dtype=bool)
    if ok.size == 0:
        return core
    codes, uniq = pd.factorize(region[ok])
    sizes = np.bincount(codes, minlength=uniq.size)
    cen = _seg_mean(_indicator(codes, uniq.size), x[ok], sizes)
    dist = np.sqrt(((x[ok] - cen[codes]) ** 2).sum(1))
    median = pd.Series(dist).groupby(codes).transform("median").to_numpy()
    core[ok] = dist <= median
    return core


def select_per_region(
    region: np.ndarray, groups: np.ndarray, score: np.ndarray, obs_names: np.ndarray,
    core: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The highest-scoring cell of every region (ties by name) is its seed.

    With *core* (bool, see :func:`region_core`), a region's core cells come
    first: its seed is the highest-scoring cell of its core.

    Returns ``(chosen, rank)``: *chosen* is a boolean mask of the seeds; *rank*
    renumbers the regions ``0, 1, ...`` inside each group by their seed's score
    (0 = the best seed of the group), for every cell (``-1`` where
    ``region == -1``), so a user can read which seed each cell's region has.
    """
    region = np.asarray(region, dtype=np.int64)
    groups = np.asarray(groups)
    score = np.asarray(score, dtype=np.float64)
    names = np.asarray(obs_names, dtype=str)
    ok = np.flatnonzero(region >= 0)
    codes, _ = pd.factorize(region[ok])
    k = np.ones(int(codes.max()) + 1 if codes.size else 0, dtype=np.int64)
    seeds = ok[_top_k(codes, score[ok], names[ok], k, None if core is None else core[ok])]
    chosen = np.zeros(region.size, dtype=bool)
    chosen[seeds] = True
    # rank of each region's seed inside its group
    gcodes, _ = pd.factorize(groups[seeds])
    df = pd.DataFrame({"g": gcodes, "s": score[seeds], "name": names[seeds],
                       "i": np.arange(seeds.size)})
    df = df.sort_values(["g", "s", "name"], ascending=[True, False, True], kind="mergesort")
    seed_rank = np.empty(seeds.size, dtype=np.int64)
    seed_rank[df["i"].to_numpy()] = df.groupby("g", sort=False).cumcount().to_numpy()
    lookup = pd.Series(seed_rank, index=region[seeds])
    rank = np.full(region.size, -1, dtype=np.int64)
    rank[ok] = lookup.reindex(region[ok]).to_numpy(dtype=np.int64)
    return chosen, rank
