"""Benchmark ``garage evaluate`` on 10,000 synthetic vs 10,000 real cells.

Builds the data from the real PBMC 3k file (../shared/data/pbmc3k.h5ad):

* real: 10,000 cells, each a Poisson resample of a randomly chosen PBMC 3k
  cell (types keep their real proportions, so DC and Platelet stay rare),
  preprocessed with ``garage preprocess`` (8,000 train / 2,000 holdout);
* synthetic: 10,000 cells, each a Poisson resample of a random *train* cell's
  HVG counts (no exact copies), labelled with that cell's type.

Then runs ``garage evaluate`` (default settings, plots on) in a child process
and records wall time, CPU time and peak memory (max RSS of the child) in
``bench/results/evaluate_10k.json``.

Usage::

    .venv/bin/python bench/bench_evaluate.py [--cells 10000] [--workdir /tmp/garage_bench_eval]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PBMC3K = REPO.parent / "shared" / "data" / "pbmc3k.h5ad"


def make_real(n_cells: int, seed: int):
    import anndata as ad
    import scipy.sparse as sp

    src = ad.read_h5ad(PBMC3K)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, src.n_obs, n_cells)
    X = sp.csr_matrix(src.X, dtype=np.float32)[pick]
    X.data = rng.poisson(X.data).astype(np.float32)
    X.eliminate_zeros()
    obs = src.obs.iloc[pick][["cell_type"]].copy()
    obs.index = [f"cell{i}" for i in range(n_cells)]
    return ad.AnnData(X=X, obs=obs, var=src.var[[]].copy())


def make_synthetic(pp_path: Path, n_cells: int, seed: int):
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    from garage import constants as C

    real = ad.read_h5ad(pp_path)
    train = np.flatnonzero(real.obs[C.OBS_SPLIT].astype(str) == C.SPLIT_TRAIN)
    rng = np.random.default_rng(seed + 1)
    pick = train[rng.integers(0, len(train), n_cells)]
    X = sp.csr_matrix(real.layers[C.LAYER_COUNTS], dtype=np.float32)[pick]
    X.data = rng.poisson(X.data).astype(np.float32)
    X.eliminate_zeros()
    obs = pd.DataFrame(
        {
            C.OBS_CELL_TYPE: pd.Categorical(real.obs[C.OBS_LABEL].astype(str).to_numpy()[pick]),
            C.OBS_SYNTHETIC: True,
            C.OBS_SEED_ID: real.obs_names[pick].astype(str),
        },
        index=[f"syn{i}" for i in range(n_cells)],
    )
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=real.var_names.copy()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/garage_bench_eval"))
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "evaluate_10k.json")
    ap.add_argument("extra", nargs="*", help="extra flags for garage evaluate (after --)")
    args = ap.parse_args()
    if not PBMC3K.exists():
        print(f"missing {PBMC3K}", file=sys.stderr)
        return 2
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)

    from garage.preprocess import PreprocessConfig, run_preprocess

    pp = work / "bench.preprocessed.h5ad"
    syn = work / "bench.synthetic.h5ad"
    t0 = time.perf_counter()
    if not pp.exists():
        raw = work / "bench.counts.h5ad"
        make_real(args.cells, args.seed).write_h5ad(raw)
        run_preprocess(raw, work, "bench", PreprocessConfig(label_key="cell_type", seed=args.seed))
    if not syn.exists():
        make_synthetic(pp, args.cells, args.seed).write_h5ad(syn)
    t_data = time.perf_counter() - t0

    cmd = [
        str(Path(sys.executable).with_name("garage")), "evaluate", "--real", str(pp),
        "--synthetic", str(syn), "--prefix", "bench", "--outdir", str(work / "evaluate"),
        "--seed", str(args.seed), *args.extra,
    ]
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        return proc.returncode
    metrics = json.loads((work / "evaluate" / "bench.garage_metrics.json").read_text())
    result = {
        "benchmark": "garage evaluate, 10k synthetic vs 10k real cells",
        "command": " ".join(cmd),
        "n_cells": metrics["n_cells"],
        "wall_s": round(wall, 1),
        "cpu_s": round(ru.ru_utime + ru.ru_stime, 1),
        "peak_rss_mb": round(ru.ru_maxrss / 1024, 1),  # Linux: KiB
        "stage_timings_s": metrics.get("timings_s", {}),
        "target_s": 120,
        "pass": wall < 120,
        "data_build_s": round(t_data, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
        },
        "metrics": {k: {"value": v["value"], "control": v["control"]}
                    for k, v in metrics["metrics"].items()},
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("wall_s", "cpu_s", "peak_rss_mb", "pass")}))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
