"""Wall time and peak memory of `garage gat` on pbmc3k and on a 100k-cell resample.

Targets (issue 4), CPU on the 2-core dev machine: pbmc3k < 60 s; 100k cells
< 10 min and < 8 GB.  Peak memory is the max RSS of the `garage gat` child
process alone (bench._common.measure).  The 100k input is pbmc3k resampled
with replacement and binomially thinned (bench._common.resample_counts), then
run through `garage preprocess`; the preprocessed files are cached under
bench/_work/ and reused (preprocessing is not part of the GAT timing).

Run:  .venv/bin/python -m bench.bench_gat [--n-cells 100000] [--threads 1] [--device cpu]
      .venv/bin/python -m bench.bench_gat --skip-large      # pbmc3k only
Writes bench/results/gat_<name>.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from ._common import PBMC3K, WORK, measure, resample_counts, write_result


def _preprocessed(name: str, counts: Path) -> Path:
    """Reuse bench/_work/preprocess/NAME.preprocessed.h5ad, else make it."""
    out = WORK / "preprocess" / f"{name}.preprocessed.h5ad"
    if out.exists():
        return out
    cmd = [sys.executable, "-m", "garage.cli", "-q", "preprocess", "--input", counts,
           "--label-key", "cell_type", "--prefix", name, "--outdir", out.parent]
    m = measure(cmd)
    if m["rc"] != 0:
        raise SystemExit(f"preprocess failed on {name}")
    print(f"preprocessed {name}: {m['wall_s']:.0f} s, {m['peak_mb']:.0f} MB", flush=True)
    return out


def _summary(outdir: Path, prefix: str) -> dict:
    import anndata as ad

    from garage import constants as C

    s = ad.read_h5ad(outdir / f"{prefix}{C.SUFFIX_SEEDS}", backed="r")
    g = s.uns[C.UNS_KEY]["gat"]
    seeds = dict(zip(g["seed_types"], (int(v) for v in g["seed_counts"])))
    train = dict(zip(g["seed_types"], (int(v) for v in g["n_train"])))
    rare = [str(t) for t in g["rare_types"]]
    return {
        "cells": int(s.n_obs),
        "edges": int(s.obsp[C.OBSP_CONNECTIVITIES].nnz),
        "mode": str(g["mode"]),
        "epochs": int(g["epochs"]),
        "holdout_bal_acc": round(float(g["holdout_balanced_accuracy"]), 4),
        "rare_seeds": ", ".join(f"{t} {seeds[t]}/{train[t]}" for t in rare),
        "n_seeds": int(g["n_seeds"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-cells", type=int, default=100_000)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 is fastest on a loaded 2-core machine)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--skip-large", action="store_true", help="pbmc3k only")
    ap.add_argument("--name", default=None, help="results name (default gat_<device>)")
    ap.add_argument("gat_args", nargs="*", help="extra `garage gat` options after --")
    args = ap.parse_args()

    (WORK / "gat").mkdir(parents=True, exist_ok=True)
    inputs = [("pbmc3k", _preprocessed("pbmc3k", PBMC3K))]
    if not args.skip_large:
        name = f"resampled_{args.n_cells}"
        counts = WORK / f"pbmc3k_resampled_{args.n_cells}.h5ad"
        if not (WORK / "preprocess" / f"{name}.preprocessed.h5ad").exists() and not counts.exists():
            resample_counts(PBMC3K, args.n_cells).write_h5ad(counts)
        inputs.append((name, _preprocessed(name, counts)))

    rows = []
    for name, pp in inputs:
        outdir = WORK / "gat" / args.device
        cmd = [sys.executable, "-m", "garage.cli", "-q", "gat", "--input", pp, "--prefix", name,
               "--outdir", outdir, "--device", args.device, "--threads", str(args.threads),
               *args.gat_args]
        print("running:", shlex.join(map(str, cmd)), flush=True)
        load = os.getloadavg()[0]  # the dev machine is shared: > 2 means contended cores
        m = measure(cmd)
        if m["rc"] != 0:
            raise SystemExit(f"garage gat failed on {name} (rc {m['rc']})")
        row = {"dataset": name, **_summary(outdir, name), "device": args.device,
               "threads": args.threads, "wall_s": round(m["wall_s"], 1),
               "peak_mb": round(m["peak_mb"]), "load_1min_before": round(load, 1)}
        rows.append(row)
        print(row, flush=True)
    command = "python -m bench.bench_gat " + shlex.join(sys.argv[1:])
    print(write_result(args.name or f"gat_{args.device}", rows, command.strip()))


if __name__ == "__main__":
    main()
