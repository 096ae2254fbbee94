"""Stage 0: counts in, a model-ready AnnData out.

QC -> library size -> seurat_v3 HVGs on counts -> normalise + log1p -> PCA ->
symmetric kNN graph -> stratified train/holdout split.  Without a label key,
Leiden clusters become the labels and ``uns['garage']`` says so.
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from . import constants as C
from ._meta import decide_rare_types
from ._norm import log_normalize
from ._utils import StepProgress, check_writable_dir, progress, versions, write_h5ad_atomic
from .errors import GarageError, ResourceError
from .io import as_csr32, inspect_counts, read_counts, validate_counts

logger = logging.getLogger(__name__)

#: stored values per chunk when scanning the full-gene matrix (a few tens of MB of temporaries)
SCAN_CHUNK = 1 << 22


@dataclass(frozen=True)
class PreprocessConfig:
    """Preprocessing options (saved to ``uns['garage']['preprocess']``).

    Parameters
    ----------
    label_key
        obs column with cell types; ``None`` -> Leiden clusters become labels.
    condition_key
        Optional obs column with a condition or batch covariate (treatment arm,
        donor, protocol); copied to ``obs['garage_condition']``, and the split is
        stratified by type x condition.  ``None``: no covariate.
    layer
        .h5ad layer holding counts (default X).
    transpose
        Table input is genes x cells.
    make_unique
        Make duplicate gene names unique instead of failing.
    min_genes, min_cells
        Light QC: drop cells with fewer detected genes, genes seen in fewer cells.
        Defaults keep a clean, already-filtered 10x dataset intact.
    n_top_genes
        Highly variable genes (seurat_v3 on counts); capped at the gene count.
    n_pcs, n_neighbors
        PCA components and kNN graph size.
    holdout_fraction
        Fraction of every type held out for evaluation.
    leiden_resolution
        Resolution for label-free runs.
    rare_threshold
        A type holding less than this fraction of the cells after QC is rare.
        Decided here once and stored in ``uns['garage']['rare_types']``; every
        later stage reads that list.
    seed
        Feeds every random source (PCA, kNN, Leiden, split).
    max_memory_gb
        Memory budget for the pre-flight estimate; ``None``: the available
        memory (MemAvailable, capped by a cgroup limit).  A property of the
        machine, not of the result, so it is not saved with the parameters.
    """

    label_key: str | None = None
    condition_key: str | None = None
    layer: str | None = None
    transpose: bool = False
    make_unique: bool = False
    min_genes: int = 50
    min_cells: int = 3
    n_top_genes: int = 2000
    n_pcs: int = 50
    n_neighbors: int = 15
    holdout_fraction: float = 0.2
    leiden_resolution: float = 1.0
    rare_threshold: float = C.RARE_THRESHOLD
    seed: int = 0
    max_memory_gb: float | None = None

    def validate(self) -> None:
        if self.max_memory_gb is not None and not self.max_memory_gb > 0:
            raise GarageError(
                f"--max-memory-gb must be > 0, got {self.max_memory_gb}", "pass e.g. 16, or omit it"
            )
        if self.min_genes < 0 or self.min_cells < 0:
            raise GarageError("--min-genes and --min-cells must be >= 0", "pass non-negative values")
        if self.n_top_genes < 2:
            raise GarageError("--n-top-genes must be >= 2", "pass e.g. 2000")
        if self.n_pcs < 2:
            raise GarageError("--n-pcs must be >= 2", "pass e.g. 50")
        if self.n_neighbors < 2:
            raise GarageError("--n-neighbors must be >= 2", "pass e.g. 15")
        if not 0.0 < self.rare_threshold < 1.0:
            raise GarageError(
                f"--rare-threshold must be in (0, 1), got {self.rare_threshold}", "pass e.g. 0.03"
            )
        if self.condition_key is not None and self.condition_key == self.label_key:
            raise GarageError(
                f"--condition-key and --label-key are the same column ({self.condition_key!r})",
                "pass the cell-type column as --label-key and the covariate as --condition-key",
            )
        if not 0.0 < self.holdout_fraction < 1.0:
            raise GarageError(
                f"--holdout-fraction must be in (0, 1), got {self.holdout_fraction}", "pass e.g. 0.2"
            )


_UNSAVED = ("max_memory_gb",)  # config fields that describe the machine, not the result


def _clean_labels(adata, label_key: str, what: str = "label") -> pd.Series:
    option = f"--{what}-key"
    if label_key not in adata.obs.columns:
        cols = list(adata.obs.columns)
        fix = (f"pass {option} with one of those columns, or omit it to use Leiden clusters"
               if what == "label" else f"pass {option} with one of those columns, or omit it")
        raise GarageError(f"{what} key {label_key!r} is not a column of obs (columns: {cols[:10]})", fix)
    raw = adata.obs[label_key]
    labels = raw.astype("object")
    missing = labels.isna() | labels.astype(str).str.strip().isin(["", "nan", "NaN", "None"])
    if missing.any():
        raise GarageError(
            f"{what} column {label_key!r} has {int(missing.sum())} missing/empty {what}s",
            f"give every cell a {what}, or drop those cells before running",
        )
    return labels.astype(str).str.strip()


def stratified_split(labels: pd.Series, holdout_fraction: float, seed: int) -> np.ndarray:
    """Per-group holdout split. Returns an array of ``train``/``holdout``.

    *labels* are the strata (the type, or type x condition).  Every group with
    >= 2 cells keeps >= 1 cell in train and puts ``max(1, round(f * n))`` (at
    most n - 1) in holdout; a group with a single cell stays in train.  Loops
    over groups, not cells.
    """
    rng = np.random.default_rng(seed)
    split = np.full(len(labels), C.SPLIT_TRAIN, dtype=object)
    codes, uniques = pd.factorize(labels, sort=True)
    for k in range(len(uniques)):
        idx = np.flatnonzero(codes == k)
        n = len(idx)
        if n < 2:
            continue
        n_hold = int(min(max(1, round(holdout_fraction * n)), n - 1))
        split[rng.permutation(idx)[:n_hold]] = C.SPLIT_HOLDOUT
    return split


def _knn_transformer(n_obs: int, k: int, seed: int):
    """scanpy's own choice (exact below 4,096 cells), except for one fix.

    Above that scanpy uses pynndescent, whose transformer returns a scipy
    ``csr_array``; scanpy 1.11 then calls ``getnnz``, which sparse *arrays* lack,
    and crashes.  Handing scanpy the same pynndescent result as a ``csr_matrix``
    keeps the approximate, linear-memory kNN for large data.
    """
    if n_obs < 4096:
        return None
    from pynndescent import PyNNDescentTransformer

    class _CSRMatrixNNDescent(PyNNDescentTransformer):
        def fit_transform(self, X, y=None, **kw):
            return sp.csr_matrix(super().fit_transform(X, y, **kw))

        def transform(self, X, y=None):
            return sp.csr_matrix(super().transform(X, y))

    return _CSRMatrixNNDescent(n_neighbors=k, metric="euclidean", random_state=seed, n_jobs=-1)


#: Each step's share of preprocess's time, from the 100,000-cell ``garage run`` of
#: bench/results/garage_run_100k.md (read 4.2 s, validate 0.7, QC 0.8, HVG 3.0, HVG copy 2.0,
#: PCA 7.8, kNN 36.1, write 6.2).  Leiden runs only without labels and was not measured there:
#: it is weighted like the kNN search it follows.
STEP_WEIGHTS = {"read": 4.2, "validate": 0.7, "qc": 0.8, "hvg": 3.0, "copy": 2.0, "pca": 7.8,
                "knn": 36.1, "leiden": 36.1, "write": 6.2}


def step_progress(*, read_write: bool, leiden: bool) -> StepProgress:
    """The preprocess stage's progress (bar or log lines with an ETA, and a heartbeat during
    PCA and the kNN search, which cannot report progress themselves)."""
    skip = ({"read", "write"} if not read_write else set()) | ({"leiden"} if not leiden else set())
    return StepProgress("preprocess", {k: v for k, v in STEP_WEIGHTS.items() if k not in skip},
                        log=logger)


def _row_chunks(X: sp.csr_matrix, max_values: int = SCAN_CHUNK):
    """Row ranges ``(r0, r1)`` of CSR *X* holding about *max_values* stored values each."""
    indptr = X.indptr
    n = X.shape[0]
    r0 = 0
    while r0 < n:
        r1 = int(np.searchsorted(indptr, indptr[r0] + max_values, side="right")) - 1
        r1 = min(n, max(r1, r0 + 1))
        yield r0, r1
        r0 = r1


def _scan(X: sp.csr_matrix, desc: str):
    """Row chunks of *X* as ``(r0, r1, data, indices, row_of_value)`` views, with a progress bar."""
    chunks = list(_row_chunks(X))
    for r0, r1 in progress(chunks, desc=desc, unit="chunk", leave=False):
        a, b = int(X.indptr[r0]), int(X.indptr[r1])
        lengths = np.diff(X.indptr[r0:r1 + 1])
        rows = np.repeat(np.arange(r0, r1, dtype=np.int64), lengths)
        yield r0, r1, X.data[a:b], X.indices[a:b], rows


def _per_row(values, rows_local, n_rows: int) -> np.ndarray:
    """Sum of *values* per row (float64), rows given as local 0..n_rows-1 ids."""
    return np.bincount(rows_local, weights=values, minlength=n_rows)


def _qc_counts(X: sp.csr_matrix, min_genes: int):
    """scanpy's QC counts without a copy of X: genes detected per cell, then the
    cells that pass, then the cells each gene is detected in among those cells."""
    n_obs, n_vars = X.shape
    n_genes = np.zeros(n_obs, dtype=np.int64)
    for r0, r1, data, _idx, rows in _scan(X, "QC: genes per cell"):
        n_genes[r0:r1] = np.bincount(rows[data > 0] - r0, minlength=r1 - r0)
    keep_cells = n_genes >= min_genes
    n_cells = np.zeros(n_vars, dtype=np.int64)
    for _r0, _r1, data, idx, rows in _scan(X, "QC: cells per gene"):
        sel = (data > 0) & keep_cells[rows]
        n_cells += np.bincount(idx[sel], minlength=n_vars)
    return n_genes, keep_cells, n_cells


def _library_sizes(X: sp.csr_matrix, keep_cells: np.ndarray, keep_genes: np.ndarray) -> np.ndarray:
    """Total counts over the kept genes, for the kept cells (float32)."""
    lib = np.zeros(X.shape[0], dtype=np.float64)
    for r0, r1, data, idx, rows in _scan(X, "library sizes"):
        sel = keep_genes[idx]
        lib[r0:r1] = _per_row(data[sel], rows[sel] - r0, r1 - r0)
    return lib[keep_cells].astype(np.float32)


def _seurat_v3(X: sp.csr_matrix, keep_cells: np.ndarray, keep_genes: np.ndarray,
               n_top: int, span: float = 0.3) -> pd.DataFrame:
    """scanpy's ``highly_variable_genes(flavor='seurat_v3')`` (one batch) on the kept
    cells and genes of *X*, without copying X.

    Same formulas as scanpy 1.11 (float64 sums; a value's square in the data's
    dtype, as scanpy's kernel does; the clip at ``reg_std * sqrt(n) + mean``;
    the same double argsort for ranks), computed chunk by chunk.  Returns the
    columns scanpy adds to ``var``, for the kept genes.
    """
    from skmisc.loess import loess

    n_vars = X.shape[1]
    n_obs = int(keep_cells.sum())
    s1 = np.zeros(n_vars)
    s2 = np.zeros(n_vars)
    for _r0, _r1, data, idx, rows in _scan(X, "HVG: mean and variance"):
        sel = keep_cells[rows]
        d = data[sel]
        i = idx[sel]
        s1 += np.bincount(i, weights=d.astype(np.float64), minlength=n_vars)
        s2 += np.bincount(i, weights=(d * d).astype(np.float64), minlength=n_vars)
    genes = np.flatnonzero(keep_genes)
    mean = s1[genes] / n_obs
    var = s2[genes] / n_obs - (s1[genes] / n_obs) ** 2
    if n_obs != 1:
        var *= n_obs / (n_obs - 1)

    not_const = var > 0
    estimat_var = np.zeros(len(genes), dtype=np.float64)
    model = loess(np.log10(mean[not_const]), np.log10(var[not_const]), span=span, degree=2)
    model.fit()
    estimat_var[not_const] = model.outputs.fitted_values
    reg_std = np.sqrt(10**estimat_var)
    clip_val = np.full(n_vars, np.inf)
    clip_val[genes] = reg_std * np.sqrt(n_obs) + mean

    c1 = np.zeros(n_vars)
    c2 = np.zeros(n_vars)
    for _r0, _r1, data, idx, rows in _scan(X, "HVG: clipped variance"):
        sel = keep_cells[rows]
        i = idx[sel]
        e = np.minimum(data[sel].astype(np.float64), clip_val[i])
        c1 += np.bincount(i, weights=e, minlength=n_vars)
        c2 += np.bincount(i, weights=e**2, minlength=n_vars)
    norm_var = (1 / ((n_obs - 1) * np.square(reg_std))) * (
        (n_obs * np.square(mean)) + c2[genes] - 2 * c1[genes] * mean
    )
    ranked = np.argsort(np.argsort(-norm_var[None, :], axis=1), axis=1)[0].astype(np.float32)
    hvg = ranked < n_top
    ranked[~hvg] = np.nan
    return pd.DataFrame({
        C.VAR_HVG: hvg,
        "highly_variable_rank": ranked,
        "means": mean,
        "variances": var,
        "variances_norm": norm_var.astype(np.float64),
    })


def _extract(X: sp.csr_matrix, keep_cells: np.ndarray, genes: np.ndarray) -> sp.csr_matrix:
    """``X[keep_cells][:, genes]`` (genes sorted) as CSR float32, built in two passes
    over X so the only new array is the result itself."""
    n_vars = X.shape[1]
    col_map = np.full(n_vars, -1, dtype=np.int64)
    col_map[genes] = np.arange(len(genes))
    row_nnz = np.zeros(X.shape[0], dtype=np.int64)
    for r0, r1, _data, idx, rows in _scan(X, "HVG counts: size"):
        sel = col_map[idx] >= 0
        row_nnz[r0:r1] = np.bincount(rows[sel] - r0, minlength=r1 - r0)
    row_nnz = row_nnz[keep_cells]
    nnz = int(row_nnz.sum())
    itype = np.int32 if max(nnz, len(genes)) < np.iinfo(np.int32).max else np.int64
    indptr = np.zeros(len(row_nnz) + 1, dtype=itype)
    np.cumsum(row_nnz, out=indptr[1:])
    data_out = np.empty(nnz, dtype=np.float32)
    idx_out = np.empty(nnz, dtype=itype)
    pos = 0
    for _r0, _r1, data, idx, rows in _scan(X, "HVG counts: copy"):
        sel = (col_map[idx] >= 0) & keep_cells[rows]
        k = int(sel.sum())
        data_out[pos:pos + k] = data[sel]
        idx_out[pos:pos + k] = col_map[idx[sel]]
        pos += k
    return sp.csr_matrix((data_out, idx_out, indptr), shape=(len(row_nnz), len(genes)))


def preprocess_adata(adata, config: PreprocessConfig):
    """Run preprocessing on an in-memory AnnData of counts; returns a new AnnData.

    *adata* is not modified and its X is never copied whole: QC and HVG
    statistics are computed chunk by chunk on it, and only the HVG counts of
    the kept cells are copied out.  The result carries X, obs, var and uns of
    the input (not its layers, obsm or obsp).
    """
    config.validate()
    with step_progress(read_write=False, leiden=config.label_key is None) as steps:
        return _preprocess(adata, config, owned=False, steps=steps)


def _preprocess(adata, config: PreprocessConfig, *, owned: bool, steps: StepProgress):
    """*owned*: the caller hands *adata* over; its X is released once the HVG
    counts are extracted, so the full-gene matrix and the HVG matrices are not
    all held while PCA and kNN run.  *steps*: the stage's progress."""
    import anndata as ad
    import scanpy as sc

    config.validate()
    with steps.step("validate", "validating counts"):
        validate_counts(adata)
    X = as_csr32(adata.X)
    if owned:
        adata.X = None  # X (local) is now the only reference
    n_in = adata.n_obs

    obs = adata.obs.copy()
    labels = None
    if config.label_key is not None:
        labels = _clean_labels(adata, config.label_key)
        obs[C.OBS_LABEL] = labels.values
    if config.condition_key is not None:
        obs[C.OBS_CONDITION] = _clean_labels(adata, config.condition_key, "condition").values

    # light QC: scanpy's filter_cells(min_genes) then filter_genes(min_cells)
    with steps.step("qc", "QC"):
        n_genes, keep_cells, n_cells = _qc_counts(X, config.min_genes)
    obs["n_genes"] = n_genes
    n_qc = int(keep_cells.sum())
    if n_qc == 0:
        raise GarageError(
            f"no cells left after QC (min_genes={config.min_genes})", "lower --min-genes"
        )
    if n_qc < 10:
        raise GarageError(
            f"only {n_qc} cells left after QC; GARAGE needs at least 10", "provide more cells"
        )
    var = adata.var.copy()
    var["n_cells"] = n_cells
    keep_genes = n_cells >= config.min_cells
    n_genes_qc = int(keep_genes.sum())
    if n_genes_qc < 2:
        raise GarageError(
            f"fewer than 2 genes left after QC (min_cells={config.min_cells})", "lower --min-cells"
        )
    if n_qc < n_in:
        logger.info("QC removed %d of %d cells", n_in - n_qc, n_in)

    # library size over all genes, before the HVG subset (reported only; the
    # shared space normalises by HVG totals, see garage._norm)
    lib = _library_sizes(X, keep_cells, keep_genes)

    n_top = int(min(config.n_top_genes, n_genes_qc))
    uns = copy.deepcopy(dict(adata.uns))
    genes = np.flatnonzero(keep_genes)
    if n_top < n_genes_qc:
        with steps.step("hvg", f"highly variable genes (seurat_v3, {n_top} of {n_genes_qc})"):
            hvg = _seurat_v3(X, keep_cells, keep_genes, n_top)
        for col in hvg.columns:
            values = np.zeros(len(var), dtype=hvg[col].dtype)
            values[genes] = hvg[col].to_numpy()
            var[col] = values
        genes = genes[hvg[C.VAR_HVG].to_numpy()]
        uns["hvg"] = {"flavor": "seurat_v3"}
    else:
        var[C.VAR_HVG] = True
    with steps.step("copy", f"copying HVG counts ({n_qc} cells x {len(genes)} genes)"):
        counts = _extract(X, keep_cells, genes)
    del X  # with owned=True this frees the full-gene matrix

    # obs/var subset by anndata itself (drops unused categories as before)
    meta = ad.AnnData(obs=obs, var=var)[keep_cells, genes].copy()
    meta.obs[C.OBS_LIBSIZE] = lib
    adata = ad.AnnData(
        X=log_normalize(counts), obs=meta.obs, var=meta.var, uns=uns,
        layers={C.LAYER_COUNTS: counts},
    )
    del meta, counts

    n_pcs = int(min(config.n_pcs, adata.n_obs - 1, adata.n_vars - 1))
    with steps.step("pca", f"PCA ({n_pcs} components, sparse, implicit centring)"):
        sc.pp.pca(adata, n_comps=n_pcs, svd_solver="arpack", random_state=config.seed)
    k = int(min(config.n_neighbors, adata.n_obs - 1))
    with steps.step("knn", f"kNN graph (k={k}, {'pynndescent' if adata.n_obs >= 4096 else 'exact'})"):
        sc.pp.neighbors(
            adata, n_neighbors=k, use_rep=C.OBSM_PCA, random_state=config.seed,
            transformer=_knn_transformer(adata.n_obs, k, config.seed),
        )

    label_source = "obs:" + str(config.label_key)
    if labels is None:
        with steps.step("leiden", f"Leiden clustering (resolution {config.leiden_resolution})"):
            sc.tl.leiden(
                adata,
                resolution=config.leiden_resolution,
                key_added=C.OBS_LABEL,
                flavor="igraph",
                n_iterations=2,
                directed=False,
                random_state=config.seed,
            )
        adata.obs[C.OBS_LABEL] = "leiden_" + adata.obs[C.OBS_LABEL].astype(str)
        label_source = C.LABEL_SOURCE_LEIDEN
        logger.warning(
            "no --label-key given: using %d Leiden clusters (resolution %.2f) as labels",
            adata.obs[C.OBS_LABEL].nunique(),
            config.leiden_resolution,
        )
    lab = adata.obs[C.OBS_LABEL].astype(str)
    counts = lab.value_counts()
    if len(counts) < 2:
        raise GarageError(
            f"only one cell type ({counts.index[0]!r}) after QC; GARAGE needs at least 2",
            "use a label column with several types, or omit --label-key to use Leiden clusters",
        )
    singletons = sorted(counts.index[counts == 1])
    if singletons:
        logger.warning(
            "types with a single cell stay in train and cannot be evaluated: %s", singletons
        )
    adata.obs[C.OBS_LABEL] = pd.Categorical(lab)
    strata = lab
    conditions: list[str] = []
    if config.condition_key is not None:
        cond = adata.obs[C.OBS_CONDITION].astype(str)
        conditions = sorted(cond.unique())
        adata.obs[C.OBS_CONDITION] = pd.Categorical(cond, categories=conditions)
        strata = lab + "\x1f" + cond  # every type x condition group is split on its own
    adata.obs[C.OBS_SPLIT] = pd.Categorical(
        stratified_split(strata, config.holdout_fraction, config.seed),
        categories=[C.SPLIT_TRAIN, C.SPLIT_HOLDOUT],
    )
    rare = decide_rare_types(lab, config.rare_threshold)
    if rare:
        logger.info("rare types (< %.3g of %d cells): %s", config.rare_threshold, len(lab), rare)

    params = {k_: ("" if v is None else v) for k_, v in asdict(config).items()
              if k_ not in _UNSAVED}
    adata.uns[C.UNS_KEY] = {
        "preprocess": params,
        "label_source": label_source,
        C.UNS_LABEL_KEY: config.label_key or "",
        C.UNS_CONDITION_KEY: config.condition_key or "",
        "conditions": conditions,
        C.UNS_RARE_TYPES: rare,
        "rare_threshold": float(config.rare_threshold),
        "singleton_types": list(singletons),
        "n_cells_input": int(n_in),
        "n_cells_after_qc": int(n_qc),
        "n_pcs": n_pcs,
        "n_neighbors": k,
        "seed": int(config.seed),
        "versions": versions(),
    }
    return adata


