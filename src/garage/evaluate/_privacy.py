"""Privacy metrics: distance to closest record, exact copies, NNDR, membership inference,
and the seed-aware checks behind ``privacy_ok``.

Distances are Euclidean in the shared PCA space.  The control treats one half
of the real holdout as if it were synthetic and the other half as holdout: that
is what an independent real sample scores (ratios near 1, AUC near 0.5).

Every nearest-neighbour search has a bounded query set (``privacy_max_cells``)
against a full reference set (all train or all synthetic cells), so its cost is
linear in cells.  These are empirical tests of specific attacks, not a
differential-privacy guarantee (see docs/metrics.md).
"""

from __future__ import annotations

import hashlib

import numpy as np
import scipy.sparse as sp


def nn_search(ref: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Distances and indices of the *k* nearest rows of *ref* for each *query* row.

    Brute force in chunks (scikit-learn's ``working_memory``), so memory stays
    bounded; time is ``len(query) x len(ref)``.
    """
    from sklearn.neighbors import NearestNeighbors

    k = int(min(k, len(ref)))
    if len(query) == 0 or k == 0:
        return np.zeros((len(query), k)), np.zeros((len(query), k), dtype=int)
    return NearestNeighbors(n_neighbors=k, algorithm="brute").fit(ref).kneighbors(query)


def nn_distances(ref: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    """Distances from each *query* row to its *k* nearest rows of *ref* (query x k)."""
    return nn_search(ref, query, k)[0]


def loo_distances(ref: np.ndarray, rows: np.ndarray, k: int = 1) -> np.ndarray:
    """Distances from ``ref[rows]`` to their *k* nearest *other* rows of *ref* (leave one out)."""
    d, i = nn_search(ref, ref[rows], k + 1)
    out = np.empty((len(rows), k))
    for j, r in enumerate(rows):  # drop the row itself (not always first when duplicated)
        keep = i[j] != r
        out[j] = d[j][keep][:k] if keep.sum() >= k else d[j][1: k + 1]
    return out


def nndr(d: np.ndarray) -> np.ndarray:
    """Nearest / second-nearest distance ratio per row (0 for an exact copy)."""
    if d.shape[1] < 2:
        return np.zeros(len(d))
    d1, d2 = d[:, 0], d[:, 1]
    return np.divide(d1, d2, out=np.zeros_like(d1), where=d2 > 0)


def safe_ratio(num: float, den: float) -> float:
    if not np.isfinite(num) or not np.isfinite(den) or den <= 0:
        return float("nan")
    return float(num / den)


def _row_hashes(m: sp.csr_matrix) -> list[bytes]:
    m = sp.csr_matrix(m, dtype=np.float32)
    m.sort_indices()
    out = []
    for i in range(m.shape[0]):
        lo, hi = m.indptr[i], m.indptr[i + 1]
        data = np.round(m.data[lo:hi]).astype(np.int64)
        keep = data != 0
        h = hashlib.blake2b(digest_size=16)
        h.update(m.indices[lo:hi][keep].astype(np.int64).tobytes())
        h.update(data[keep].tobytes())
        out.append(h.digest())
    return out


def exact_copies(query: sp.csr_matrix, ref: sp.csr_matrix) -> int:
    """Number of *query* rows whose counts equal the counts of some *ref* row.

    All-zero rows are not counted: an empty cell reveals nothing about anyone.
    """
    query = sp.csr_matrix(query)
    ref_h = set(_row_hashes(ref))
    nonempty = np.asarray((query != 0).sum(axis=1)).ravel() > 0
    return int(sum(h in ref_h and ok for h, ok in zip(_row_hashes(query), nonempty)))


def mia_auc(d_members: np.ndarray, d_nonmembers: np.ndarray) -> float:
    """AUC of the attack 'closer to a synthetic cell -> was in training'.

    0.5: train cells are no closer to the synthetic cells than unseen cells; 1.0:
    the synthetic set reveals exactly which cells were trained on.
    """
    from sklearn.metrics import roc_auc_score

    if len(d_members) == 0 or len(d_nonmembers) == 0:
        return float("nan")
    y = np.r_[np.ones(len(d_members)), np.zeros(len(d_nonmembers))]
    return float(roc_auc_score(y, -np.r_[d_members, d_nonmembers]))


# --- seed-aware metrics --------------------------------------------------------------


def match_by_centrality(
    seed_c: np.ndarray, seed_t: np.ndarray, cand_c: np.ndarray, cand_t: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Pair each seed with the candidate of its type whose centrality is closest.

    Matching is with replacement (a rare type may have fewer candidates than
    seeds).  Returns ``(seed_rows, candidate_rows)``; seeds whose type has no
    candidate are dropped.
    """
    si, ci = [], []
    for t in np.unique(seed_t):
        cand = np.flatnonzero(cand_t == t)
        if len(cand) == 0:
            continue
        order = cand[np.argsort(cand_c[cand], kind="stable")]
        cs = cand_c[order]
        for s in np.flatnonzero(seed_t == t):
            j = int(np.searchsorted(cs, seed_c[s]))
            lo, hi = max(j - 1, 0), min(j, len(cs) - 1)
            k = lo if abs(cs[lo] - seed_c[s]) <= abs(cs[hi] - seed_c[s]) else hi
            si.append(s)
            ci.append(order[k])
    return np.asarray(si, dtype=int), np.asarray(ci, dtype=int)


def paired_auc(d_members: np.ndarray, d_nonmembers: np.ndarray) -> float:
    """AUC of 'closer -> member' (as :func:`mia_auc`), for the matched pairs' distances."""
    return mia_auc(d_members, d_nonmembers)


#: thresholds of ``privacy_ok`` (docs/metrics.md explains each one).  A check fails
#: only when its value is worse than the threshold AND differs from its control
#: beyond the 95% intervals (so noise alone never fails it).
PRIVACY_THRESHOLDS: dict[str, float] = {
    "dcr_ratio_min": 0.9,
    "nndr_ratio_min": 0.9,
    "rare_dcr_ratio_min": 0.8,
    "mia_auc_excess": 0.05,
    "seed_mia_auc_excess": 0.05,
    "seed_nn_share_excess": 0.10,
}


def _seed_mia_note(ctx: dict) -> str:
    """Why ``seed_mia_auc`` was not computed, from the evaluation's context."""
    inputs = ctx.get("seed_inputs") or ()
    if not inputs:
        return "seed_mia_auc not computed (pass --seeds PREFIX.seeds.h5ad or --provenance)"
    given = " and ".join(f"--{k}" for k in inputs)
    if not ctx.get("n_seeds"):
        return f"seed_mia_auc not computed ({given} given, but they mark no seed cell)"
    pairs, tried = ctx.get("seed_pairs"), ctx.get("seeds")
    if pairs is not None and pairs < 2:
        return (f"seed_mia_auc not computed (only {pairs} of {tried} seeds have a holdout cell and "
                "a non-seed train cell of their type within the centrality caliper; 2 needed)")
    return "seed_mia_auc not computed"


def _seed_nn_note(ctx: dict) -> str:
    """Why ``seed_nn_share`` was not computed, from the evaluation's context."""
    if "provenance" not in (ctx.get("seed_inputs") or ()):
        return "seed_nn_share not computed (pass --provenance PREFIX.provenance.tsv)"
    if not ctx.get("seeded_synthetic"):
        return ("seed_nn_share not computed (--provenance given, but it gives no synthetic cell a "
                "seed: every cell was made from noise)")
    return "seed_nn_share not computed"


def privacy_verdict(metrics: dict, context: dict | None = None) -> tuple[bool, list[str], list[str]]:
    """``(privacy_ok, reasons, notes)`` from the metric entries.

    *reasons* lists every failed check in words; *notes* lists checks that could
    not run, and why (e.g. no ``--seeds``), and the types with synthetic cells that
    no per-type or seed check covered.  *context* (optional) says what the notes
    need: ``seed_inputs`` (the seed inputs given: "seeds", "provenance"),
    ``n_seeds`` (seed cells marked), ``seeds`` and ``seed_pairs`` (seeds tried and
    matched by ``seed_mia_auc``), ``seeded_synthetic`` (synthetic cells with a seed)
    and ``unchecked`` (type -> the checks that could not run on it).  Unchecked types
    never fail ``privacy_ok``: they are unverified, and the notes say so.
    """
    from ._intervals import differs

    ctx = dict(context or {})
    th = PRIVACY_THRESHOLDS
    reasons: list[str] = []
    notes: list[str] = []

    def get(name):
        e = metrics.get(name) or {}
        return e, e.get("value"), e.get("control")

    e, v, c = get("exact_copies")
    if v is not None and v > (c or 0):
        reasons.append(f"exact_copies: {int(v)} synthetic cells are exact copies of training cells "
                       f"(control {int(c or 0)})")

    def low(name, key, what):
        e, v, c = get(name)
        if v is None or c is None:
            notes.append(f"{name} not computed")
            return
        if v < th[key] and v < c and differs(e) is not False:
            reasons.append(f"{name} {v:.3f} is below {th[key]} and below its control {c:.3f} beyond "
                           f"the intervals: {what}")

    def high(name, key, what):
        e, v, c = get(name)
        if v is None or c is None:
            return False
        if v > c + th[key] and differs(e) is not False:
            reasons.append(f"{name} {v:.3f} exceeds its control {c:.3f} by more than {th[key]} "
                           f"beyond the intervals: {what}")
        return True

    low("dcr_ratio", "dcr_ratio_min", "synthetic cells sit closer to training cells than unseen "
        "real cells do")
    low("nndr_ratio", "nndr_ratio_min", "synthetic cells point to single training cells")
    e, v, c = get("rare_dcr_ratio")
    if v is None:
        notes.append("rare_dcr_ratio not computed (no rare type with synthetic and holdout cells)")
    else:
        low("rare_dcr_ratio", "rare_dcr_ratio_min", "synthetic cells of rare types sit on "
            "training cells of rare types")
    high("mia_auc", "mia_auc_excess", "training cells are closer to synthetic cells than unseen "
         "cells are (membership leak)")
    if not high("seed_mia_auc", "seed_mia_auc_excess", "seed cells are closer to synthetic cells "
                "than matched unseen cells are (the generator re-emits its seeds)"):
        notes.append(_seed_mia_note(ctx))
    else:
        pairs, tried = ctx.get("seed_pairs"), ctx.get("seeds")
        if pairs is not None and tried and pairs < tried / 2:
            notes.append(f"seed_mia_auc rests on {pairs} of {tried} seeds: the centrality matching "
                         "kept fewer than half (the others have no holdout cell or non-seed train "
                         "cell of their type within the caliper), so most seeds are not checked")
    if not high("seed_nn_share", "seed_nn_share_excess", "seeded synthetic cells have their own "
                "seed as nearest training cell more often than chance"):
        notes.append(_seed_nn_note(ctx))
    unchecked = ctx.get("unchecked") or {}
    if unchecked:
        notes.append("not checked: " + "; ".join(
            f"{t} [{'; '.join(why)}]" for t, why in unchecked.items())
            + " - these types have synthetic cells, but the checks named could not run on them, "
            "so privacy_ok does not vouch for them: treat them as unverified")
    return not reasons, reasons, notes
