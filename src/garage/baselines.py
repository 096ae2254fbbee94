"""Simple non-neural baselines that every generator must beat.

:func:`knn_interpolation` is the within-type SMOTE-like baseline: a synthetic
cell of type *t* is a random point on the segment between a real cell of type
*t* and one of its *k* nearest neighbours of the same type (neighbours found
in a PCA of the log-normalised counts), taken in **count space**, followed by
Poisson sampling.  The output has the same schema as ``PREFIX.synthetic.h5ad``.

:func:`exact_copy_mask` is the privacy check shared with the GAN: which
synthetic count vectors are byte-for-byte equal to a training cell.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from . import constants as C
from ._norm import log_normalize
from ._utils import versions
from .errors import GarageError

logger = logging.getLogger(__name__)

__all__ = ["knn_interpolation", "exact_copy_mask", "synthetic_anndata"]


def _row_hashes(x) -> np.ndarray:
    """One digest per row of an integer-valued count matrix (dense or CSR)."""
    x = sp.csr_matrix(x)
    x.sum_duplicates()
    x.eliminate_zeros()
    out = np.empty(x.shape[0], dtype=object)
    for i in range(x.shape[0]):
        lo, hi = x.indptr[i], x.indptr[i + 1]
        h = hashlib.blake2b(digest_size=16)
        h.update(np.asarray(x.indices[lo:hi], dtype=np.int64).tobytes())
        h.update(np.rint(x.data[lo:hi]).astype(np.int64).tobytes())
        out[i] = h.digest()
    return out


def exact_copy_mask(synthetic, train) -> np.ndarray:
    """Boolean mask of synthetic rows whose counts equal some training row exactly."""
    train_set = set(_row_hashes(train).tolist())
    return np.fromiter((h in train_set for h in _row_hashes(synthetic)), dtype=bool,
                       count=synthetic.shape[0])


def count_table(counts: dict, key: str):
    """A name -> count map as a two-column table for uns ("" when empty): cell type names may
    hold '/', which HDF5 would read as nested groups if the names were dict keys."""
    if not counts:
        return ""
    return pd.DataFrame({key: [str(k) for k in counts], "n_cells": [int(v) for v in counts.values()]})


def synthetic_anndata(counts, cell_types: Sequence[str], categories: Sequence[str], uns: dict, *,
                      var=None, var_names=None, sample: str = "sample", seed: int = 0,
                      conditions: Sequence[str] | None = None, condition_categories: Sequence[str] | None = None,
                      label_key: str | None = None, condition_key: str | None = None,
                      counterfactual=None):
    """Build an AnnData with the shareable ``PREFIX.synthetic.h5ad`` schema.

    - counts (CSR float32) in ``X`` and ``layers['counts']``;
    - ``obs['cell_type']`` (and ``obs['condition']`` when *conditions* are given),
      copied under the user's own column names (*label_key*, *condition_key*) so
      real and synthetic files concatenate without renaming; ``obs['synthetic']``;
    - obs names ``{sample}-syn{seed}-{i}``: unique across samples and seeds, and
      naming no real cell;
    - *var*: the input's gene metadata (index = gene names).
    """
    import anndata as ad

    obs = synthetic_obs(counts.shape[0], cell_types, categories, sample=sample, seed=seed,
                        conditions=conditions, condition_categories=condition_categories,
                        label_key=label_key, condition_key=condition_key, counterfactual=counterfactual)
    x = sp.csr_matrix(counts, dtype=np.float32)
    if var is None:
        var = pd.DataFrame(index=pd.Index(var_names).astype(str))
    out = ad.AnnData(X=x, obs=obs, var=var.copy())
    out.layers[C.LAYER_COUNTS] = x.copy()
    out.uns[C.UNS_KEY] = uns
    return out


def synthetic_obs(n: int, cell_types: Sequence[str], categories: Sequence[str], *, sample: str = "sample",
                  seed: int = 0, conditions: Sequence[str] | None = None,
                  condition_categories: Sequence[str] | None = None, label_key: str | None = None,
                  condition_key: str | None = None, counterfactual=None) -> pd.DataFrame:
    """The obs table of :func:`synthetic_anndata` for *n* cells (also used when X is written
    chunk by chunk, :func:`garage.io.write_synthetic_chunked`)."""
    obs = pd.DataFrame(
        {C.OBS_CELL_TYPE: pd.Categorical(list(cell_types), categories=list(categories))},
        index=pd.Index([f"{sample}-syn{int(seed)}-{i}" for i in range(n)]),
    )
    if conditions is not None:
        obs[C.OBS_SYN_CONDITION] = pd.Categorical(list(conditions), categories=list(condition_categories or
                                                                                    sorted(set(conditions))))
    obs[C.OBS_SYNTHETIC] = np.ones(n, dtype=bool)
    if counterfactual is not None:
        obs["counterfactual"] = np.asarray(counterfactual, dtype=bool)
    reserved = set(obs.columns)
    if label_key and label_key not in reserved:
        obs[label_key] = obs[C.OBS_CELL_TYPE]
    if conditions is not None and condition_key and condition_key not in reserved | {label_key}:
        obs[condition_key] = obs[C.OBS_SYN_CONDITION]
    return obs


def knn_interpolation(
    adata_train_counts,
    labels,
    n_per_type: Mapping[str, int],
    k: int = 5,
    seed: int = 0,
    n_pcs: int = 50,
    sample: str = "knn",
    with_provenance: bool = False,
):
    """Within-type kNN interpolation in count space, then Poisson sampling.

    Parameters
    ----------
    adata_train_counts
        AnnData of **training** cells whose ``X`` (or ``layers['counts']`` when
        present) holds raw counts over the genes to generate.
    labels
        Cell types: an ``obs`` column name or an array with one label per cell.
    n_per_type
        Number of synthetic cells per type (types must exist in *labels*).
    k
        Neighbours per anchor cell (within its type; capped at the type size - 1).
    seed
        Seed for every random choice.
    n_pcs
        PCA components of the log-normalised counts used to find neighbours.
    sample
        Prefix of the synthetic cell names.
    with_provenance
        Also return the PRIVATE provenance table (each cell's anchor cell).

    Returns
    -------
    AnnData (and a provenance DataFrame with *with_provenance*)
        Integer counts (CSR float32) in ``X``, ``obs['cell_type']``,
        ``obs['synthetic']`` and ``uns['garage']``; no real cell name.  Exact
        copies of training cells are resampled.
    """
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors

    if k < 1:
        raise GarageError(f"k must be >= 1, got {k}", "pass e.g. k=5")
    a = adata_train_counts
    counts = a.layers[C.LAYER_COUNTS] if C.LAYER_COUNTS in a.layers else a.X
    counts = sp.csr_matrix(counts, dtype=np.float32)
    lab = np.asarray(a.obs[labels] if isinstance(labels, str) else labels).astype(str)
    if lab.shape[0] != a.n_obs:
        raise GarageError("labels must have one entry per cell", "pass an obs key or a full array")
    types = sorted(set(lab))
    unknown = sorted(set(n_per_type) - set(types))
    if unknown:
        raise GarageError(f"unknown cell types {unknown}", f"choose among {types}")
    rng = np.random.default_rng(seed)
    n_comp = int(max(1, min(n_pcs, a.n_obs - 1, a.n_vars - 1)))
    emb = PCA(n_components=n_comp, random_state=seed).fit_transform(
        log_normalize(counts).toarray()
    )

    blocks, out_types, anchors = [], [], []
    names = np.asarray(a.obs_names).astype(str)
    for t in types:
        n_t = int(n_per_type.get(t, 0))
        if n_t <= 0:
            continue
        idx = np.flatnonzero(lab == t)
        kk = int(min(k, len(idx) - 1))
        a_pos = rng.integers(0, len(idx), size=n_t)
        if kk >= 1:
            nn = NearestNeighbors(n_neighbors=kk + 1).fit(emb[idx])
            _, nbr = nn.kneighbors(emb[idx])
            nbr = nbr[:, 1:]  # drop self
            b_pos = nbr[a_pos, rng.integers(0, kk, size=n_t)]
        else:  # a type with one cell: Poisson around that cell
            b_pos = a_pos
        lam = rng.random(n_t, dtype=np.float32)[:, None]
        ca = counts[idx[a_pos]].toarray()
        cb = counts[idx[b_pos]].toarray()
        mean = (1.0 - lam) * ca + lam * cb
        blocks.append(rng.poisson(mean).astype(np.float32))
        out_types += [t] * n_t
        anchors += names[idx[a_pos]].tolist()
    if not blocks:
        raise GarageError("n_per_type asks for zero cells", "ask for at least one cell")
    x = np.vstack(blocks)
    # resample exact copies (and empty cells) until none is left
    for _ in range(100):
        bad = exact_copy_mask(x, counts) | (x.sum(1) == 0)
        if not bad.any():
            break
        x[bad] = rng.poisson(np.maximum(x[bad], 0.5)).astype(np.float32)
    uns = {
        "method": "knn_interpolation",
        "k": int(k),
        "n_pcs": n_comp,
        "seed": int(seed),
        "n_per_type": count_table({str(t): int(v) for t, v in n_per_type.items()}, "cell_type"),
        "versions": versions(),
    }
    out = synthetic_anndata(x, out_types, types, uns, var_names=a.var_names, sample=sample, seed=seed)
    if not with_provenance:
        return out
    prov = pd.DataFrame({"synthetic_cell": out.obs_names.to_numpy(), "cell_type": out_types,
                         C.OBS_SEED_ID: anchors})
    return out, prov
