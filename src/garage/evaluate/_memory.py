"""Pre-flight memory estimate of ``garage evaluate`` (issue 17).

Read from the two files' HDF5 headers before anything is loaded, so a pair of
files that cannot fit stops at once with exit code 3 and advice, instead of
being killed by the kernel (or the scheduler) halfway through.

What evaluate holds while the shared space is built (``_space.build_space``): both
files as read (every array of the file, in
memory), one more copy of the real counts (split into train and holdout) and of
the synthetic counts (unless already float32 CSR), and the larger of the dense PCA
block (at most ``pca_max_cells`` cells x genes, with the solver's working copies)
and the PCA coordinates of every cell.  After that both files are dropped and every metric
works on bounded subsamples (``EvaluateConfig``): the counts copies, the coordinates
and a fixed working allowance.  The estimate is the larger of the two phases.

Checked against the peaks ``python -m bench.bench_evaluate`` measured (2026-12-03,
N real + N synthetic cells): 846 / 953 / 1,393 / 8,272 MB estimated against 845 / 922 /
1,155 / 8,164 MB measured at N = 10,000 / 30,000 / 100,000 / 1,000,000.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from .. import constants as C
from ..errors import ResourceError

logger = logging.getLogger(__name__)

GB = 1024**3
#: resident size of the interpreter with anndata, scikit-learn, leiden and UMAP loaded
BASE_BYTES = int(0.45 * GB)
#: metrics on bounded subsamples, the plots, and allocator slack
WORK_BYTES = int(0.35 * GB)
#: one Python string object per element of a variable-length string array (names, categories)
STR_BYTES = 64
#: per real or synthetic cell, what the parts below leave out (data frames, index and subsample
#: tables): calibrated, not derived; without it the estimate fell 6 % short of the measured peak at
#: 1,000,000 + 1,000,000 cells (7,700 vs 8,164 MB) and 4 MB short at 10,000 (bench/results/evaluate_scale.md)
PER_CELL_BYTES = 300
#: dense PCA block, bytes per value: the float32 block, its centred copy and a float64 margin
#: for the randomized solver's working arrays
PCA_BYTES_PER_VALUE = 16


@dataclass(frozen=True)
class H5adSize:
    """What reading one .h5ad costs, from its headers only."""

    loaded: int  # bytes of every array once read
    n_obs: int
    n_vars: int
    matrix: int  # bytes of the counts matrix evaluate copies (real: layers/counts; synthetic: X)
    matrix_is_f32_csr: bool = False  # already float32 CSR: building the space makes no copy
    var_names: frozenset = frozenset()
    obs_columns: frozenset = frozenset()


def _dataset_bytes(ds) -> int:
    import h5py

    if ds.dtype.kind in "OSU" or h5py.check_string_dtype(ds.dtype) is not None:
        return int(ds.size) * STR_BYTES
    return int(ds.size) * int(ds.dtype.itemsize)


def _element_bytes(obj) -> int:
    import h5py

    if isinstance(obj, h5py.Dataset):
        return _dataset_bytes(obj)
    # every path, not every object: a hard link (a synthetic file's layers/counts -> X) is read
    # into memory once per path, though visititems would see its object once
    return sum(_element_bytes(v) for v in obj.values())


def _index(group):
    """The dataset holding an obs/var group's index (names), or None."""
    name = group.attrs.get("_index", "_index")
    return group[name] if name in group else None


def _n_rows(group) -> int:
    index = _index(group)
    return int(index.shape[0]) if index is not None else 0


