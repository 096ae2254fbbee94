"""Two-sample fidelity metrics on the shared space.

Every function takes two equal-sized samples (the caller draws balanced
subsamples) and returns one float, so the same code gives the value
(holdout vs synthetic) and the control (holdout vs train).
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp


def c2st_auc(
    a: np.ndarray,
    b: np.ndarray,
    *,
    classifier: str = "knn",
    k: int = 15,
    folds: int = 5,
    seed: int = 0,
) -> float:
    """Classifier two-sample test: cross-validated ROC AUC separating *a* from *b*.

    0.5 means the classifier cannot tell the sets apart; 1.0 means it always can.
    Out-of-fold probabilities of all cells give one AUC.
    """
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    X = np.vstack([a, b])
    y = np.r_[np.zeros(len(a), dtype=int), np.ones(len(b), dtype=int)]
    n_folds = int(min(folds, len(a), len(b)))
    if n_folds < 2:
        return float("nan")
    if classifier == "rf":
        from sklearn.ensemble import RandomForestClassifier

        clf = RandomForestClassifier(
            n_estimators=200, min_samples_leaf=2, random_state=seed, n_jobs=1
        )
    else:
        from sklearn.neighbors import KNeighborsClassifier

        n_fit = len(y) - len(y) // n_folds - 1
        clf = KNeighborsClassifier(n_neighbors=int(max(1, min(k, n_fit))))
    cv = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    proba = cross_val_predict(clf, X, y, cv=cv, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, proba))


def c2st_auc_loo(a: np.ndarray, b: np.ndarray, *, k: int = 15) -> float:
    """Leave-one-out kNN classifier two-sample test (one neighbour search).

    Each cell's probability of being from *b* is the share of *b* cells among its
    k nearest *other* cells; ROC AUC over all cells.  The same test as
    :func:`c2st_auc` with the kNN classifier and n-fold instead of 5-fold
    cross-validation, at a fraction of the cost (used per type, where it runs often).
    """
    from sklearn.metrics import roc_auc_score
    from sklearn.neighbors import NearestNeighbors

    n = len(a) + len(b)
    if min(len(a), len(b)) < 2:
        return float("nan")
    kk = int(max(1, min(k, n - 2)))
    X = np.vstack([a, b])
    y = np.r_[np.zeros(len(a)), np.ones(len(b))]
    _, ind = NearestNeighbors(n_neighbors=kk + 1, algorithm="brute").fit(X).kneighbors(X)
    # drop each cell itself (first unless duplicated; then drop one occurrence of its own index)
    own = ind == np.arange(n)[:, None]
    first = np.where(own.any(axis=1), own.argmax(axis=1), kk)
    keep = np.ones_like(ind, dtype=bool)
    keep[np.arange(n), first] = False
    neigh = ind[keep].reshape(n, kk)
    return float(roc_auc_score(y, y[neigh].mean(axis=1)))


def _sqdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    aa = np.einsum("ij,ij->i", a, a)[:, None]
    bb = np.einsum("ij,ij->i", b, b)[None, :]
    d = aa + bb - 2.0 * (a @ b.T)
    np.maximum(d, 0.0, out=d)
    return d


def median_sq_distance(x: np.ndarray, rng: np.random.Generator, max_n: int = 1000) -> float:
    """Median pairwise squared Euclidean distance (the median heuristic), on a subsample."""
    if len(x) > max_n:
        x = x[rng.choice(len(x), max_n, replace=False)]
    d = _sqdist(x, x)
    iu = np.triu_indices(len(x), k=1)
    med = float(np.median(d[iu])) if len(iu[0]) else 1.0
    return med if med > 0 else 1.0


def mmd_rbf(a: np.ndarray, b: np.ndarray, scales: np.ndarray) -> float:
    """Unbiased squared MMD with a sum of RBF kernels ``mean_s exp(-d^2 / s)``.

    *scales* are the kernel widths in squared-distance units (median heuristic of
    real cells times factors).  Expected value 0 for identical distributions; an
    unbiased estimate can be slightly negative.
    """
    n, m = len(a), len(b)
    if n < 2 or m < 2:
        return float("nan")
    daa, dbb, dab = _sqdist(a, a), _sqdist(b, b), _sqdist(a, b)
    out = 0.0
    for s in np.atleast_1d(scales):
        kaa = np.exp(-daa / s)
        kbb = np.exp(-dbb / s)
        kab = np.exp(-dab / s)
        out += (
            (kaa.sum() - np.trace(kaa)) / (n * (n - 1))
            + (kbb.sum() - np.trace(kbb)) / (m * (m - 1))
            - 2.0 * kab.mean()
        )
    return float(out / len(np.atleast_1d(scales)))


def wasserstein(a: np.ndarray, b: np.ndarray) -> float:
    """Exact 1-Wasserstein (earth mover's) distance, uniform weights, Euclidean cost."""
    import ot

    wa = np.full(len(a), 1.0 / len(a))
    wb = np.full(len(b), 1.0 / len(b))
    cost = np.sqrt(_sqdist(a, b))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(ot.emd2(wa, wb, cost, numItermax=2_000_000))


def gene_stats(lognorm: sp.csr_matrix, counts: sp.csr_matrix) -> dict[str, np.ndarray]:
    """Per-gene mean and variance of log-normalised values, zero fraction of counts."""
    n = lognorm.shape[0]
    mean = np.asarray(lognorm.mean(axis=0)).ravel()
    sq = lognorm.multiply(lognorm)
    var = np.asarray(sq.mean(axis=0)).ravel() - mean**2
    var = np.maximum(var, 0.0) * (n / max(n - 1, 1))
    nnz = np.bincount(sp.csr_matrix(counts).indices, minlength=counts.shape[1])
    zero = 1.0 - nnz / max(n, 1)
    return {"mean": mean, "var": var, "zero": zero}


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def libsize_ks(ca: sp.csr_matrix, cb: sp.csr_matrix) -> float:
    """Two-sample Kolmogorov-Smirnov statistic of library sizes (HVG count totals)."""
    from scipy.stats import ks_2samp

    la = np.asarray(ca.sum(axis=1)).ravel()
    lb = np.asarray(cb.sum(axis=1)).ravel()
    return float(ks_2samp(la, lb).statistic)


def leiden_ari_nmi(
    x: np.ndarray, labels: np.ndarray, *, resolution: float, k: int, seed: int
) -> tuple[float, float]:
    """Leiden clusters of a kNN graph (PCA space) scored against *labels* (ARI, NMI)."""
    import igraph as ig
    import leidenalg
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
    from sklearn.neighbors import NearestNeighbors

    n = len(x)
    if n < 3:
        return float("nan"), float("nan")
    kk = int(min(k, n - 1))
    ind = NearestNeighbors(n_neighbors=kk).fit(x).kneighbors(return_distance=False)
    src = np.repeat(np.arange(n), kk)
    dst = ind.ravel()
    lo, hi = np.minimum(src, dst), np.maximum(src, dst)
    edges = np.unique(np.c_[lo, hi][lo != hi], axis=0)
    g = ig.Graph(n=n, edges=edges.tolist(), directed=False)
    part = leidenalg.find_partition(
        g,
        leidenalg.RBConfigurationVertexPartition,
        resolution_parameter=resolution,
        n_iterations=2,
        seed=int(seed),
    )
    clusters = np.asarray(part.membership)
    return (
        float(adjusted_rand_score(labels, clusters)),
        float(normalized_mutual_info_score(labels, clusters)),
    )