# --------------------------------------------------------------------- memory
GB = 1024**3
#: resident size of the interpreter with scanpy, numba and pynndescent loaded (measured ~0.45 GB)
BASE_BYTES = int(0.6 * GB)
#: bytes held per stored count while reading, on top of the CSR matrix it becomes
#: (8 bytes a value: float32 count + int32 gene index); see ``estimate_memory_bytes``
READ_BYTES_PER_VALUE = {
    "h5ad": 0,         # CSR read straight into its final arrays
    "h5ad_csc": 8,     # CSC read, then converted to CSR
    "h5ad_dense": 8,   # dense rows to CSR blocks, then concatenated
    "table": 8,        # as dense h5ad
    "10x_h5": 24,      # scanpy reads every dataset (int64 indices), gene-expression subset copy
    "10x_mtx": 32,     # scipy's COO (int64 values), float32 copy, CSR, CSC -> CSR
    "memory": 0,       # already in memory (tables are checked after reading)
}
#: share of the stored counts that falls on the HVGs, as a multiple of the share of
#: genes kept (HVGs are the expressed genes: 1.6x on PBMC 3k; 2.5x is the margin)
HVG_VALUE_FACTOR = 2.5
#: bytes per cell for PCA (float64 scores and arpack work space) and the kNN graph
#: (pynndescent's heaps, search tree and graph, the umap connectivities; ~230 measured
#: at 100,000 cells), per component and per neighbour
PCA_BYTES_PER_CELL_PC = 40
KNN_BYTES_PER_CELL_NEIGHBOUR = 300


