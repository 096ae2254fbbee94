"""Input checks and the shared space every metric is computed in.

Real cells: ``log_normalize(layers['counts'])`` (the preprocess formula);
synthetic cells: ``log_normalize(X)`` (X holds counts).  A PCA fitted on real
*train* cells only (centred, not scaled, like preprocess) projects all three
sets: real train, real holdout, synthetic.

Why the PCA is fitted on half of the train cells: with fewer cells than genes,
the top PCs also fit the noise of the cells they were fitted on, so those cells
sit measurably further out in PCA space than any unseen cell (on the bundled
PBMC subset a kNN C2ST of holdout vs PCA-fit train cells gives 0.61, not 0.5,
and the membership attack flips to 0.05).  So the train cells are split per
type into a PCA-fit half and a reference half; the control and the
membership-attack members use only the reference half, so both sides of every
comparison are out-of-sample for the PCA.  Distances to "any train cell"
(DCR, NNDR, exact copies) still use every train cell.

Bounded memory: the PCA is fitted on at most ``pca_max_cells`` of the fit half
(stratified by type, rare types whole), the only dense cells x genes block;
every other matrix stays sparse and projections are sparse x dense products.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .. import constants as C
from .._meta import condition_key_of, rare_types_of
from .._norm import log_normalize
from ..errors import GarageError

logger = logging.getLogger(__name__)

_RUN_PREPROCESS = "run `garage preprocess` on the counts and pass its PREFIX.preprocessed.h5ad as --real"


class LognormView:
    """Log-normalised rows of a count matrix, computed when indexed (``view[rows]``).

    The space keeps counts only; log-normalised values exist for the rows a metric
    uses at the time it uses them, so memory holds one sparse copy of the cells.
    """

    def __init__(self, counts: sp.csr_matrix) -> None:
        self.counts = counts

    @property
    def shape(self) -> tuple[int, int]:
        return self.counts.shape

    def __getitem__(self, rows) -> sp.csr_matrix:
        return log_normalize(self.counts[rows])


@dataclass
class Space:
    """Everything the metrics need, per set (train / holdout / synthetic)."""

    pca: dict[str, np.ndarray]  # cells x n_pcs, float64
    counts: dict[str, sp.csr_matrix]  # integer counts over HVGs
    labels: dict[str, np.ndarray]  # str labels
    var_names: list[str]
    n_pcs: int
    train_ref: np.ndarray  # rows of "train" not used to fit the PCA (control side)
    train_fit: np.ndarray  # rows of "train" in the PCA-fit half
    rare: list[str] = field(default_factory=list)  # the one rare list (uns['garage'])
    rare_source: str = "preprocess"  # "preprocess" | "threshold" (fallback)
    conditions: dict[str, np.ndarray] | None = None  # per set; synthetic may be absent
    condition_key: str | None = None
    train_names: np.ndarray | None = None  # obs names of the train rows
    seed: np.ndarray | None = None  # bool over train rows: GAT seed cells
    provenance: np.ndarray | None = None  # int over synthetic rows: train row of its seed, -1
    seed_inputs: tuple[str, ...] = ()  # the seed inputs given ("seeds", "provenance"), for notes
    pca_fit_cells: int = 0
    mmd_scales: np.ndarray | None = None  # RBF widths, fixed once per run (set by the MMD)

    def n(self, key: str) -> int:
        return self.pca[key].shape[0]

    @property
    def lognorm(self) -> dict[str, LognormView]:
        """Log-normalised HVGs per set, computed for the rows indexed."""
        return {k: LognormView(v) for k, v in self.counts.items()}

    def subset(self, keep: dict[str, np.ndarray]) -> "Space":
        """The same space restricted to rows (bool masks per set); PCA unchanged."""
        kt = np.asarray(keep["train"], dtype=bool)
        new_index = np.full(len(kt), -1)
        new_index[kt] = np.arange(int(kt.sum()))

        def rows(key, x):
            return x[np.asarray(keep[key], dtype=bool)]

        ref = new_index[self.train_ref]
        fit = new_index[self.train_fit]
        prov = None
        if self.provenance is not None:
            p = rows("synthetic", self.provenance)
            prov = np.where(p >= 0, new_index[np.maximum(p, 0)], -1)
        return Space(
            pca={k: rows(k, v) for k, v in self.pca.items()},
            counts={k: rows(k, v) for k, v in self.counts.items()},
            labels={k: rows(k, v) for k, v in self.labels.items()},
            var_names=self.var_names,
            n_pcs=self.n_pcs,
            train_ref=ref[ref >= 0],
            train_fit=fit[fit >= 0],
            rare=self.rare,
            rare_source=self.rare_source,
            conditions=None if self.conditions is None else {
                k: rows(k, v) for k, v in self.conditions.items()
            },
            condition_key=self.condition_key,
            train_names=None if self.train_names is None else rows("train", self.train_names),
            seed=None if self.seed is None else rows("train", self.seed),
            provenance=prov,
            seed_inputs=self.seed_inputs,
            pca_fit_cells=self.pca_fit_cells,
        )


def _csr(x) -> sp.csr_matrix:
    return sp.csr_matrix(x, dtype=np.float32)


def check_real(real) -> None:
    """Fail clearly unless *real* is a GARAGE preprocessed AnnData."""
    missing = []
    if C.LAYER_COUNTS not in real.layers:
        missing.append(f"layers['{C.LAYER_COUNTS}']")
    for key in (C.OBS_LABEL, C.OBS_SPLIT):
        if key not in real.obs.columns:
            missing.append(f"obs['{key}']")
    if missing:
        raise GarageError(
            "the real file is not a GARAGE preprocessed file (it lacks " + ", ".join(missing) + ")",
            _RUN_PREPROCESS,
        )
    split = real.obs[C.OBS_SPLIT].astype(str)
    n_train = int((split == C.SPLIT_TRAIN).sum())
    n_hold = int((split == C.SPLIT_HOLDOUT).sum())
    if n_train < 2 or n_hold < 2:
        raise GarageError(
            f"the real file has {n_train} train and {n_hold} holdout cells; evaluation needs at "
            "least 2 of each",
            "preprocess with a --holdout-fraction that leaves cells on both sides (e.g. 0.2)",
        )


def check_synthetic(real, synth):
    """Validate *synth* against *real*; return it with genes in the real order."""
    if synth.n_obs == 0:
        raise GarageError(
            "the synthetic file has no cells", "generate cells first (garage gan / garage generate)"
        )
    if C.OBS_CELL_TYPE not in synth.obs.columns:
        raise GarageError(
            f"the synthetic file has no obs['{C.OBS_CELL_TYPE}'] (columns: "
            f"{list(synth.obs.columns)[:10]})",
            "pass a PREFIX.synthetic.h5ad written by garage gan/generate, or add the cell type "
            f"of every synthetic cell as obs['{C.OBS_CELL_TYPE}']",
        )
    rv = pd.Index(real.var_names.astype(str))
    sv = pd.Index(synth.var_names.astype(str))
    if sv.has_duplicates:
        raise GarageError("the synthetic file has duplicate gene names", "write each gene once")
    if not rv.equals(sv):
        only_real = rv.difference(sv)
        only_syn = sv.difference(rv)
        if len(only_real) or len(only_syn):
            raise GarageError(
                f"the synthetic genes do not match the real ones ({len(sv)} synthetic vs "
                f"{len(rv)} real genes; {len(only_syn)} only in synthetic, e.g. "
                f"{list(only_syn[:3])}; {len(only_real)} only in real, e.g. {list(only_real[:3])})",
                "evaluate against the PREFIX.preprocessed.h5ad the synthetic cells were generated "
                "from",
            )
        synth = synth[:, rv].copy()  # same set, other order
    labels = synth.obs[C.OBS_CELL_TYPE]
    bad = labels.isna() | labels.astype(str).str.strip().isin(["", "nan", "None"])
    if bad.any():
        raise GarageError(
            f"{int(bad.sum())} synthetic cells have no obs['{C.OBS_CELL_TYPE}']",
            "label every synthetic cell",
        )
    real_types = set(real.obs[C.OBS_LABEL].astype(str))
    unknown = sorted(set(labels.astype(str).str.strip()) - real_types)
    if unknown:
        raise GarageError(
            f"synthetic cell types {unknown[:5]} do not occur in the real file (real types: "
            f"{sorted(real_types)[:10]})",
            "evaluate against the PREFIX.preprocessed.h5ad the synthetic cells were generated "
            "from (labels must match obs['garage_label'])",
        )
    if condition_key_of(real) is not None and C.OBS_SYN_CONDITION in synth.obs.columns:
        cond = synth.obs[C.OBS_SYN_CONDITION]
        bad = cond.isna() | cond.astype(str).str.strip().isin(["", "nan", "None"])
        if bad.any():
            raise GarageError(
                f"{int(bad.sum())} synthetic cells have no obs['{C.OBS_SYN_CONDITION}']",
                "give every synthetic cell its condition (or none at all)",
            )
        real_cond = set(real.obs[C.OBS_CONDITION].astype(str))
        unknown = sorted(set(cond.astype(str).str.strip()) - real_cond)
        if unknown:
            raise GarageError(
                f"synthetic conditions {unknown[:5]} do not occur in the real file (real "
                f"conditions: {sorted(real_cond)[:10]})",
                "evaluate against the PREFIX.preprocessed.h5ad the synthetic cells were generated "
                "from (conditions must match obs['garage_condition'])",
            )
    x = synth.X
    data = x.data if sp.issparse(x) else np.asarray(x).ravel()
    if data.size and (not np.all(np.isfinite(data)) or data.min() < 0):
        raise GarageError(
            "synthetic X has negative or non-finite values; it must hold counts",
            "write integer counts to X (not log-normalised or scaled values)",
        )
    sample = data[: 200_000]
    if sample.size and not np.allclose(sample, np.round(sample), atol=1e-3):
        raise GarageError(
            "synthetic X is not integer counts (it looks normalised or log-transformed)",
            "write the sampled integer counts to X",
        )
    return synth


def split_train(labels: np.ndarray, fit_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-type split of train rows into (fit, ref); types with one cell go to ref."""
    n = len(labels)
    if n < 20:  # too few cells to split: fit on all (the control is then optimistic)
        logger.warning("only %d train cells: PCA fitted on all of them", n)
        idx = np.arange(n)
        return idx, idx
    rng = np.random.default_rng([int(seed), 11])
    fit = []
    for t in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == t))
        fit.extend(idx[: int(np.floor(fit_fraction * len(idx)))])
    fit = np.sort(np.asarray(fit, dtype=int))
    ref = np.setdiff1d(np.arange(n), fit)
    return fit, ref


