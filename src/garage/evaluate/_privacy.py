"""Privacy metrics: distance to closest record, exact copies, NNDR, membership inference.

Distances are Euclidean in the shared PCA space.  The control treats one half
of the real holdout as if it were synthetic and the other half as holdout: that
is what an independent real sample scores (ratios near 1, AUC near 0.5).
"""

from __future__ import annotations

import hashlib

import numpy as np
import scipy.sparse as sp


def nn_distances(ref: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    """Distances from each *query* row to its *k* nearest rows of *ref* (query x k)."""
    from sklearn.neighbors import NearestNeighbors

    k = int(min(k, len(ref)))
    d, _ = NearestNeighbors(n_neighbors=k).fit(ref).kneighbors(query)
    return d


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