def layout_of(info) -> str:
    """The READ_BYTES_PER_VALUE key of a :class:`garage.io.CountsInfo`."""
    if info.fmt == "h5ad":
        return "h5ad_dense" if info.dense else ("h5ad_csc" if info.csc else "h5ad")
    return info.fmt


def _estimate_phases(n_obs: int, n_vars: int, nnz: int, config: PreprocessConfig,
                     layout: str) -> dict[str, int]:
    full = 8 * nnz + 8 * (n_obs + 1)
    n_top = min(config.n_top_genes, n_vars)
    hvg = int(full * min(1.0, HVG_VALUE_FACTOR * n_top / max(1, n_vars)))
    scan = 40 * SCAN_CHUNK  # per-chunk temporaries of the QC/HVG scans
    k = min(config.n_neighbors, max(1, n_obs - 1))
    return {
        "reading": full + READ_BYTES_PER_VALUE.get(layout, 16) * nnz,
        "HVG selection": full + hvg + scan,
        "PCA and kNN": (3 * hvg + PCA_BYTES_PER_CELL_PC * config.n_pcs * n_obs
                        + KNN_BYTES_PER_CELL_NEIGHBOUR * k * n_obs),
    }


def estimate_memory_bytes(n_obs: int, n_vars: int, nnz: int, config: PreprocessConfig, *,
                          layout: str = "h5ad") -> int:
    """Peak resident memory of ``garage preprocess``, from the input's shape and stored values.

    Three phases, the peak being the largest:

    - reading: the CSR matrix (8 bytes a value) plus what the reader holds on
      top of it (``READ_BYTES_PER_VALUE``);
    - QC and HVG selection: the CSR matrix, scan temporaries, and the HVG counts
      copied out of it;
    - after the full matrix is released: HVG counts, log-normalised values and
      one transient copy of either, PCA and the kNN graph.

    Linear in cells and in stored values; no term is cells x genes.
    """
    return int(BASE_BYTES + max(_estimate_phases(n_obs, n_vars, nnz, config, layout).values()))


