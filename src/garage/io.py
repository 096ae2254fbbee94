"""Reading count matrices in the formats users bring, sparse, with clear errors.

Supported: ``.h5ad`` (counts in X or a named layer), 10x ``.h5``, a 10x
matrix folder (``matrix.mtx[.gz]`` + barcodes + features/genes), and
``.csv``/``.tsv`` (optionally ``.gz``), cells x genes or genes x cells.

Every reader returns cells x genes as a CSR float32 matrix and never builds a
dense cells x genes array: ``.h5ad`` X or layers (sparse or dense) and tables
are read in row chunks straight into CSR, and only the matrix asked for is
read (other layers, ``obsm``, ``raw`` and ``uns`` are skipped).  Memory is
linear in the non-zero counts; :func:`inspect_counts` gives the shape and
number of stored values from the file's metadata, before anything is read, for
the pre-flight memory estimate.
"""

from __future__ import annotations

import gzip
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ._utils import progress
from .errors import GarageError

logger = logging.getLogger(__name__)

TABLE_SUFFIXES = (".csv", ".tsv", ".csv.gz", ".tsv.gz", ".txt", ".txt.gz")

#: values handled per chunk when reading or scanning (a few tens of MB of temporaries)
CHUNK_VALUES = 1 << 24


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


# ------------------------------------------------------------ shape probing
@dataclass(frozen=True)
class CountsInfo:
    """What a counts file holds, read from its metadata without loading it.

    ``nnz`` is the number of stored values of a sparse matrix; for a dense
    one (``dense``: its zeros are read and dropped chunk by chunk) it is the
    non-zeros estimated from a sample of rows.  ``csc``: stored by column and
    converted on reading.  Shape and ``nnz`` are ``None`` when the file must be
    read to know them (tables, unusual encodings).
    """

    fmt: str
    n_obs: int | None
    n_vars: int | None
    nnz: int | None
    dense: bool
    csc: bool = False


def _h5ad_node(f, layer: str | None):
    if layer is not None:
        layers = f.get("layers")
        if layers is None or layer not in layers:
            names = list(layers.keys()) if layers is not None else []
            raise GarageError(
                f"layer {layer!r} not found in {Path(f.filename).name} (layers: {names})",
                "pass an existing --layer or omit it to use X",
            )
        return layers[layer]
    if "X" not in f:
        raise GarageError(
            f"{Path(f.filename).name} has no X matrix",
            "store the counts in X, or pass --layer with the layer that holds them",
        )
    return f["X"]


def _node_kind(node) -> str:
    """``dense``, ``csr``, ``csc`` or ``other`` for an h5ad matrix node."""
    import h5py

    if isinstance(node, h5py.Dataset):
        return "dense" if node.ndim == 2 else "other"
    enc = node.attrs.get("encoding-type", node.attrs.get("h5sparse_format", ""))
    enc = enc.decode() if isinstance(enc, bytes) else str(enc)
    if enc in ("csr_matrix", "csr"):
        return "csr"
    if enc in ("csc_matrix", "csc"):
        return "csc"
    return "other"


def _node_shape(node) -> tuple[int, int]:
    import h5py

    if isinstance(node, h5py.Dataset):
        return int(node.shape[0]), int(node.shape[1])
    shape = node.attrs.get("shape", node.attrs.get("h5sparse_shape"))
    return int(shape[0]), int(shape[1])


