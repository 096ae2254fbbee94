"""Per-condition metrics and the condition effect (real files with a condition column).

* **Per condition** c: the headline metrics (two-sample, agreement, utility) on
  the cells of condition c only: synthetic of c against real holdout of c, with
  the control real train of c against real holdout of c.  Privacy is about
  individual cells, not conditions, and is computed once, pooled.
* **Condition effect**, per type t and condition c against the type's
  reference condition c0 (the one with most real cells of t): the per-gene
  log-fold change ``mean log-normalised(c) - mean log-normalised(c0)`` in the
  synthetic cells of t, correlated (Pearson, over the genes detected in at least
  20% of the real cells of t) with the same in the real holdout cells of t.  Control: the same
  with real train-reference cells in place of the synthetic ones.  Every group
  (set x type x condition) needs ``condition_min_cells`` cells; draws are
  stratified bootstrap resamples of each group.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from .. import constants as C
from ._config import EvaluateConfig
from ._intervals import entry
from ._metrics import pearson

logger = logging.getLogger(__name__)

EFFECT = "condition_lfc_corr"
#: a gene enters the log-fold-change correlation when detected in this share of the type's real cells
MIN_DETECTED = 0.2


def _mean(x, rows: np.ndarray) -> np.ndarray:
    return np.asarray(x[rows].mean(axis=0)).ravel()


def condition_effect(space, cfg: EvaluateConfig, rng: np.random.Generator) -> list[dict]:
    """One row per type x non-reference condition with enough cells on every side."""
    L, K, LN = space.labels, space.conditions, space.lognorm
    ref = space.train_ref
    sets = {
        "holdout": (np.arange(space.n("holdout")), L["holdout"], K["holdout"]),
        "synthetic": (np.arange(space.n("synthetic")), L["synthetic"], K["synthetic"]),
        "train": (ref, L["train"][ref], K["train"][ref]),
    }
    cap = cfg.per_type_max_cells
    mc = cfg.condition_min_cells
    rows = []
    for t in sorted(set(L["train"]) | set(L["holdout"])):
        groups: dict[str, dict[str, np.ndarray]] = {}
        for key, (idx, lab, cond) in sets.items():
            groups[key] = {}
            for c in np.unique(cond[lab == t]):
                g = idx[(lab == t) & (cond == c)]
                groups[key][c] = rng.permutation(g)[: min(len(g), cap)]
        real_n = {c: int(((L["holdout"] == t) & (K["holdout"] == c)).sum()
                         + ((L["train"] == t) & (K["train"] == c)).sum())
                  for c in np.unique(np.r_[K["holdout"][L["holdout"] == t],
                                           K["train"][L["train"] == t]])}
        ok = [c for c in real_n
              if all(len(groups[k].get(c, ())) >= mc for k in sets)]
        if len(ok) < 2:
            continue
        c0 = max(ok, key=lambda c: (real_n[c], c))
        # genes detected in at least MIN_DETECTED of the type's real cells (holdout and train
        # reference, conditions pooled): the log-fold change of barely detected genes is noise
        rows_h = np.concatenate([groups["holdout"][c] for c in ok])
        rows_t = np.concatenate([groups["train"][c] for c in ok])
        det = (np.asarray((LN["holdout"][rows_h] > 0).sum(axis=0)).ravel()
               + np.asarray((LN["train"][rows_t] > 0).sum(axis=0)).ravel())
        genes = det >= MIN_DETECTED * (len(rows_h) + len(rows_t))
        if genes.sum() < 3:
            continue
        for c in ok:
            if c == c0:
                continue
            v, ctl = [], []
            for _ in range(cfg.n_repeats):
                b = {k: {cc: g[rng.integers(0, len(g), len(g))] for cc, g in groups[k].items()
                         if cc in (c, c0)} for k in sets}
                lfc = {}
                for k in sets:
                    X = LN["train"] if k == "train" else LN[k]
                    lfc[k] = (_mean(X, b[k][c]) - _mean(X, b[k][c0]))[genes]
                v.append(pearson(lfc["synthetic"], lfc["holdout"]))
                ctl.append(pearson(lfc["train"], lfc["holdout"]))
            e = entry(EFFECT, v, ctl, "higher",
                      len(groups["holdout"][c]) + len(groups["holdout"][c0]))
            rows.append({
                "cell_type": t, "condition": c, "reference": c0, **e,
                "n_synthetic": len(groups["synthetic"][c]) + len(groups["synthetic"][c0]),
            })
    return rows


def condition_section(space, cfg: EvaluateConfig) -> tuple[dict, pd.DataFrame]:
    """The ``conditions`` block of the metrics JSON and the per-condition table."""
    from ._core import _rng, headline

    K = space.conditions
    levels = sorted(set(K["train"]) | set(K["holdout"]))
    has_syn = "synthetic" in K
    n_cells = {c: {"real_train": int((K["train"] == c).sum()),
                   "real_holdout": int((K["holdout"] == c).sum()),
                   "synthetic": int((K["synthetic"] == c).sum()) if has_syn else None}
               for c in levels}
    doc = {"key": space.condition_key, "levels": levels, "n_cells": n_cells,
           "synthetic_has_condition": has_syn, "metrics": {}, "effect": []}
    rows = []
    if not has_syn:
        logger.warning("the real file has a condition (%s) but the synthetic cells have no "
                       "obs['%s']: per-condition metrics skipped", space.condition_key,
                       C.OBS_SYN_CONDITION)
        return doc, pd.DataFrame(rows, columns=list(C.PER_CONDITION_COLUMNS))
    if cfg.per_condition:
        for c in levels:
            keep = {k: K[k] == c for k in ("train", "holdout", "synthetic")}
            sub = space.subset(keep)
            if min(sub.n("holdout"), sub.n("synthetic"), len(sub.train_ref)) < 4:
                logger.warning("condition %s: too few cells for per-condition metrics (train ref %d, "
                               "holdout %d, synthetic %d)", c, len(sub.train_ref), sub.n("holdout"),
                               sub.n("synthetic"))
                continue
            metrics, _, _, _ = headline(sub, cfg, prefix=f"[{c}] ", privacy=False,
                                        per_type=False)
            doc["metrics"][c] = metrics
            for name, e in metrics.items():
                rows.append({"condition": c, "reference": "", "cell_type": "all", "metric": name,
                             **e, "n_synthetic": n_cells[c]["synthetic"]})
    logger.info("evaluate: condition effect (per-gene log-fold changes between conditions) ...")
    effect = condition_effect(space, cfg, _rng(cfg.seed, "condition_effect"))
    doc["effect"] = effect
    for e in effect:
        rows.append({**e, "metric": EFFECT})
        logger.info("  %s %s vs %s: lfc corr %.3f (control %.3f)", e["cell_type"], e["condition"],
                    e["reference"], e["value"] if e["value"] is not None else np.nan,
                    e["control"] if e["control"] is not None else np.nan)
    table = pd.DataFrame(rows)
    for col in C.PER_CONDITION_COLUMNS:
        if col not in table.columns:
            table[col] = np.nan
    return doc, table[list(C.PER_CONDITION_COLUMNS)]