def available_memory_bytes() -> int:
    """MemAvailable, capped by the cgroup memory limit when there is one (containers, SLURM)."""
    avail = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
            return 1 << 62
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                          "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            raw = Path(limit).read_text().strip()
        except OSError:
            continue
        if raw.isdigit():
            try:
                used = int(Path(usage).read_text().strip())
            except (OSError, ValueError):
                used = 0
            avail = min(avail, max(0, int(raw) - used))
        break
    return int(avail)


def check_memory(n_obs: int, n_vars: int, nnz: int, config: PreprocessConfig, *,
                 layout: str = "h5ad", available_bytes: int | None = None) -> int:
    """Raise a :class:`ResourceError` (exit 3) when the estimate exceeds the budget; return the estimate.

    The budget is ``config.max_memory_gb`` when set, else *available_bytes*
    when given, else 90% of :func:`available_memory_bytes`.
    """
    phases = _estimate_phases(n_obs, n_vars, nnz, config, layout)
    need = int(BASE_BYTES + max(phases.values()))
    if config.max_memory_gb is not None:
        have, what = int(config.max_memory_gb * GB), "--max-memory-gb"
    elif available_bytes is not None:
        have, what = int(available_bytes), "available memory"
    else:
        have, what = int(0.9 * available_memory_bytes()), "available memory"
    logger.info("memory estimate %.2f GB for %d cells x %d genes, %d stored counts (%s: %.2f GB)",
                need / GB, n_obs, n_vars, nnz, what, have / GB)
    if need > have:
        peak = max(phases, key=phases.get)
        fixes = [f"run on a node with at least {need / GB:.1f} GB free"]
        if peak == "reading" and layout not in ("h5ad", "memory"):
            fixes.append("convert the counts to a sparse (CSR) .h5ad, which reads with the least memory")
        if peak == "PCA and kNN" and n_vars > config.n_top_genes > 500:
            fixes.append(f"lower --n-top-genes (now {config.n_top_genes})")
        fixes.append("or split the sample into smaller ones")
        raise ResourceError(
            f"preprocessing {n_obs} cells x {n_vars} genes ({nnz} stored counts) needs about "
            f"{need / GB:.1f} GB (peak while {peak}), more than the {what} ({have / GB:.1f} GB)",
            "; ".join(fixes),
        )
    return need


