"""Shared benchmark helpers: resampled large inputs and child-process measurement.

Peak memory is the child's max RSS (``resource.getrusage(RUSAGE_CHILDREN)``
read in a fresh wrapper process, so each measurement is of one command only).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PBMC3K = REPO.parent / "shared" / "data" / "pbmc3k.h5ad"
RESULTS = REPO / "bench" / "results"
WORK = REPO / "bench" / "_work"

_WRAPPER = r"""
import resource, subprocess, sys, time, json
t0 = time.perf_counter()
rc = subprocess.call(sys.argv[1:])
wall = time.perf_counter() - t0
peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"rc": rc, "wall_s": wall, "peak_mb": peak_kb / 1024}))
"""


def measure(cmd: list[str], env: dict | None = None) -> dict:
    """Run *cmd*; return rc, wall seconds and peak RSS (MB) of that command alone."""
    proc = subprocess.run(
        [sys.executable, "-c", _WRAPPER, *map(str, cmd)],
        stdout=subprocess.PIPE, text=True, env=env or os.environ.copy(),
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _resample_plan(src: Path, n_cells: int, seed: int):
    import anndata as ad
    import scipy.sparse as sp

    a = ad.read_h5ad(src)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.n_obs, size=n_cells)
    return a, sp.csr_matrix(a.X), rng, idx


def _thin(X, rng, thin: float):
    X.data = rng.binomial(X.data.astype(np.int64), thin).astype(np.float32)
    X.eliminate_zeros()
    return X


def _resampled_obs(a, idx, start: int = 0):
    obs = a.obs.iloc[idx].copy()
    obs.index = [f"cell{i}" for i in range(start, start + len(idx))]
    return obs


def resample_counts(src: Path, n_cells: int, seed: int = 0, thin: float = 0.9):
    """A larger real-like dataset: cells drawn with replacement, counts binomially thinned.

    Thinning keeps every resampled cell distinct while preserving each type's
    expression profile; labels travel with the cells.  In memory; for large
    sizes use :func:`write_resampled`, which writes the same cells chunk by chunk.
    """
    import anndata as ad

    a, X, rng, idx = _resample_plan(src, n_cells, seed)
    return ad.AnnData(X=_thin(X[idx], rng, thin), obs=_resampled_obs(a, idx), var=a.var.copy())


def write_resampled(src: Path, n_cells: int, path: Path, seed: int = 0, thin: float = 0.9,
                    chunk: int = 50_000) -> Path:
    """Write ``resample_counts(src, n_cells, seed, thin)`` to *path*, chunk by chunk.

    The same random stream is consumed in the same order, so the file holds
    exactly the cells :func:`resample_counts` returns, but memory stays bounded
    by one chunk (1,000,000 cells x 13,714 genes is ~6 GB of CSR in memory, and
    the in-memory version needs ~3x that).  X is CSR float32 with int32 indices,
    written to a temporary name and renamed.
    """
    import anndata as ad
    import h5py

    a, X, rng, idx = _resample_plan(src, n_cells, seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    obs = _resampled_obs(a, idx)
    ad.AnnData(obs=obs, var=a.var.copy()).write_h5ad(tmp)  # obs/var/uns layout, no X yet
    with h5py.File(tmp, "a") as f:
        g = f.create_group("X")
        g.attrs["encoding-type"] = "csr_matrix"
        g.attrs["encoding-version"] = "0.1.0"
        g.attrs["shape"] = np.array([n_cells, a.n_vars], dtype=np.int64)
        data = g.create_dataset("data", shape=(0,), maxshape=(None,), dtype=np.float32,
                                chunks=(1 << 20,))
        indices = g.create_dataset("indices", shape=(0,), maxshape=(None,), dtype=np.int32,
                                   chunks=(1 << 20,))
        indptr = np.zeros(n_cells + 1, dtype=np.int64)
        nnz = 0
        for start in range(0, n_cells, chunk):
            part = _thin(X[idx[start:start + chunk]], rng, thin)
            k = part.nnz
            data.resize((nnz + k,))
            indices.resize((nnz + k,))
            data[nnz:nnz + k] = part.data
            indices[nnz:nnz + k] = part.indices.astype(np.int32)
            indptr[start + 1:start + 1 + part.shape[0]] = nnz + part.indptr[1:]
            nnz += k
        g.create_dataset("indptr", data=indptr)
    os.replace(tmp, path)
    return path


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def write_result(name: str, rows: list[dict], command: str) -> Path:
    """Write bench/results/NAME.json and NAME.md (a table plus the command)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"command": command, "machine": machine(), "rows": rows}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2))
    cols = list(rows[0]) if rows else []
    md = [f"# {name}", "", f"Command: `{command}`", "",
          f"Machine: {payload['machine']}", "",
          "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        md.append("| " + " | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    (RESULTS / f"{name}.md").write_text("\n".join(md) + "\n")
    return RESULTS / f"{name}.md"
