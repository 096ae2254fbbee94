"""Stage 0: counts in, a model-ready AnnData out.

QC -> library size -> seurat_v3 HVGs on counts -> normalise + log1p -> PCA ->
symmetric kNN graph -> stratified train/holdout split.  Without a label key,
Leiden clusters become the labels and ``uns['garage']`` says so.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from . import constants as C
from ._meta import decide_rare_types
from ._norm import log_normalize
from ._utils import check_writable_dir, versions, write_h5ad_atomic
from .errors import GarageError
from .io import read_counts, validate_counts

logger = logging.getLogger(__name__)


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

    def validate(self) -> None:
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


def preprocess_adata(adata, config: PreprocessConfig):
    """Run preprocessing on an in-memory AnnData of counts; returns a new AnnData."""
    import scanpy as sc

    config.validate()
    validate_counts(adata)
    adata = adata.copy()
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
    n_in = adata.n_obs

    labels = None
    if config.label_key is not None:
        labels = _clean_labels(adata, config.label_key)
        adata.obs[C.OBS_LABEL] = labels.values
    if config.condition_key is not None:
        adata.obs[C.OBS_CONDITION] = _clean_labels(adata, config.condition_key, "condition").values

    # light QC (scanpy's own filters)
    sc.pp.filter_cells(adata, min_genes=config.min_genes)
    if adata.n_obs == 0:
        raise GarageError(
            f"no cells left after QC (min_genes={config.min_genes})", "lower --min-genes"
        )
    if adata.n_obs < 10:
        raise GarageError(
            f"only {adata.n_obs} cells left after QC; GARAGE needs at least 10", "provide more cells"
        )
    sc.pp.filter_genes(adata, min_cells=config.min_cells)
    if adata.n_vars < 2:
        raise GarageError(
            f"fewer than 2 genes left after QC (min_cells={config.min_cells})", "lower --min-cells"
        )
    n_qc = adata.n_obs
    if n_qc < n_in:
        logger.info("QC removed %d of %d cells", n_in - n_qc, n_in)

    # library size over all genes, before the HVG subset (reported only; the
    # shared space normalises by HVG totals, see garage._norm)
    lib = np.asarray(adata.X.sum(axis=1)).ravel()
    adata.obs[C.OBS_LIBSIZE] = lib.astype(np.float32)

    n_top = int(min(config.n_top_genes, adata.n_vars))
    if n_top < adata.n_vars:
        sc.pp.highly_variable_genes(
            adata, flavor="seurat_v3", n_top_genes=n_top, subset=True, span=0.3
        )
    else:
        adata.var[C.VAR_HVG] = True
    adata.layers[C.LAYER_COUNTS] = adata.X.copy()
    adata.X = log_normalize(adata.layers[C.LAYER_COUNTS])

    n_pcs = int(min(config.n_pcs, adata.n_obs - 1, adata.n_vars - 1))
    sc.pp.pca(adata, n_comps=n_pcs, svd_solver="arpack", random_state=config.seed)
    k = int(min(config.n_neighbors, adata.n_obs - 1))
    sc.pp.neighbors(
        adata, n_neighbors=k, use_rep=C.OBSM_PCA, random_state=config.seed,
        transformer=_knn_transformer(adata.n_obs, k, config.seed),
    )

    label_source = "obs:" + str(config.label_key)
    if labels is None:
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

    params = {k_: ("" if v is None else v) for k_, v in asdict(config).items()}
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


def run_preprocess(
    counts: Path, outdir: Path, prefix: str, config: PreprocessConfig
) -> dict[str, Path]:
    """Read *counts*, preprocess, and write ``PREFIX.preprocessed.h5ad`` atomically."""
    config.validate()
    outdir = check_writable_dir(Path(outdir))
    out = outdir / f"{prefix}{C.SUFFIX_PREPROCESSED}"
    if Path(counts).resolve() == out.resolve():
        raise GarageError("output would overwrite the input", "choose another --outdir or --prefix")
    adata = read_counts(
        counts, layer=config.layer, transpose=config.transpose, make_unique=config.make_unique
    )
    result = preprocess_adata(adata, config)
    result.uns[C.UNS_KEY]["sample"] = prefix
    write_h5ad_atomic(result, out)
    n_train = int((result.obs[C.OBS_SPLIT] == C.SPLIT_TRAIN).sum())
    logger.info(
        "wrote %s: %d cells (%d train, %d holdout) x %d HVGs, %d types",
        out, result.n_obs, n_train, result.n_obs - n_train, result.n_vars,
        result.obs[C.OBS_LABEL].nunique(),
    )
    return {"h5ad": out}
