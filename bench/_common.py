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


def resample_counts(src: Path, n_cells: int, seed: int = 0, thin: float = 0.9):
    """A larger real-like dataset: cells drawn with replacement, counts binomially thinned.

    Thinning keeps every resampled cell distinct while preserving each type's
    expression profile; labels travel with the cells.
    """
    import anndata as ad
    import scipy.sparse as sp

    a = ad.read_h5ad(src)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.n_obs, size=n_cells)
    X = sp.csr_matrix(a.X)[idx]
    X.data = rng.binomial(X.data.astype(np.int64), thin).astype(np.float32)
    X.eliminate_zeros()
    obs = a.obs.iloc[idx].copy()
    obs.index = [f"cell{i}" for i in range(n_cells)]
    return ad.AnnData(X=X, obs=obs, var=a.var.copy())


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