def stratified_cap(labels: np.ndarray, cap: int, rng: np.random.Generator,
                   keep_whole: set[str] | frozenset = frozenset()) -> np.ndarray:
    """Row indices: at most about *cap* rows, each type in proportion (at least
    ``min(n_t, 20)``), types in *keep_whole* complete.  Sorted."""
    n = len(labels)
    if n <= cap:
        return np.arange(n)
    out = []
    for t in np.unique(labels):
        idx = np.flatnonzero(labels == t)
        if t in keep_whole:
            q = len(idx)
        else:
            q = min(len(idx), max(int(cap * len(idx) / n), 20))
        out.append(rng.permutation(idx)[:q])
    return np.sort(np.concatenate(out))


def _project(counts: sp.csr_matrix, comp: np.ndarray, chunk: int = 20_000) -> np.ndarray:
    """Log-normalise and project rows in chunks (sparse x dense; no dense cells x genes)."""
    out = np.empty((counts.shape[0], comp.shape[0]), dtype=np.float64)
    for i in range(0, counts.shape[0], chunk):
        out[i: i + chunk] = log_normalize(counts[i: i + chunk]) @ comp.T
    return out


def build_space(real, synth, n_pcs: int, seed: int, fit_fraction: float = 0.5,
                *, pca_max_cells: int = 10_000, rare_threshold: float | None = None) -> Space:
    """Log-normalise both sides with the shared formula and project on a train PCA."""
    from sklearn.decomposition import PCA

    split = real.obs[C.OBS_SPLIT].astype(str).to_numpy()
    lab = real.obs[C.OBS_LABEL].astype(str).str.strip().to_numpy()
    is_tr, is_ho = split == C.SPLIT_TRAIN, split == C.SPLIT_HOLDOUT
    rc = _csr(real.layers[C.LAYER_COUNTS])
    counts = {"train": rc[is_tr], "holdout": rc[is_ho], "synthetic": _csr(synth.X)}
    del rc
    labels = {
        "train": lab[is_tr],
        "holdout": lab[is_ho],
        "synthetic": synth.obs[C.OBS_CELL_TYPE].astype(str).str.strip().to_numpy(),
    }
    n_train, n_genes = counts["train"].shape
    uns = real.uns.get(C.UNS_KEY, {})
    rare_source = "preprocess" if C.UNS_RARE_TYPES in uns else "threshold"
    present = set(lab)
    rare = [t for t in rare_types_of(real, rare_threshold) if t in present]
    fit, ref = split_train(labels["train"], fit_fraction, seed)
    rng = np.random.default_rng([int(seed), 13])
    fit_rows = fit[stratified_cap(labels["train"][fit], pca_max_cells, rng, set(rare))]
    k = int(min(n_pcs, len(fit_rows) - 1, n_genes - 1))
    pca = PCA(n_components=k, svd_solver="randomized", random_state=seed)
    # bounded: <= ~pca_max_cells x HVGs is the only dense block
    pca.fit(log_normalize(counts["train"][fit_rows]).toarray())
    comp = pca.components_.astype(np.float64)  # k x genes
    shift = pca.mean_ @ comp.T
    coords = {key: _project(m, comp) - shift for key, m in counts.items()}
    logger.info(
        "shared space: %d HVGs -> %d PCs (%.1f%% variance) fitted on %d of %d train cells; "
        "%d holdout / %d synthetic cells",
        n_genes, k, 100 * pca.explained_variance_ratio_.sum(), len(fit_rows),
        n_train, counts["holdout"].shape[0], counts["synthetic"].shape[0],
    )
    conditions, cond_key = None, condition_key_of(real)
    if cond_key is not None:
        rcond = real.obs[C.OBS_CONDITION].astype(str).str.strip().to_numpy()
        conditions = {"train": rcond[is_tr], "holdout": rcond[is_ho]}
        if C.OBS_SYN_CONDITION in synth.obs.columns:
            conditions["synthetic"] = (
                synth.obs[C.OBS_SYN_CONDITION].astype(str).str.strip().to_numpy()
            )
    return Space(
        coords, counts, labels, list(real.var_names.astype(str)), k, ref, fit,
        rare=sorted(rare), rare_source=rare_source, conditions=conditions,
        condition_key=cond_key, train_names=real.obs_names.astype(str).to_numpy()[is_tr],
        pca_fit_cells=len(fit_rows),
    )
