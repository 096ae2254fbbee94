"""Preprocess on real data, and the bad-input table for the preprocess CLI."""

from __future__ import annotations

import gzip
import hashlib
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from garage import constants as C
from garage.errors import GarageError, ResourceError
from garage.preprocess import PreprocessConfig, preprocess_adata, stratified_split

GARAGE = [sys.executable, "-m", "garage.cli"]


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file():
                h.update(p.read_bytes())
    else:
        h.update(path.read_bytes())
    return h.hexdigest()


# ---------------------------------------------------------------- real data
@pytest.fixture(scope="module")
def pp(preprocessed_small):
    return ad.read_h5ad(preprocessed_small)


def test_keeps_every_rare_type_and_all_cells(pp, small_counts_path):
    raw = ad.read_h5ad(small_counts_path)
    assert pp.n_obs == raw.n_obs  # defaults keep a clean 10x dataset intact
    counts = pp.obs[C.OBS_LABEL].value_counts()
    assert counts["DC"] == 32 and counts["Platelet"] == 14
    assert set(counts.index) == set(raw.obs["cell_type"].unique())


def test_split_is_stratified(pp):
    tab = pd.crosstab(pp.obs[C.OBS_LABEL], pp.obs[C.OBS_SPLIT])
    frac = tab[C.SPLIT_HOLDOUT] / tab.sum(axis=1)
    assert (tab[C.SPLIT_TRAIN] >= 1).all() and (tab[C.SPLIT_HOLDOUT] >= 1).all()
    assert np.allclose(frac, 0.2, atol=0.04), frac.to_dict()  # rounding on 14 cells


def test_graph_symmetric_with_right_degree(pp):
    A = pp.obsp[C.OBSP_CONNECTIVITIES]
    assert sp.issparse(A)
    assert abs(A - A.T).max() < 1e-6
    assert A.diagonal().sum() == 0
    deg = np.diff(A.tocsr().indptr)
    k = pp.uns[C.UNS_KEY]["n_neighbors"]
    assert deg.min() >= k - 1  # every cell keeps its k-1 nearest neighbours
    assert np.median(deg) < 3 * k  # and the graph stays sparse


def test_documented_keys_and_normalisation(pp):
    from garage._norm import log_normalize

    assert pp.n_vars == 2000 and pp.var[C.VAR_HVG].all()
    assert C.LAYER_COUNTS in pp.layers and C.OBSM_PCA in pp.obsm
    assert pp.obsm[C.OBSM_PCA].shape == (pp.n_obs, 50)
    for key in (C.OBS_LABEL, C.OBS_SPLIT, C.OBS_LIBSIZE):
        assert key in pp.obs
    u = pp.uns[C.UNS_KEY]
    assert u["label_source"] == "obs:cell_type" and u["seed"] == 0 and "scanpy" in u["versions"]
    counts = pp.layers[C.LAYER_COUNTS]
    assert np.allclose(counts.data, np.round(counts.data))
    assert np.allclose(log_normalize(counts).toarray(), pp.X.toarray(), atol=1e-5)
    # the full-gene library size is at least the HVG total
    assert (pp.obs[C.OBS_LIBSIZE].to_numpy() >= np.asarray(counts.sum(1)).ravel() - 1e-3).all()


def test_deterministic(small_counts_path):
    raw = ad.read_h5ad(small_counts_path)[:400].copy()
    cfg = PreprocessConfig(label_key="cell_type", n_top_genes=500, seed=3)
    a, b = preprocess_adata(raw, cfg), preprocess_adata(raw, cfg)
    assert (a.obs[C.OBS_SPLIT] == b.obs[C.OBS_SPLIT]).all()
    assert np.allclose(np.abs(a.obsm[C.OBSM_PCA]), np.abs(b.obsm[C.OBSM_PCA]), atol=1e-4)


def test_stratified_split_singletons_stay_in_train():
    labels = pd.Series(["a"] * 10 + ["b"] * 2 + ["c"])
    split = stratified_split(labels, 0.2, seed=0)
    assert split[-1] == C.SPLIT_TRAIN
    assert (split[10:12] == C.SPLIT_HOLDOUT).sum() == 1
    assert (split[:10] == C.SPLIT_HOLDOUT).sum() == 2