def run_preprocess(
    counts: Path, outdir: Path, prefix: str, config: PreprocessConfig, *,
    available_bytes: int | None = None,
) -> dict[str, Path]:
    """Read *counts*, preprocess, and write ``PREFIX.preprocessed.h5ad`` atomically.

    A pre-flight memory estimate from the file's shape and stored values
    (:func:`check_memory`) runs before anything heavy; tables, whose size is
    only known once read, are checked right after reading.  *available_bytes*
    overrides the measured available memory (``config.max_memory_gb`` wins
    over both).
    """
    config.validate()
    outdir = check_writable_dir(Path(outdir))
    out = outdir / f"{prefix}{C.SUFFIX_PREPROCESSED}"
    if Path(counts).resolve() == out.resolve():
        raise GarageError("output would overwrite the input", "choose another --outdir or --prefix")
    info = inspect_counts(counts, layer=config.layer, transpose=config.transpose)
    checked = info.n_obs is not None and info.nnz is not None
    if checked:
        check_memory(info.n_obs, info.n_vars, info.nnz, config, layout=layout_of(info),
                     available_bytes=available_bytes)
    with step_progress(read_write=True, leiden=config.label_key is None) as steps:
        with steps.step("read", f"reading {Path(counts).name}"):
            adata = read_counts(
                counts, layer=config.layer, transpose=config.transpose, make_unique=config.make_unique
            )
        if not checked:
            check_memory(adata.n_obs, adata.n_vars, int(adata.X.nnz), config, layout="memory",
                         available_bytes=available_bytes)
        result = _preprocess(adata, config, owned=True, steps=steps)
        del adata
        result.uns[C.UNS_KEY]["sample"] = prefix
        with steps.step("write", f"writing {out.name}"):
            write_h5ad_atomic(result, out)
    n_train = int((result.obs[C.OBS_SPLIT] == C.SPLIT_TRAIN).sum())
    logger.info(
        "wrote %s: %d cells (%d train, %d holdout) x %d HVGs, %d types",
        out, result.n_obs, n_train, result.n_obs - n_train, result.n_vars,
        result.obs[C.OBS_LABEL].nunique(),
    )
    return {"h5ad": out}
