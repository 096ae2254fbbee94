"""Wall time, CPU time and peak memory of `garage preprocess` on pbmc3k and resampled large inputs.

Targets: issue 2, 100k cells x 13.7k genes in < 3 min and < 6 GB on 2 cores; issue 17,
memory linear in cells and 1,000,000 cells within this 24 GB machine (measured).
Large inputs are pbmc3k resampled with replacement and binomially thinned
(bench._common.write_resampled, written chunk by chunk; the same cells as resample_counts).

Run:  .venv/bin/python -m bench.bench_preprocess [--n-cells 100000[,1000000]]
Compare with older code (its src/ unpacked somewhere, run through PYTHONPATH):
      git archive <commit> src | tar -x -C /tmp/old
      .venv/bin/python -m bench.bench_preprocess --n-cells 100000 --src /tmp/old/src --code <commit> \
          --tag before --merge
Writes bench/results/preprocess.{json,md}; --merge keeps rows of other tags/datasets.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from ._common import PBMC3K, RESULTS, WORK, git_commit, machine, measure, write_resampled


def _shape(path: Path) -> tuple[int, int, int]:
    import h5py

    with h5py.File(path, "r") as f:
        X = f["X"]
        n, g = (int(v) for v in X.attrs["shape"])
        return n, g, int(X["data"].shape[0])


def _estimate_gb(n: int, g: int, nnz: int, src: Path | None) -> float | None:
    if src is not None:  # older code may have no estimate
        return None
    from garage.preprocess import PreprocessConfig, estimate_memory_bytes

    return round(estimate_memory_bytes(n, g, nnz, PreprocessConfig(label_key="cell_type")) / 1024**3, 2)


def _markdown(payload: dict) -> str:
    rows = payload["rows"]
    out = [
        "# preprocess", "",
        "`garage preprocess --label-key cell_type` (defaults: 2,000 seurat_v3 HVGs, 50 PCs, 15-NN) on "
        "PBMC 3k and on PBMC 3k resampled with replacement and binomially thinned (p = 0.9) to "
        "larger sizes. Each row is one child process (bench._common.measure): wall time, CPU time "
        "(user + system) and peak RSS. `estimate GB` is the pre-flight estimate the run made from "
        "the file's shape and stored counts before reading it.", "",
        "Timings were taken on a shared 2-core machine while other jobs ran (load column; the "
        "benchmark ran under `nice -n 10`): wall times are upper bounds, CPU seconds move much "
        "less with the load.", "",
        "| tag | code | dataset | cells | genes | stored counts | wall s | CPU s | peak MB | estimate GB | load before | measured |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        out.append("| " + " | ".join(str(v) if v is not None else "–" for v in (
            r["tag"], r["commit"], r["dataset"], f"{r['cells']:,}", f"{r['genes']:,}", f"{r['nnz']:,}",
            r["wall_s"], r.get("cpu_s"), f"{r['peak_mb']:,}" if r["status"] == "ok" else r["status"],
            r.get("estimate_gb"), r.get("load_1min_before"), r.get("date"))) + " |")
    out += ["", "Commands:", ""] + [f"- `{c}`" for c in payload["commands"]] + [""]
    notes = payload.get("notes", [])
    if notes:
        out += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-cells", default="100000",
                    help="comma-separated sizes of the resampled inputs (pbmc3k itself always runs)")
    ap.add_argument("--skip-pbmc3k", action="store_true")
    ap.add_argument("--src", type=Path, default=None,
                    help="run the preprocess of another checkout's src/ (PYTHONPATH)")
    ap.add_argument("--tag", default="after", help="label of this run's rows (e.g. before, after)")
    ap.add_argument("--code", default=None, help="code label for --src rows (e.g. its commit)")
    ap.add_argument("--merge", action="store_true", help="keep rows of other tags/datasets")
    ap.add_argument("--mem-cap-gb", type=float, default=22.0)
    ap.add_argument("--note", action="append", default=[], help="a note for the results file")
    args = ap.parse_args()
    sizes = [int(float(v)) for v in args.n_cells.split(",") if v.strip()]
    WORK.mkdir(parents=True, exist_ok=True)
    inputs = [] if args.skip_pbmc3k else [("pbmc3k", PBMC3K)]
    for n in sizes:
        big = WORK / f"pbmc3k_resampled_{n}.h5ad"
        if not big.exists():
            write_resampled(PBMC3K, n, big)
        inputs.append((f"resampled_{n}", big))

    js = RESULTS / "preprocess.json"
    old = json.loads(js.read_text()) if args.merge and js.exists() else {}
    rows = old.get("rows", []) if isinstance(old.get("rows"), list) else []
    rows = [r for r in rows if "tag" in r]  # rows of the older format carry no tag: dropped
    command = "python -m bench.bench_preprocess " + shlex.join(sys.argv[1:])
    commands = [c for c in old.get("commands", []) if c != command] + [command]
    env = os.environ.copy()
    if args.src is not None:
        env["PYTHONPATH"] = str(args.src.resolve())
    code = args.code or (str(args.src) if args.src is not None else git_commit())
    for name, path in inputs:
        n, g, nnz = _shape(path)
        out = WORK / "preprocess" / args.tag
        cmd = [sys.executable, "-m", "garage.cli", "-q", "preprocess", "--input", path,
               "--label-key", "cell_type", "--prefix", name, "--outdir", out]
        print("running:", shlex.join(map(str, cmd)), flush=True)
        load = round(os.getloadavg()[0], 1)
        m = measure(cmd, env=env, mem_cap_mb=args.mem_cap_gb * 1024, log=WORK / f"preprocess_{args.tag}_{name}.log")
        row = {"tag": args.tag, "commit": code, "dataset": name, "cells": n, "genes": g, "nnz": nnz,
               "status": m["status"], "wall_s": round(m["wall_s"], 1), "cpu_s": round(m["cpu_s"], 1),
               "peak_mb": round(max(m["peak_mb"], m["polled_peak_mb"])),
               "estimate_gb": _estimate_gb(n, g, nnz, args.src), "load_1min_before": load,
               "date": machine()["date"]}
        rows = [r for r in rows if (r["tag"], r["dataset"]) != (args.tag, name)] + [row]
        print(row, flush=True)
        payload = {"machine": machine(), "commands": commands,
                   "notes": sorted(set(old.get("notes", [])) | set(args.note)), "rows": rows}
        RESULTS.mkdir(parents=True, exist_ok=True)
        js.write_text(json.dumps(payload, indent=2) + "\n")
        (RESULTS / "preprocess.md").write_text(_markdown(payload))
    print(RESULTS / "preprocess.md")


if __name__ == "__main__":
    main()