def test_leiden_labels_without_label_key(pbmc68k_counts_path):
    raw = ad.read_h5ad(pbmc68k_counts_path)
    out = preprocess_adata(raw, PreprocessConfig(label_key=None, n_top_genes=500))
    assert out.uns[C.UNS_KEY]["label_source"] == C.LABEL_SOURCE_LEIDEN
    assert out.obs[C.OBS_LABEL].nunique() >= 3
    assert out.obs[C.OBS_LABEL].astype(str).str.startswith("leiden_").all()


def test_pbmc68k_keeps_rare_bulk_labels(preprocessed_68k):
    a = ad.read_h5ad(preprocessed_68k)
    vc = a.obs[C.OBS_LABEL].value_counts()
    assert vc["CD34+"] == 13 and vc["CD4+/CD45RA+/CD25- Naive T"] == 8
    assert a.n_vars == 765  # fewer genes than n_top_genes: all kept


# ------------------------------------------------------------------ formats
def _toy_counts(n_cells=60, n_genes=80, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.poisson(2.0, size=(n_cells, n_genes)).astype(np.float32)
    obs = pd.DataFrame(
        {"ct": np.where(np.arange(n_cells) % 3 == 0, "A", "B")},
        index=[f"c{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(index=[f"g{j}" for j in range(n_genes)])
    return ad.AnnData(X=sp.csr_matrix(X), obs=obs, var=var)


def _write_10x_h5(a, path):
    """A Cell Ranger v3 .h5 (genes x cells CSC, i.e. cells x genes CSR) of *a*."""
    import h5py

    X = sp.csr_matrix(a.X)
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g["data"] = X.data.astype(np.int32)
        g["indices"] = X.indices.astype(np.int64)
        g["indptr"] = X.indptr.astype(np.int64)
        g["shape"] = np.array([a.n_vars, a.n_obs], dtype=np.int32)
        g["barcodes"] = np.array(a.obs_names, dtype="S")
        feat = g.create_group("features")
        feat["id"] = np.array(a.var_names, dtype="S")
        feat["name"] = np.array(a.var_names, dtype="S")
        feat["feature_type"] = np.array([b"Gene Expression"] * a.n_vars)
        feat["genome"] = np.array([b"GRCh38"] * a.n_vars)
        feat["_all_tag_keys"] = np.array([b"genome"])


FORMATS = ["csv", "tsv.gz", "csv_transposed", "mtx", "h5ad_layer", "h5ad_dense", "h5ad_csc", "10x_h5"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_reads_every_format_sparse(tmp_path, fmt):
    """Every format comes back as CSR float32 with the right values; the shape and
    stored values known from metadata (for the pre-flight estimate) match."""
    from garage.io import inspect_counts, read_counts

    a = _toy_counts()
    df = pd.DataFrame(a.X.toarray(), index=a.obs_names, columns=a.var_names)
    kwargs = {}
    if fmt == "csv":
        p = tmp_path / "x.csv"
        df.to_csv(p)
    elif fmt == "tsv.gz":
        p = tmp_path / "x.tsv.gz"
        df.to_csv(p, sep="\t", compression="gzip")
    elif fmt == "csv_transposed":
        p = tmp_path / "x.csv"
        df.T.to_csv(p)
        kwargs["transpose"] = True
    elif fmt == "mtx":
        import scipy.io

        p = tmp_path / "mtx"
        p.mkdir()
        scipy.io.mmwrite(p / "matrix.mtx", sp.csr_matrix(a.X.T.astype(np.int64)))
        pd.DataFrame({"id": a.var_names, "name": a.var_names, "t": "Gene Expression"}).to_csv(
            p / "features.tsv", sep="\t", header=False, index=False)
        pd.Series(a.obs_names).to_csv(p / "barcodes.tsv", sep="\t", header=False, index=False)
        for f in ("matrix.mtx", "features.tsv", "barcodes.tsv"):
            with open(p / f, "rb") as src, gzip.open(p / (f + ".gz"), "wb") as dst:
                dst.write(src.read())
            (p / f).unlink()
    elif fmt == "h5ad_layer":
        b = a.copy()
        b.layers["raw"] = b.X.copy()
        b.X = sp.csr_matrix(np.log1p(b.X.toarray()))
        p = tmp_path / "x.h5ad"
        b.write_h5ad(p)
        kwargs["layer"] = "raw"
    elif fmt == "h5ad_dense":
        p = tmp_path / "x.h5ad"
        ad.AnnData(X=a.X.toarray().astype(np.float64), obs=a.obs, var=a.var).write_h5ad(p)
    elif fmt == "h5ad_csc":
        p = tmp_path / "x.h5ad"
        ad.AnnData(X=sp.csc_matrix(a.X), obs=a.obs, var=a.var).write_h5ad(p)
    else:
        p = tmp_path / "x.h5"
        _write_10x_h5(a, p)
    before = _sha(p)
    got = read_counts(p, **kwargs)
    assert isinstance(got.X, sp.csr_matrix) and got.X.dtype == np.float32
    assert got.shape == a.shape
    assert list(got.var_names) == list(a.var_names)
    assert list(got.obs_names) == list(a.obs_names)
    assert np.array_equal(got.X.toarray(), a.X.toarray())
    if fmt.startswith("h5ad") and fmt != "h5ad_layer":
        assert list(got.obs["ct"]) == list(a.obs["ct"])
    info = inspect_counts(p, **kwargs)
    if fmt in ("mtx", "h5ad_layer", "h5ad_csc", "10x_h5"):
        assert (info.n_obs, info.n_vars, info.nnz) == (a.n_obs, a.n_vars, a.X.nnz)
    elif fmt == "h5ad_dense":
        assert (info.n_obs, info.n_vars, info.dense) == (a.n_obs, a.n_vars, True)
        assert info.nnz == pytest.approx(a.X.nnz, rel=0.05)  # estimated from sampled rows
    assert _sha(p) == before  # inputs are only read


def _peak_alloc(fn):
    import tracemalloc

    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("fmt", ["h5ad_dense", "csv"])
def test_dense_inputs_read_without_a_dense_copy(tmp_path, small_counts_path, monkeypatch, fmt):
    """A dense-X .h5ad and a csv (real PBMC cells, all genes) are read chunk by chunk
    into CSR: peak allocations stay far below one dense float32 copy of the matrix."""
    from garage import io

    real = ad.read_h5ad(small_counts_path)
    real = real[: 1083 if fmt == "h5ad_dense" else 300].copy()
    dense = np.asarray(real.X.toarray(), dtype=np.float64)
    if fmt == "h5ad_dense":
        p = tmp_path / "dense.h5ad"
        ad.AnnData(X=dense, obs=real.obs, var=real.var).write_h5ad(p)
    else:
        p = tmp_path / "cells.csv"
        pd.DataFrame(dense.astype(np.int64), index=real.obs_names, columns=real.var_names).to_csv(p)
    del dense
    dense_f32 = real.n_obs * real.n_vars * 4
    monkeypatch.setattr(io, "CHUNK_VALUES", 1 << 18)  # small chunks, as a large file would see
    got, peak = _peak_alloc(lambda: io.read_counts(p))
    assert isinstance(got.X, sp.csr_matrix) and got.X.dtype == np.float32
    assert (got.X != sp.csr_matrix(real.X, dtype=np.float32)).nnz == 0
    assert peak < dense_f32 / 3, f"peak {peak / 2**20:.1f} MB vs dense {dense_f32 / 2**20:.1f} MB"


def test_preprocess_leaves_the_input_untouched(small_counts_path):
    raw = ad.read_h5ad(small_counts_path)[:300].copy()
    X = raw.X
    ref = X.copy()
    obs_cols = list(raw.obs.columns)
    out = preprocess_adata(raw, PreprocessConfig(label_key="cell_type", n_top_genes=300))
    assert raw.X is X and (X != ref).nnz == 0 and X.dtype == ref.dtype
    assert list(raw.obs.columns) == obs_cols and raw.n_vars == ref.shape[1]
    assert out.layers[C.LAYER_COUNTS].shape == (300, 300)


def test_memory_preflight_stops_before_reading(tmp_path, small_counts_path):
    """Told the machine has 50 MB, preprocess refuses with the estimate and advice,
    before reading (so in well under a second) and without writing anything."""
    import time

    from garage.preprocess import check_memory, estimate_memory_bytes, run_preprocess

    cfg = PreprocessConfig(label_key="cell_type")
    t0 = time.perf_counter()
    with pytest.raises(ResourceError, match=r"needs about .* GB \(peak while .*\), more than the available memory") as e:
        run_preprocess(small_counts_path, tmp_path / "out", "x", cfg, available_bytes=50 << 20)
    assert time.perf_counter() - t0 < 5
    assert "node with at least" in str(e.value)
    assert not any((tmp_path / "out").iterdir())
    with pytest.raises(GarageError, match="--max-memory-gb"):
        check_memory(1000, 2000, 10**6, PreprocessConfig(max_memory_gb=0.01))
    # linear in cells: 1,000,000 PBMC-like cells fit the 24 GB machine, 10x more cells ~10x memory
    one_m = estimate_memory_bytes(10**6, 13_713, 787 * 10**6, PreprocessConfig())
    assert one_m < 20 * 2**30
    ten_m = estimate_memory_bytes(10**7, 13_713, 787 * 10**7, PreprocessConfig())
    assert 8 < ten_m / one_m < 10.5


def test_device_auto_is_the_default_and_resolves_to_cpu_here():
    import torch

    from garage._utils import resolve_device
    from garage.cli import main

    for name in ("gat", "gan", "generate", "run"):
        cmd = main.get_command(None, name)
        (opt,) = [p for p in cmd.params if p.name == "device"]
        assert opt.default == "auto", name
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: auto resolves to cuda")
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(ResourceError, match="no CUDA GPU"):  # exit 3: retried, maybe on a GPU node
        resolve_device("cuda")


# -------------------------------------------------------- bad input (CLI)
def _write(adata, path):
    adata.write_h5ad(path)
    return path


#: cases that also run as a fresh `python -m garage.cli` (the unreadable-HDF5 paths, where C
#: libraries write, and the exit-3 path)
CONSOLE_CASES = {"truncated_h5ad", "garbage_h5ad", "too_little_memory"}


def _bad_cases(tmp: Path, small: Path):
    base = ad.read_h5ad(small)[:300].copy()
    cases = {}

    def mk(name, fn, args=("--label-key", "cell_type"), expect="", suffix=".h5ad", code=2):
        p = tmp / f"{name}{suffix}"
        fn(p)
        cases[name] = (p, list(args), expect, code)

    def mod(f):
        def w(p):
            a = base.copy()
            f(a)
            _write(a, p)
        return w

    def non_integer(a):
        a.X = a.X.astype(np.float32) * 1.5
    mk("non_integer", mod(non_integer), expect="not integer counts")

    def negative(a):
        a.X = a.X.tocsr(); a.X.data[0] = -3
    mk("negative", mod(negative), expect="negative")

    def nan(a):
        a.X = a.X.tocsr(); a.X.data[5] = np.nan
    mk("nan", mod(nan), expect="NaN/inf")

    def inf(a):
        a.X = a.X.tocsr(); a.X.data[5] = np.inf
    mk("inf", mod(inf), expect="NaN/inf")

    def normalised(a):
        a.X = sp.csr_matrix(np.log1p(a.X.toarray() / a.X.sum(1).A * 1e4))
    mk("normalised", mod(normalised), expect="normalised or log-transformed")

    mk("empty", lambda p: _write(base[:0].copy(), p), expect="empty matrix")
    mk("qc_removes_all", lambda p: _write(base.copy(), p),
       args=("--label-key", "cell_type", "--min-genes", "100000"), expect="no cells left after QC")
    mk("one_cell", lambda p: _write(base[:1].copy(), p), expect="GARAGE needs at least 10")

    def one_type(a):
        a.obs["cell_type"] = "T"
    mk("one_type", mod(one_type), expect="only one cell type")

    def dup_genes(a):
        names = list(a.var_names); names[1] = names[0]; a.var_names = names
    mk("duplicate_genes", mod(dup_genes), expect="duplicate gene names")

    def dup_cells(a):
        names = list(a.obs_names); names[1] = names[0]; a.obs_names = names
    mk("duplicate_cells", mod(dup_cells), expect="duplicate cell names")

    mk("missing_label_key", lambda p: _write(base.copy(), p),
       args=("--label-key", "no_such_column"), expect="not a column of obs")

    def nan_labels(a):
        lab = a.obs["cell_type"].astype(object); lab.iloc[:4] = np.nan
        a.obs["cell_type"] = lab
    mk("nan_labels", mod(nan_labels), expect="missing/empty labels")

    def empty_labels(a):
        lab = a.obs["cell_type"].astype(str); lab.iloc[:4] = ""
        a.obs["cell_type"] = lab
    mk("empty_labels", mod(empty_labels), expect="missing/empty labels")

    def truncated(p):
        data = small.read_bytes()
        p.write_bytes(data[: len(data) // 3])
    mk("truncated_h5ad", truncated, expect="could not read")

    mk("garbage_h5ad", lambda p: p.write_bytes(b"this is not hdf5" * 100), expect="could not read")
    mk("wrong_format", lambda p: p.write_text("%PDF-1.4"), suffix=".pdf", expect="unsupported input format")
    mk("non_numeric_table", lambda p: p.write_text("cell,g1,g2\nc1,1,x\nc2,3,4\n"),
       suffix=".csv", expect="non-numeric")
    mk("missing_layer", lambda p: _write(base.copy(), p),
       args=("--label-key", "cell_type", "--layer", "nope"), expect="layer 'nope' not found")
    mk("mtx_folder_without_matrix", lambda p: p.mkdir(), suffix="_dir", expect="without matrix.mtx")
    # not a bad input: not enough memory is exit 3 (the pipeline retries with more)
    mk("too_little_memory", lambda p: _write(base.copy(), p),
       args=("--label-key", "cell_type", "--max-memory-gb", "0.01"), expect="needs about", code=3)
    return cases


def test_bad_inputs_fail_cleanly(tmp_path, small_counts_path, cli_in_process, cli_console):
    """Every bad input: exit 2 (3 for too little memory), one `Error:` line naming the problem,
    no traceback, no output, input unchanged.  The cases run in-process (conftest.cli_in_process);
    CONSOLE_CASES also run as `python -m garage.cli`, which must give the same exit code and line."""
    cases = _bad_cases(tmp_path, small_counts_path)
    assert len(cases) >= 18 and CONSOLE_CASES <= set(cases)
    failures = []
    for name, (path, args, expect, code) in cases.items():
        before = _sha(path)
        out = tmp_path / f"out_{name}"
        argv = ["preprocess", "--input", str(path), "--prefix", name, "--outdir", str(out), *args]
        runs = [("in-process", cli_in_process(argv))]
        if name in CONSOLE_CASES:
            runs.append(("console", cli_console(argv)))
        problems = []
        for how, res in runs:
            err_lines = [ln for ln in res.stderr.splitlines() if ln.startswith("Error:")]
            if res.exit_code != code:
                problems.append(f"{how}: exit {res.exit_code}")
            if len(err_lines) != 1 or expect not in err_lines[0]:
                problems.append(f"{how}: stderr={res.stderr.strip()[-300:]!r}")
            if "Traceback" in res.stderr:
                problems.append(f"{how}: traceback")
            if res.exception is not None and not isinstance(res.exception, SystemExit):
                problems.append(f"{how}: uncaught {type(res.exception).__name__}")
            if out.exists() and any(out.iterdir()):
                problems.append(f"{how}: left files {list(out.iterdir())}")
            if _sha(path) != before:
                problems.append(f"{how}: input modified")
        if problems:
            failures.append((name, problems))
    assert not failures, failures


def test_unwritable_outdir(tmp_path, small_counts_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    proc = subprocess.run(
        [*GARAGE, "preprocess", "--input", str(small_counts_path), "--prefix", "x",
         "--outdir", str(blocker / "sub"), "--label-key", "cell_type"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().startswith("Error: cannot create output directory")
    assert "Traceback" not in proc.stderr


def test_singleton_type_is_kept_and_reported(small_counts_path):
    a = ad.read_h5ad(small_counts_path)
    plate = np.flatnonzero(a.obs["cell_type"] == "Platelet")
    a = a[np.setdiff1d(np.arange(a.n_obs), plate[1:])].copy()  # 1 platelet left
    out = preprocess_adata(a, PreprocessConfig(label_key="cell_type", n_top_genes=500))
    assert list(out.uns[C.UNS_KEY]["singleton_types"]) == ["Platelet"]
    assert out.obs.loc[out.obs[C.OBS_LABEL] == "Platelet", C.OBS_SPLIT].tolist() == [C.SPLIT_TRAIN]


def test_config_validation():
    with pytest.raises(GarageError, match="holdout"):
        preprocess_adata(_toy_counts(), PreprocessConfig(label_key="ct", holdout_fraction=1.5))