def _dense_nnz_estimate(node, n_blocks: int = 8, block_values: int = 1 << 19) -> int:
    """Non-zeros of a dense h5 matrix, extrapolated from a few evenly spaced row blocks."""
    n_obs, n_vars = _node_shape(node)
    if n_obs == 0 or n_vars == 0:
        return 0
    rows = max(1, block_values // n_vars)
    starts = np.unique(np.linspace(0, max(0, n_obs - rows), n_blocks).astype(np.int64))
    seen = nz = 0
    for a in starts:
        block = node[int(a):int(a) + rows]
        seen += block.size
        nz += int(np.count_nonzero(block))
    return int(np.ceil(nz / max(1, seen) * n_obs * n_vars))


def _mtx_header(path: Path) -> tuple[int, int, int]:
    """``(rows, cols, entries)`` from a MatrixMarket header (genes x cells for 10x)."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt") as fh:
        for line in fh:
            if line.startswith("%") or not line.strip():
                continue
            rows, cols, entries = (int(v) for v in line.split()[:3])
            return rows, cols, entries
    raise ValueError("no size line")


def inspect_counts(path: Path, *, layer: str | None = None, transpose: bool = False) -> CountsInfo:
    """Shape and stored values of a counts input, from metadata only (cheap).

    Raises :class:`GarageError` for an unreadable file; tables give no shape
    without a full pass, so their ``n_obs``/``n_vars``/``nnz`` are ``None``.
    """
    import h5py

    path = Path(path)
    fmt = detect_format(path)
    try:
        if fmt == "h5ad":
            with h5py.File(path, "r") as f:
                node = _h5ad_node(f, layer)
                kind = _node_kind(node)
                if kind == "other":
                    return CountsInfo(fmt, None, None, None, False)
                n_obs, n_vars = _node_shape(node)
                if kind == "dense":
                    return CountsInfo(fmt, n_obs, n_vars, _dense_nnz_estimate(node), True)
                return CountsInfo(fmt, n_obs, n_vars, int(node["data"].shape[0]), False,
                                  csc=kind == "csc")
        if fmt == "10x_h5":
            with h5py.File(path, "r") as f:
                grp = f["matrix"] if "matrix" in f else f[next(iter(f.keys()))]
                n_vars, n_obs = (int(v) for v in grp["shape"][()][:2])
                return CountsInfo(fmt, n_obs, n_vars, int(grp["data"].shape[0]), False)
        if fmt == "10x_mtx":
            mtx = path / "matrix.mtx.gz" if (path / "matrix.mtx.gz").exists() else path / "matrix.mtx"
            n_vars, n_obs, nnz = _mtx_header(mtx)
            return CountsInfo(fmt, n_obs, n_vars, nnz, False)
    except GarageError:
        raise
    except Exception as exc:  # corrupt/truncated files surface as many types
        raise _unreadable(path, fmt, exc) from None
    return CountsInfo(fmt, None, None, None, True)


def _unreadable(path: Path, fmt: str, exc: Exception) -> GarageError:
    first = str(exc).splitlines()[0][:200] if str(exc) else ""
    return GarageError(
        f"could not read {path.name} as {fmt}: {type(exc).__name__}: {first}",
        "check that the file is complete and in the stated format",
    )


# ------------------------------------------------------------- CSR building
def _index_dtype(n: int):
    return np.int32 if n < np.iinfo(np.int32).max else np.int64


def as_csr32(X, *, what: str = "counts"):
    """*X* as CSR float32 without copying when it already is; dense in row chunks.

    A dense array is converted chunk by chunk, so the only full-size array is
    the caller's own.  Sparse input of another format or dtype is converted
    once (linear in its stored values).
    """
    if sp.issparse(X):
        if not (X.format == "csr" and isinstance(X, sp.csr_matrix)):
            X = sp.csr_matrix(X)
        itype = _index_dtype(max(X.shape[0], X.shape[1], X.nnz))
        if X.dtype == np.float32 and X.indices.dtype == itype:
            return X
        return sp.csr_matrix((X.data.astype(np.float32, copy=False),
                              X.indices.astype(itype, copy=False), X.indptr), shape=X.shape)
    X = np.asarray(X)
    if X.ndim != 2:
        raise GarageError(f"{what} is not a 2-d matrix (shape {X.shape})", "provide cells x genes counts")
    rows = max(1, CHUNK_VALUES // max(1, X.shape[1]))
    return _stack_csr((_dense_rows_to_csr(X[i:i + rows]) for i in range(0, X.shape[0], rows)),
                      X.shape[1])


def _dense_rows_to_csr(block) -> sp.csr_matrix:
    block = np.asarray(block)
    if block.dtype != np.float32:
        block = block.astype(np.float32)
    return sp.csr_matrix(block)


def _stack_csr(blocks, n_cols: int) -> sp.csr_matrix:
    """Concatenate CSR row blocks (the blocks and the result are the only copies)."""
    datas, idxs, counts = [], [], []
    for b in blocks:
        datas.append(b.data.astype(np.float32, copy=False))
        idxs.append(b.indices)
        counts.append(np.diff(b.indptr))
    if not counts:
        return sp.csr_matrix((0, n_cols), dtype=np.float32)
    nnz = sum(len(d) for d in datas)
    indptr = np.zeros(sum(len(c) for c in counts) + 1, dtype=np.int64 if nnz >= 2**31 else np.int32)
    np.cumsum(np.concatenate(counts), out=indptr[1:])
    data = np.concatenate(datas) if len(datas) > 1 else datas[0]
    del datas
    itype = _index_dtype(max(n_cols, nnz))
    indices = np.concatenate(idxs).astype(itype, copy=False) if len(idxs) > 1 \
        else idxs[0].astype(itype, copy=False)
    return sp.csr_matrix((data, indices, indptr), shape=(len(indptr) - 1, n_cols))


def _read_h5_sparse(node, kind: str, bar_desc: str) -> sp.csr_matrix:
    """An h5ad CSR/CSC group into CSR float32, reading data in chunks (no float64 copy)."""
    n_obs, n_vars = _node_shape(node)
    dset, iset = node["data"], node["indices"]
    nnz = int(dset.shape[0])
    data = np.empty(nnz, dtype=np.float32)
    indices = np.empty(nnz, dtype=_index_dtype(max(n_obs, n_vars, nnz)))
    step = CHUNK_VALUES
    with progress(total=nnz, desc=bar_desc, unit="val", unit_scale=True, leave=False) as bar:
        for a in range(0, nnz, step):
            b = min(nnz, a + step)
            data[a:b] = dset[a:b]
            indices[a:b] = iset[a:b]
            bar.update(b - a)
    indptr = node["indptr"][()]
    if kind == "csr":
        return sp.csr_matrix((data, indices, indptr), shape=(n_obs, n_vars))
    csc = sp.csc_matrix((data, indices, indptr), shape=(n_obs, n_vars))
    del data, indices
    return csc.tocsr()


def _read_h5_dense(node, bar_desc: str) -> sp.csr_matrix:
    """A dense h5ad matrix into CSR, a block of rows at a time."""
    n_obs, n_vars = _node_shape(node)
    rows = max(1, CHUNK_VALUES // max(1, n_vars))

    def blocks():
        with progress(total=n_obs, desc=bar_desc, unit="cell", unit_scale=True, leave=False) as bar:
            for a in range(0, n_obs, rows):
                b = min(n_obs, a + rows)
                yield _dense_rows_to_csr(node[a:b])
                bar.update(b - a)

    return _stack_csr(blocks(), n_vars)


def _read_h5ad(path: Path, layer: str | None):
    """X (or one layer) + obs + var of an .h5ad, sparse; nothing else is read."""
    import anndata as ad
    import h5py

    with h5py.File(path, "r") as f:
        node = _h5ad_node(f, layer)
        kind = _node_kind(node)
        obs = var = None
        if kind != "other":
            from anndata.io import read_elem

            try:
                obs, var = read_elem(f["obs"]), read_elem(f["var"])
            except Exception:  # an older layout of obs/var: anndata reads it below
                kind = "other"
        if kind != "other":
            desc = f"reading {path.name}"
            X = _read_h5_dense(node, desc) if kind == "dense" else _read_h5_sparse(node, kind, desc)
            return ad.AnnData(X=X, obs=obs, var=var)
    # an older or unusual encoding: let anndata read the whole file
    full = ad.read_h5ad(path)
    X = full.layers[layer] if layer is not None else full.X
    return ad.AnnData(X=as_csr32(X), obs=full.obs.copy(), var=full.var.copy())


def _table_blocks(path: Path, sep: str, rows: int):
    """Yield ``(columns, row_names, CSR block)`` for blocks of *rows* lines of a table.

    The first column holds the row names and the header the column names (with
    or without a field above the row names).  Each block of lines is parsed by
    numpy's C reader straight into float32, so memory is one block whatever the
    table's size (pandas' chunked reader costs more per block than the block
    itself on wide tables).
    """
    import csv

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", newline="") as fh:
        header = next(csv.reader([fh.readline()], delimiter=sep), [])
        columns = None
        names: list[str] = []
        lines: list[str] = []
        before = [0]  # data rows in earlier blocks

        def block():
            try:
                values = np.loadtxt(lines, delimiter=sep, dtype=np.float32, ndmin=2, quotechar='"')
            except ValueError:
                raise GarageError(
                    # rows, not names or values: this line can reach the shareable report
                    f"table {path.name} has non-numeric or empty values in data rows "
                    f"{before[0] + 1}-{before[0] + len(lines)}",
                    "the first column must hold cell names and the others numbers "
                    "(use --transpose for genes x cells)",
                ) from None
            if values.shape[1] != len(columns):
                raise GarageError(
                    f"table {path.name} has rows with {values.shape[1]} values but "
                    f"{len(columns)} column names",
                    "give every row a name and one value per column",
                )
            return _dense_rows_to_csr(values)

        for line in fh:
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            name, _, rest = line.partition(sep)
            if columns is None:  # header with or without a field above the row names
                n_values = rest.count(sep) + 1
                columns = header[1:] if len(header) == n_values + 1 else header
            names.append(name.strip().strip('"'))
            lines.append(rest)
            if len(lines) == rows:
                yield columns, names, block()
                before[0] += len(lines)
                names, lines = [], []
        if lines:
            yield columns, names, block()
        elif columns is None:
            yield header[1:], [], sp.csr_matrix((0, max(0, len(header) - 1)), dtype=np.float32)


def _read_table(path: Path, transpose: bool):
    """A csv/tsv table into CSR, a block of rows at a time (no dense full copy)."""
    import anndata as ad
    import pandas as pd

    sep = "," if ".csv" in path.name.lower() else "\t"
    with (gzip.open if path.name.lower().endswith(".gz") else open)(path, "rt") as fh:
        n_cols = max(1, fh.readline().count(sep))
    rows = max(1, CHUNK_VALUES // n_cols)
    names: list[str] = []
    columns: list[str] = []
    blocks = []
    with progress(desc=f"reading {path.name}", unit="row", unit_scale=True, leave=False) as bar:
        for cols, idx, block in _table_blocks(path, sep, rows):
            names.extend(idx)
            columns = cols
            blocks.append(block)
            bar.update(len(idx))
    X = _stack_csr(blocks, len(columns))
    del blocks
    row_names, col_names = pd.Index(names, dtype=object), pd.Index(columns, dtype=object)
    if transpose:
        X = X.T.tocsr()
        row_names, col_names = col_names, row_names
    return ad.AnnData(
        X=as_csr32(X),
        obs=pd.DataFrame(index=row_names.astype(str)),
        var=pd.DataFrame(index=col_names.astype(str)),
    )


def read_counts(
    path: Path,
    *,
    layer: str | None = None,
    transpose: bool = False,
    make_unique: bool = False,
):
    """Read a count matrix into an AnnData (cells x genes, CSR float32, sparse all the way).

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

    Returns an AnnData holding X, obs and var only.  The input is only read.
    """
    import anndata as ad
    import scanpy as sc

    path = Path(path)
    fmt = detect_format(path)
    if layer is not None and fmt != "h5ad":
        raise GarageError("--layer only applies to .h5ad input", "drop --layer")
    try:
        if fmt == "h5ad":
            adata = _read_h5ad(path, layer)
        elif fmt == "10x_h5":
            adata = sc.read_10x_h5(path)
        elif fmt == "10x_mtx":
            adata = sc.read_10x_mtx(path, make_unique=False, cache=False)
        else:
            adata = _read_table(path, transpose)
    except GarageError:
        raise
    except Exception as exc:  # corrupt/truncated files surface as many types
        raise _unreadable(path, fmt, exc) from None

    # keep nothing but the counts and annotations: layers/obsm from the input
    # would otherwise be carried around and subset with every step
    adata = ad.AnnData(X=as_csr32(adata.X), obs=adata.obs.copy(), var=adata.var.copy())
    if make_unique:
        adata.var_names_make_unique()
    return adata


def _data_chunks(X):
    """The stored values of *X* (sparse or dense), in chunks of at most CHUNK_VALUES."""
    if sp.issparse(X):
        data = X.data
        for a in range(0, data.size, CHUNK_VALUES):
            yield np.asarray(data[a:a + CHUNK_VALUES])
        return
    X = np.asarray(X)
    if X.ndim < 2:
        yield X.ravel()
        return
    rows = max(1, CHUNK_VALUES // max(1, X.shape[1]))
    for a in range(0, X.shape[0], rows):
        yield np.asarray(X[a:a + rows]).ravel()


def validate_counts(adata, *, source: str = "input") -> None:
    """Fail unless ``adata.X`` looks like raw counts: finite, >= 0, integer-like, non-empty.

    Scans the stored values in chunks, so the temporaries stay a few tens of MB
    whatever the size of the matrix.
    """
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
            # row numbers, not names: this message can reach the shareable report (sample status)
            f"{source} has {len(dup_cells)} duplicate cell names, e.g. at rows "
            f"{[int(i) + 1 for i in np.flatnonzero(adata.obs_names.duplicated())[:3]]} (1-based)",
            "give every cell (barcode) a unique name, e.g. prefix barcodes with the sample id",
        )
    X = adata.X
    dtype = X.dtype if hasattr(X, "dtype") else np.asarray(X).dtype
    if not np.issubdtype(dtype, np.number):
        raise GarageError(f"{source} counts are not numeric ({dtype})", "provide numeric counts")
    size = 0
    n_bad = 0
    vmin = np.inf
    worst, worst_frac = None, 0.0
    for data in _data_chunks(X):
        if data.size == 0:
            continue
        size += data.size
        finite = np.isfinite(data)
        if not finite.all():
            n_bad += int((~finite).sum())
            continue
        vmin = min(vmin, float(data.min()))
        frac = np.abs(data - np.round(data))
        i = int(np.argmax(frac))
        if frac[i] > worst_frac:
            worst, worst_frac = float(data[i]), float(frac[i])
    if size == 0:
        raise GarageError(f"{source} has no non-zero counts", "provide a count matrix")
    if n_bad:
        raise GarageError(
            f"{source} counts contain {n_bad} NaN/inf values", "provide raw integer counts without missing values"
        )
    if vmin < 0:
        raise GarageError(
            f"{source} counts contain negative values (min {vmin:g})",
            "provide raw UMI/read counts, not scaled or centred data",
        )
    if worst_frac > 1e-3:
        raise GarageError(
            f"{source} values are not integer counts (e.g. {worst:g}); "
            "this looks like normalised or log-transformed data",
            "provide raw counts (use --layer to pick a counts layer in an .h5ad)",
        )


def write_synthetic_chunked(path: Path, obs, var, blocks, n_vars: int, uns=None, *,
                            wide_index: bool = False) -> tuple[Path, dict]:
    """Write a ``PREFIX.synthetic.h5ad`` whose counts arrive as CSR row blocks, atomically.

    Memory stays bounded by one block: X is appended block by block with anndata's own
    sparse-dataset API (``anndata.io.write_elem`` then ``sparse_dataset(...).append``, gzip
    like the in-memory writer), and ``layers['counts']`` is an HDF5 hard link to X (the same
    data read twice, stored once).  *blocks* yields CSR blocks in row order whose rows add up
    to ``len(obs)``; it may return a dict (``StopIteration.value``), which is merged into
    *uns* (``uns['garage']``) before it is written, for summaries known only after the last
    block (e.g. how many cells were seeded).  Returns ``(path, that dict)``.  *wide_index*:
    int64 indptr and indices (the caller expects more than about 2**30 stored counts: an int32
    indptr could not be appended past 2**31); otherwise both stay int32, as scipy wants one
    index dtype for both.
    """
    import anndata as ad
    import h5py
    import pandas as pd
    from anndata.io import sparse_dataset, write_elem

    from . import constants as C
    from ._utils import atomic_path

    path = Path(path)
    n_obs = len(obs)
    with atomic_path(path) as tmp:
        ad.AnnData(obs=obs, var=pd.DataFrame(var).copy()).write_h5ad(tmp, compression="gzip")  # X after
        kw = {"compression": "gzip"}
        with h5py.File(tmp, "a") as f:
            rows, first, tail = 0, True, {}
            it = iter(blocks)
            while True:
                try:
                    block = next(it)
                except StopIteration as stop:
                    tail = stop.value or {}
                    break
                block = sp.csr_matrix(block, dtype=np.float32)
                if block.shape[1] != n_vars:
                    raise ValueError(f"a block has {block.shape[1]} genes, expected {n_vars}")
                if first:
                    if wide_index:
                        block.indptr = block.indptr.astype(np.int64)
                        block.indices = block.indices.astype(np.int64)
                    write_elem(f, "X", block, dataset_kwargs=kw)
                    first = False
                else:
                    sparse_dataset(f["X"]).append(block)
                rows += block.shape[0]
            if first:
                write_elem(f, "X", sp.csr_matrix((0, n_vars), dtype=np.float32), dataset_kwargs=kw)
            if rows != n_obs:
                raise ValueError(f"the blocks hold {rows} cells, obs has {n_obs}")
            if "layers" not in f:
                write_elem(f, "layers", {})
            f["layers"][C.LAYER_COUNTS] = f["X"]  # a hard link: one copy on disk
            g = dict(uns or {})
            g[C.UNS_KEY] = {**g.get(C.UNS_KEY, {}), **tail}
            if "uns" in f:
                del f["uns"]
            write_elem(f, "uns", g)
    return path, tail
