"""Wall time and peak memory of `garage preprocess` on pbmc3k and a 100k-cell resample.

Target (issue 2): 100k cells x 13.7k genes in < 3 min and < 6 GB on 2 cores.
Run:  .venv/bin/python -m bench.bench_preprocess [--n-cells 100000]
"""

from __future__ import annotations

import argparse
import sys

from ._common import PBMC3K, WORK, measure, resample_counts, write_result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-cells", type=int, default=100_000)
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    big = WORK / f"pbmc3k_resampled_{args.n_cells}.h5ad"
    if not big.exists():
        resample_counts(PBMC3K, args.n_cells).write_h5ad(big)
    rows = []
    for name, path in (("pbmc3k", PBMC3K), (f"resampled_{args.n_cells}", big)):
        cmd = [sys.executable, "-m", "garage.cli", "-q", "preprocess", "--input", path,
               "--label-key", "cell_type", "--prefix", name, "--outdir", WORK / "preprocess"]
        m = measure(cmd)
        assert m["rc"] == 0, f"preprocess failed on {name}"
        import anndata as ad

        a = ad.read_h5ad(path, backed="r")
        rows.append({"dataset": name, "cells": a.n_obs, "genes": a.n_vars,
                     "wall_s": round(m["wall_s"], 1), "peak_mb": round(m["peak_mb"])})
        print(rows[-1], flush=True)
    print(write_result("preprocess", rows, "python -m bench.bench_preprocess --n-cells %d" % args.n_cells))


if __name__ == "__main__":
    main()
