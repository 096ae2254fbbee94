"""Reading count matrices in the formats users bring, with clear errors.

Supported: ``.h5ad`` (counts in X or a named layer), 10x ``.h5``, a 10x
matrix folder (``matrix.mtx[.gz]`` + barcodes + features/genes), and
``.csv``/``.tsv`` (optionally ``.gz``), cells x genes or genes x cells.
Readers are scanpy's/anndata's own; this module only adds validation.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .errors import GarageError

logger = logging.getLogger(__name__)

TABLE_SUFFIXES = (".csv", ".tsv", ".csv.gz", ".tsv.gz", ".txt", ".txt.gz")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in (".csv.gz", ".tsv.gz", ".txt.gz", ".h5ad", ".h5", ".csv", ".tsv", ".txt"):
        if name.endswith(s):
            return s
    return path.suffix.lower()


def detect_format(path: Path) -> str:
    """Return one of ``h5ad``, ``10x_h5``, ``10x_mtx``, ``table``."""
    path = Path(path)
    if not path.exists():
        raise GarageError(f"input {path} does not exist", "check the path (and samplesheet column 'counts')")
    if path.is_dir():
        names = {p.name for p in path.iterdir()}
        if not ({"matrix.mtx", "matrix.mtx.gz"} & names):
            raise GarageError(
                f"{path} is a folder without matrix.mtx[.gz]",
                "point to a 10x matrix folder (matrix.mtx, barcodes.tsv, features.tsv) or a file",
            )
        return "10x_mtx"
    s = _suffix(path)
    if s == ".h5ad":
        return "h5ad"
    if s == ".h5":
        return "10x_h5"
    if s in TABLE_SUFFIXES:
        return "table"
    raise GarageError(
        f"unsupported input format {path.name!r}",
        "use .h5ad, a 10x .h5, a 10x matrix folder, or .csv/.tsv[.gz]",
    )


def read_counts(
    path: Path,
    *,
    layer: str | None = None,
    transpose: bool = False,
    make_unique: bool = False,
):
    """Read a count matrix into an AnnData (cells x genes, CSR float32).

    Parameters
    ----------
    path
        Input file or 10x folder.
    layer
        For ``.h5ad`` only: read counts from ``layers[layer]`` instead of X.
    transpose
        For tables only: the file is genes x cells.
    make_unique
        Make duplicate gene names unique (``GENE``, ``GENE-1``) instead of failing.
    """
    import anndata as ad
    import scanpy as sc

    path = Path(path)
    fmt = detect_format(path)
    try:
        if fmt == "h5ad":
            adata = ad.read_h5ad(path)
        elif fmt == "10x_h5":
            adata = sc.read_10x_h5(path)
        elif fmt == "10x_mtx":
            adata = sc.read_10x_mtx(path, make_unique=False, cache=False)
        else:
            import pandas as pd

            sep = "," if ".csv" in path.name.lower() else "\t"
            df = pd.read_csv(path, sep=sep, index_col=0)
            if transpose:
                df = df.T
            non_numeric = [c for c, t in df.dtypes.items() if not np.issubdtype(t, np.number)]
            if non_numeric:
                raise GarageError(
                    f"table {path.name} has non-numeric columns, e.g. {non_numeric[:3]}",
                    "the first column must hold cell names and the others numbers "
                    "(use --transpose for genes x cells)",
                )
            adata = ad.AnnData(
                X=sp.csr_matrix(df.to_numpy(dtype=np.float32)),
                obs=pd.DataFrame(index=df.index.astype(str)),
                var=pd.DataFrame(index=df.columns.astype(str)),
            )
    except GarageError:
        raise
    except Exception as exc:  # corrupt/truncated files surface as many types
        raise GarageError(
            f"could not read {path.name} as {fmt}: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}",
            "check that the file is complete and in the stated format",
        ) from None

    if layer is not None:
        if fmt != "h5ad":
            raise GarageError("--layer only applies to .h5ad input", "drop --layer")
        if layer not in adata.layers:
            raise GarageError(
                f"layer {layer!r} not found in {path.name} (layers: {list(adata.layers)})",
                "pass an existing --layer or omit it to use X",
            )
        adata.X = adata.layers[layer]
    # keep nothing but the counts and annotations: layers/obsm from the input
    # would otherwise be carried around and subset with every step
    adata = ad.AnnData(X=adata.X, obs=adata.obs.copy(), var=adata.var.copy())
    if make_unique:
        adata.var_names_make_unique()
    return adata


def validate_counts(adata, *, source: str = "input") -> None:
    """Fail unless ``adata.X`` looks like raw counts: finite, >= 0, integer-like, non-empty."""
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise GarageError(
            f"{source} is an empty matrix ({adata.n_obs} cells x {adata.n_vars} genes)",
            "provide a matrix with cells and genes",
        )
    dup = adata.var_names[adata.var_names.duplicated()]
    if len(dup):
        raise GarageError(
            f"{source} has {len(dup)} duplicate gene names, e.g. {list(dup[:3])}",
            "make them unique (--make-unique) or aggregate them before running",
        )
    dup_cells = adata.obs_names[adata.obs_names.duplicated()]
    if len(dup_cells):
        raise GarageError(
            f"{source} has {len(dup_cells)} duplicate cell names, e.g. {list(dup_cells[:3])}",
            "give every cell (barcode) a unique name, e.g. prefix barcodes with the sample id",
        )
    X = adata.X
    data = X.data if sp.issparse(X) else np.asarray(X).ravel()
    if data.size == 0:
        raise GarageError(f"{source} has no non-zero counts", "provide a count matrix")
    data = np.asarray(data)
    if not np.issubdtype(data.dtype, np.number):
        raise GarageError(f"{source} counts are not numeric ({data.dtype})", "provide numeric counts")
    if not np.all(np.isfinite(data)):
        n = int((~np.isfinite(data)).sum())
        raise GarageError(
            f"{source} counts contain {n} NaN/inf values", "provide raw integer counts without missing values"
        )
    if data.min() < 0:
        raise GarageError(
            f"{source} counts contain negative values (min {data.min():g})",
            "provide raw UMI/read counts, not scaled or centred data",
        )
    frac = np.abs(data - np.round(data))
    if frac.max() > 1e-3:
        raise GarageError(
            f"{source} values are not integer counts (e.g. {data[np.argmax(frac)]:g}); "
            "this looks like normalised or log-transformed data",
            "provide raw counts (use --layer to pick a counts layer in an .h5ad)",
        )
