"""Benchmark ``garage evaluate`` at growing sizes: time and memory must stay bounded.

Builds the data from the real PBMC 3k file (../shared/data/pbmc3k.h5ad), per size N:

* real: N cells resampled with replacement from PBMC 3k and binomially thinned
  (the scaling benchmarks' ``bench._common.write_resampled``, written in chunks;
  types keep their real proportions, so DC and Platelet stay rare), preprocessed
  with ``garage preprocess`` in a child process (80% train / 20% holdout);
* seeds: 10% of every type's train cells (rare types: 10 or all), written as
  ``bench.seeds.h5ad`` (obs only, ``garage_seed``);
* synthetic: N cells, each a Poisson resample of a random *train* cell's HVG
  counts (near-copies, so the privacy checks fail on purpose), labelled with that
  cell's type, written in chunks; the provenance table names the source cell
  when it is a seed.

Memory of the builder stays bounded by one chunk plus the train counts of the
HVGs, so 1,000,000 cells build on a 24 GB machine (the earlier in-memory builder
reached 18 GB there).  Then runs ``garage evaluate`` (default settings, plots on,
``--seeds`` and ``--provenance``) in a child process and records wall time, CPU
time and peak memory (max RSS of that child, from ``os.wait4``) per size in
``bench/results/evaluate_scale.{json,md}``.  Every pairwise and classifier metric
runs on bounded subsamples, so time and memory should grow no faster than the
linear parts (reading, log-normalising and projecting every cell, exact-copy
hashing, nearest-train-cell searches for bounded query sets).

Usage::

    .venv/bin/python -m bench.bench_evaluate [--cells 10000 30000 100000] [--workdir /tmp/garage_bench_eval] [--merge]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ._common import PBMC3K, REPO, write_csr_h5ad, write_resampled


def _read_train_counts(pp_path: Path):
    """obs, uns and the raw-count layer of a preprocessed file, without X or the rest."""
    import anndata as ad
    import h5py

    from garage import constants as C

    with h5py.File(pp_path, "r") as f:
        obs = ad.io.read_elem(f["obs"])
        uns = ad.io.read_elem(f["uns"])
        counts = ad.io.read_elem(f["layers"][C.LAYER_COUNTS])
        var_names = ad.io.read_elem(f["var"]).index.copy()
    return obs, uns, sp_csr(counts), var_names


def sp_csr(X):
    import scipy.sparse as sp

    return X if sp.isspmatrix_csr(X) else sp.csr_matrix(X, dtype=np.float32)


def make_seeds_and_synthetic(pp_path: Path, work: Path, n_cells: int, seed: int,
                             chunk: int = 100_000) -> tuple[Path, Path, Path]:
    import anndata as ad
    import pandas as pd

    from garage import constants as C

    obs, uns, counts, var_names = _read_train_counts(pp_path)
    lab = obs[C.OBS_LABEL].astype(str).to_numpy()
    train = np.flatnonzero(obs[C.OBS_SPLIT].astype(str) == C.SPLIT_TRAIN)
    rare = set(uns[C.UNS_KEY].get(C.UNS_RARE_TYPES, []))
    rng = np.random.default_rng(seed + 1)
    is_seed = np.zeros(len(obs), dtype=bool)
    for t in np.unique(lab[train]):
        idx = train[lab[train] == t]
        q = max(1, round(0.1 * len(idx)))
        q = min(len(idx), max(q, 10)) if t in rare else q
        is_seed[rng.permutation(idx)[:q]] = True
    seeds_path = work / "bench.seeds.h5ad"
    ad.AnnData(obs=pd.DataFrame({C.OBS_SEED: is_seed}, index=obs.index.copy())).write_h5ad(
        seeds_path
    )

    pick = train[rng.integers(0, len(train), n_cells)]

    def parts():  # near-copies of train cells, one block at a time (1M cells: ~3 GB in one piece)
        for s in range(0, n_cells, chunk):
            X = counts[pick[s:s + chunk]].astype(np.float32)
            X.data = rng.poisson(X.data).astype(np.float32)
            X.eliminate_zeros()
            yield X

    names = [f"bench_syn{i}" for i in range(n_cells)]
    syn_obs = pd.DataFrame(
        {C.OBS_CELL_TYPE: pd.Categorical(lab[pick]), C.OBS_SYNTHETIC: True}, index=names
    )
    syn_path = work / "bench.synthetic.h5ad"
    write_csr_h5ad(syn_path, syn_obs, pd.DataFrame(index=var_names), parts())
    src = obs.index.to_numpy()[pick]
    prov = pd.DataFrame({"synthetic_cell": names, "cell_type": lab[pick],
                         C.OBS_SEED_ID: np.where(is_seed[pick], src, "")})
    prov_path = work / "bench.provenance.tsv"
    prov_path.write_text("# PRIVATE: names real training cells\n" + prov.to_csv(sep="\t", index=False))
    return seeds_path, syn_path, prov_path


def run_measured(cmd: list[str], log: Path) -> dict:
    """Run *cmd* (stderr to *log*); wall time, CPU time and peak RSS of that child alone."""
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # child: stdout discarded, stderr (the log) to a file, then exec
        out = os.open(os.devnull, os.O_WRONLY)
        err = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.execvp(cmd[0], cmd)
    _, status, ru = os.wait4(pid, 0)
    return {
        "rc": os.waitstatus_to_exitcode(status),
        "wall_s": round(time.perf_counter() - t0, 1),
        "cpu_s": round(ru.ru_utime + ru.ru_stime, 1),
        "peak_rss_mb": round(ru.ru_maxrss / 1024, 1),  # Linux: KiB
    }


def bench_size(n: int, seed: int, workdir: Path, extra: list[str]) -> dict:
    garage = str(Path(sys.executable).with_name("garage"))
    work = workdir / f"n{n}"
    work.mkdir(parents=True, exist_ok=True)
    pp = work / "bench.preprocessed.h5ad"
    t0 = time.perf_counter()
    if not pp.exists():  # real counts: the scaling benchmarks' resampled PBMC 3k, preprocessed in a child
        raw = work / "bench.counts.h5ad"
        write_resampled(PBMC3K, n, raw, seed=seed)
        pre = run_measured([garage, "preprocess", "--input", str(raw), "--label-key", "cell_type",
                            "--prefix", "bench", "--outdir", str(work), "--seed", str(seed)],
                           work / "preprocess.log")
        if pre["rc"] != 0:
            raise SystemExit(f"garage preprocess failed at {n} cells (exit {pre['rc']}); see "
                             f"{work / 'preprocess.log'}")
        raw.unlink()
    seeds, syn, prov = make_seeds_and_synthetic(pp, work, n, seed)
    t_data = time.perf_counter() - t0
    cmd = [
        garage, "evaluate", "--real", str(pp),
        "--synthetic", str(syn), "--seeds", str(seeds), "--provenance", str(prov),
        "--prefix", "bench", "--outdir", str(work / "evaluate"), "--seed", str(seed), *extra,
    ]
    from garage.evaluate import EvaluateConfig
    from garage.evaluate._memory import check_memory

    d = EvaluateConfig()
    estimate = check_memory(pp, syn, n_pcs=d.n_pcs, pca_max_cells=d.pca_max_cells,
                            pca_fit_fraction=d.pca_fit_fraction, max_memory_gb=1e6)
    load_before = os.getloadavg()
    res = run_measured(cmd, work / "evaluate.log")
    if res["rc"] != 0:
        raise SystemExit(f"garage evaluate failed at {n} cells (exit {res['rc']}); see "
                         f"{work / 'evaluate.log'}")
    doc = json.loads((work / "evaluate" / "bench.garage_metrics.json").read_text())
    return {
        "cells_real": n,
        "command": " ".join(cmd),
        "n_cells": doc["n_cells"],
        **{k: res[k] for k in ("wall_s", "cpu_s", "peak_rss_mb")},
        "preflight_estimate_mb": round(estimate / 2**20, 1),  # at the default settings
        "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "stage_timings_s": doc.get("timings_s", {}),
        "subsample": doc["params"]["subsample"],
        "privacy_ok": doc["privacy_ok"],
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "data_build_s": round(t_data, 1),
        "metrics": {k: {"value": v["value"], "ci": [v["ci_low"], v["ci_high"]],
                        "control": v["control"]} for k, v in doc["metrics"].items()},
    }


def markdown(rows: list[dict]) -> str:
    lines = [
        "# `garage evaluate` at growing sizes",
        "",
        "N real cells (80% train / 20% holdout) against N synthetic cells, default settings "
        "(10 draws, plots on, `--seeds` and `--provenance`), one child process per size; "
        "`python -m bench.bench_evaluate`. CPU time is the child's user + system time; wall time "
        "depends on the machine's load (shared 2-core machine, load average in the last column). "
        "Pre-flight = the memory `garage evaluate` estimates from the two files' headers before "
        "reading them (it stops with exit 3 when this exceeds the budget); it should sit above "
        "the measured peak without being far above it ('–': a row measured before the estimate "
        "existed).",
        "",
        "| real cells | synthetic cells | wall (s) | CPU (s) | peak RSS (MB) | pre-flight estimate (MB) "
        "| slowest groups (s) | load |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = {k: v for k, v in r["stage_timings_s"].items() if k != "total"}
        top = ", ".join(f"{k} {v:.0f}" for k, v in sorted(t.items(), key=lambda kv: -kv[1])[:3])
        e = r.get("preflight_estimate_mb")
        est = "–" if e is None else ("no estimate" if e == 0 else f"{e:,.0f}")
        lines.append(
            f"| {r['cells_real']:,} | {r['n_cells']['synthetic']:,} | {r['wall_s']} | {r['cpu_s']} | "
            f"{r['peak_rss_mb']:,.0f} | {est} | {top} | {r['loadavg_before'][0]} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, nargs="+", default=[10_000, 30_000])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/garage_bench_eval"))
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "evaluate_scale.json")
    ap.add_argument("--merge", action="store_true",
                    help="keep the rows of an earlier run (in --out) for sizes this run does not measure")
    ap.add_argument("extra", nargs="*", help="extra flags for garage evaluate (after --)")
    args = ap.parse_args()
    if not PBMC3K.exists():
        print(f"missing {PBMC3K}", file=sys.stderr)
        return 2
    rows = []
    for n in args.cells:
        rows.append(bench_size(n, args.seed, args.workdir, args.extra))
        r = rows[-1]
        print(json.dumps({k: r[k] for k in ("cells_real", "wall_s", "cpu_s", "peak_rss_mb")}), flush=True)
    if args.merge and args.out.exists():
        done = {r["cells_real"] for r in rows}
        kept = [r for r in json.loads(args.out.read_text())["rows"] if r["cells_real"] not in done]
        rows = sorted(kept + rows, key=lambda r: r["cells_real"])
    result = {
        "benchmark": "garage evaluate, N synthetic vs N real cells, default settings",
        "rows": rows,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(rows))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