def h5ad_size(path: Path, matrix: str) -> H5adSize | None:
    """Sizes of *path* from its HDF5 headers; *matrix* is the counts element ('X' or
    'layers/counts').  None when the headers cannot be read (the reader then says why)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            loaded = _element_bytes(f)
            n_obs = _n_rows(f["obs"]) if "obs" in f else 0
            n_vars = _n_rows(f["var"]) if "var" in f else 0
            m = _element_bytes(f[matrix]) if matrix in f else 0
            f32_csr = bool(
                matrix in f and isinstance(f[matrix], h5py.Group)
                and str(f[matrix].attrs.get("encoding-type", "")) == "csr_matrix"
                and "data" in f[matrix] and f[matrix]["data"].dtype == "float32"
            )
            index = _index(f["var"])
            names = frozenset(
                v.decode() if isinstance(v, bytes) else str(v) for v in index[:]
            ) if index is not None else frozenset()
            columns = frozenset(f["obs"].keys()) if "obs" in f else frozenset()
    except Exception:  # not HDF5, truncated, unexpected layout: reading reports it in one line
        return None
    return H5adSize(loaded, n_obs, n_vars, m, f32_csr, names, columns)


def peak_bytes(parts: dict[str, int]) -> int:
    """The estimate from :func:`estimate_bytes`'s parts: the interpreter plus the larger of the two
    phases: building the space (both files, the counts copies, the PCA block or the coordinates)
    and the metrics (the counts copies and coordinates stay; the files are dropped)."""
    # the dense PCA block is freed before the coordinates are computed: the larger one counts
    build = parts["files as read"] + parts["counts copies"] + max(parts["PCA block"], parts["PCA coordinates"])
    # float64 coordinates of every cell stay (the float64 pair above is projection + result)
    metrics = parts["counts copies"] + parts["PCA coordinates"] // 2 + parts["metrics"]
    return int(parts["interpreter"] + parts["per-cell tables"] + max(build, metrics))


def estimate_bytes(real: H5adSize, synthetic: H5adSize, *, n_pcs: int, pca_max_cells: int,
                   pca_fit_fraction: float) -> dict[str, int]:
    """Bytes of one evaluation, by part; :func:`peak_bytes` turns them into the estimate."""
    fit_cells = min(int(pca_max_cells), int(pca_fit_fraction * real.n_obs) + 1)
    return {
        "interpreter": BASE_BYTES,
        "files as read": real.loaded + synthetic.loaded,
        # real counts: split into train and holdout (a copy); synthetic: converted to float32
        # CSR unless it already is (the GAN writes float32 CSR)
        "counts copies": real.matrix + (0 if synthetic.matrix_is_f32_csr else synthetic.matrix),
        "PCA block": PCA_BYTES_PER_VALUE * fit_cells * max(real.n_vars, 1),
        "PCA coordinates": 2 * 8 * (real.n_obs + synthetic.n_obs) * int(n_pcs),
        "metrics": WORK_BYTES,
        "per-cell tables": PER_CELL_BYTES * (real.n_obs + synthetic.n_obs),
    }


def check_memory(real_path: Path, synthetic_path: Path, *, n_pcs: int, pca_max_cells: int,
                 pca_fit_fraction: float, max_memory_gb: float | None = None,
                 available_bytes: int | None = None) -> int:
    """Raise a :class:`ResourceError` (exit 3) when the estimate exceeds the budget; return it
    (0 when a file's headers cannot be read: reading it then fails with the reason).

    The budget is *max_memory_gb* when given (all of it), else *available_bytes*, else 90 % of the
    available memory (capped by a container's or a scheduler job's cgroup limit)."""
    from ..preprocess import available_memory_bytes

    real = h5ad_size(real_path, f"layers/{C.LAYER_COUNTS}")
    synthetic = h5ad_size(synthetic_path, "X")
    if real is None or synthetic is None:
        logger.info("evaluate: no memory estimate (a file's headers could not be read)")
        return 0
    # a file the checks after reading will reject (not preprocessed, other genes) gets that
    # error (exit 2), not a memory refusal that a retry with more memory cannot cure
    needed = {C.OBS_LABEL, C.OBS_SPLIT}
    if not real.matrix or not needed <= real.obs_columns or real.var_names != synthetic.var_names:
        logger.info("evaluate: no memory estimate (the files do not match; reading reports why)")
        return 0
    parts = estimate_bytes(real, synthetic, n_pcs=n_pcs, pca_max_cells=pca_max_cells,
                           pca_fit_fraction=pca_fit_fraction)
    need = peak_bytes(parts)
    if max_memory_gb is not None:
        have, what = int(max_memory_gb * GB), "the --max-memory-gb budget"
    elif available_bytes is not None:
        have, what = int(available_bytes), "available memory"
    else:
        have, what = int(0.9 * available_memory_bytes()), "available memory"
    logger.info("evaluate: memory estimate %.2f GB for %d real and %d synthetic cells (%s: %.2f GB)",
                need / GB, real.n_obs, synthetic.n_obs, what, have / GB)
    if need > have:
        big = max((k for k in parts if k not in ("interpreter", "metrics")), key=parts.get)
        fixes = [f"run on a node with at least {need / GB:.1f} GB free"]
        if big == "PCA block":
            fixes.append(f"lower --pca-max-cells (now {pca_max_cells})")
        elif synthetic.loaded > real.loaded:
            fixes.append("generate fewer synthetic cells (garage generate --n-cells)")
        else:
            fixes.append("split the sample into smaller ones")
        if max_memory_gb is not None:
            fixes.append("or raise --max-memory-gb")
        raise ResourceError(
            f"evaluating {real.n_obs} real and {synthetic.n_obs} synthetic cells x {real.n_vars} genes "
            f"needs about {need / GB:.2f} GB (largest part that grows with the data: {big}, "
            f"{parts[big] / GB:.2f} GB), more than {what} ({have / GB:.2f} GB)",
            "; ".join(fixes),
        )
    return need
