"""Scaling benchmark (issue 17): wall time and peak memory of every GARAGE stage against cells,
with scVI's default training on the same cells side by side.

For each size, real PBMC 3k counts (13,714 genes, 9 labelled types incl. the rare DC and
Platelet) are resampled with replacement and binomially thinned (bench._common.write_resampled,
the method every GARAGE benchmark uses), then each stage's CLI runs in its own child process
(bench._common.measure), so wall time and peak RSS are per stage and every change to a stage is
picked up:

    garage preprocess -> garage gat -> garage gan -> garage evaluate

scVI (scvi-tools, `SCVI.train()` with its default schedule) trains in its own child process on
the same cells GARAGE's generator trains on: the HVG counts (`layers['counts']`) of the train
split of the preprocessed file.  Its row gives the whole child (read + setup + train) and, in
`train_s`, `model.train()` alone.

A stage that fails, passes --mem-cap-gb or --timeout-min is recorded with that status and the
later stages of that size are skipped; the run goes on with the next size.  Results are written
after every measurement, so an interrupted run keeps what it measured.

Run:  .venv/bin/python -m bench.bench_scale --sizes 10000,30000,100000
      .venv/bin/python -m bench.bench_scale --sizes 300000 --stages preprocess,gat --skip-scvi --merge
      .venv/bin/python -m bench.bench_scale --sizes 3000 --extra gan="--epochs 2 --ae-epochs 2"  # smoke
Options: --sizes, --stages, --skip-scvi, --device cpu|cuda|auto (GAT, GAN, scVI), --threads,
--mem-cap-gb (default 22), --timeout-min, --merge (keep the rows of an earlier run that this one
does not measure), --scvi-max-epochs N (scVI for N epochs, projected to its default schedule),
--note (a line printed at the top of the table), --name (results name, default scale).
Writes bench/results/NAME.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

from ._common import PBMC3K, RESULTS, WORK, git_commit, machine, measure, write_resampled

STAGES = ("preprocess", "gat", "gan", "evaluate")
LABEL_KEY = "cell_type"


# ------------------------------------------------------------ scVI child
def _scvi_child(pp: Path, accelerator: str, seed: int, out_json: Path, max_epochs: int | None = None) -> None:
    """Train scVI with its default schedule on the train split's HVG counts; time train().

    *max_epochs*: train only that many epochs and record the projection to the default
    schedule (time per epoch x scvi-tools' own default epoch count for these cells)."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp
    import scvi
    from scvi.model._utils import get_max_epochs_heuristic

    from garage import constants as C

    real = ad.read_h5ad(pp)
    train = real.obs[C.OBS_SPLIT].to_numpy() == C.SPLIT_TRAIN
    counts = sp.csr_matrix(real.layers[C.LAYER_COUNTS][train])
    a = ad.AnnData(counts, obs=pd.DataFrame(index=real.obs_names[train]),
                   var=pd.DataFrame(index=real.var_names))
    del real
    scvi.settings.seed = seed
    scvi.model.SCVI.setup_anndata(a)
    model = scvi.model.SCVI(a)
    default_epochs = int(get_max_epochs_heuristic(a.n_obs))  # what train() runs without max_epochs
    extra = {} if max_epochs is None else {"max_epochs": int(max_epochs)}
    t0 = time.perf_counter()
    model.train(accelerator=accelerator, enable_progress_bar=False, **extra)
    train_s = time.perf_counter() - t0
    epochs = len(model.history["elbo_train"]) if "elbo_train" in model.history else None
    res = {"train_s": train_s, "epochs": epochs, "default_epochs": default_epochs, "train_cells": int(a.n_obs)}
    if max_epochs is not None and epochs:
        res["projected_train_s"] = train_s / epochs * default_epochs
    out_json.write_text(json.dumps(res))


# ------------------------------------------------------------ harness
def _garage(*args) -> list[str]:
    return [sys.executable, "-m", "garage.cli", "-q", *map(str, args)]


def _stage_cmd(stage: str, n: int, counts: Path, out: Path, args) -> list[str]:
    p = f"s{n}"
    pp, seeds, syn = (out / f"{p}.preprocessed.h5ad", out / f"{p}.seeds.h5ad",
                      out / f"{p}.synthetic.h5ad")
    extra = shlex.split(args.extra.get(stage, ""))
    dev = ["--device", args.device]
    thr = ["--threads", str(args.threads)] if args.threads else []
    if stage == "preprocess":
        return _garage("preprocess", "--input", counts, "--label-key", LABEL_KEY, "--prefix", p,
                       "--outdir", out, "--seed", args.seed, *extra)
    if stage == "gat":
        return _garage("gat", "--input", pp, "--prefix", p, "--outdir", out, "--seed", args.seed,
                       *dev, *thr, *extra)
    if stage == "gan":
        return _garage("gan", "--input", seeds, "--prefix", p, "--outdir", out, "--seed", args.seed,
                       *dev, *thr, *extra)
    if stage == "evaluate":
        return _garage("evaluate", "--real", pp, "--synthetic", syn, "--prefix", p, "--outdir", out,
                       "--seed", args.seed, *extra)
    raise ValueError(stage)


def _error_line(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    errs = [ln for ln in lines if ln.startswith(("Error:", "Internal error:"))]
    return (errs or lines or [""])[-1][:300]


def _n_genes(counts: Path) -> int:
    import h5py

    with h5py.File(counts, "r") as f:
        return int(f["X"].attrs["shape"][1])


def _row(n: int, stage: str, m: dict, log: Path, genes: int, **extra) -> dict:
    row = {
        "cells": n, "genes": genes, "stage": stage, "status": m.get("status", "ok"),
        "wall_s": round(m["wall_s"], 1), "cpu_s": round(m.get("cpu_s", 0.0), 1),
        "peak_mb": round(max(m["peak_mb"], m.get("polled_peak_mb", 0))),
        "load_1min_before": extra.pop("load", None),
        **_stamp(extra.pop("run", None), extra.pop("commit", None)),
    }
    if row["status"] != "ok":
        row["error"] = _error_line(log)
    row.update(extra)
    return row


def _stamp(run: str | None, commit: str | None = None) -> dict:
    """Which code, command and time measured a row (a --merge table mixes runs)."""
    return {"commit": commit or git_commit(), "run": run,
            "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def run(args) -> list[dict]:
    rows = _load(args) if args.merge else []
    cap_mb = args.mem_cap_gb * 1024 if args.mem_cap_gb else None
    timeout = args.timeout_min * 60 if args.timeout_min else None
    for n in args.sizes:
        # a rerun of a size replaces the rows it measures (its stages, and scVI unless skipped),
        # each one when its new measurement is in (_put): an interrupted rerun keeps the old rows
        out = WORK / "scale" / f"s{n}"
        out.mkdir(parents=True, exist_ok=True)
        counts = WORK / f"pbmc3k_resampled_{n}.h5ad"
        try:
            if not counts.exists():
                t0 = time.perf_counter()
                write_resampled(PBMC3K, n, counts)
                print(f"[{n}] resampled input written in {time.perf_counter() - t0:.0f} s", flush=True)
            genes = _n_genes(counts)
        except Exception as exc:  # e.g. the disk is full: record it, go on with the next size
            _put(rows, {"cells": n, "genes": None, "stage": "input", "status": "failed",
                        "wall_s": None, "peak_mb": None, "error": f"{type(exc).__name__}: {exc}"[:300],
                        **_stamp(args.command)})
            _save(rows, args)
            continue
        ok = True
        for stage in args.stages:
            if not ok:
                _put(rows, {"cells": n, "genes": genes, "stage": stage, "status": "skipped",
                            "wall_s": None, "peak_mb": None, **_stamp(args.command)})
                continue
            cmd = _stage_cmd(stage, n, counts, out, args)
            log = out / f"{stage}.stderr.log"
            print(f"[{n}] {stage}: {shlex.join(map(str, cmd))}", flush=True)
            load = round(os.getloadavg()[0], 1)
            commit = git_commit()  # the code that runs, read before the stage (commits may land meanwhile)
            m = measure(cmd, mem_cap_mb=cap_mb, timeout_s=timeout, log=log)
            new = _put(rows, _row(n, stage, m, log, genes, load=load, run=args.command, commit=commit))
            print(f"[{n}] {stage}: {new}", flush=True)
            ok = new["status"] == "ok"
            _save(rows, args)
        if args.skip_scvi:
            continue
        pp = out / f"s{n}.preprocessed.h5ad"
        if not pp.exists():
            _put(rows, {"cells": n, "genes": genes, "stage": "scvi_train", "status": "skipped",
                        "wall_s": None, "peak_mb": None, "error": "no preprocessed file",
                        **_stamp(args.command)})
            _save(rows, args)
            continue
        res = out / "scvi.json"
        res.unlink(missing_ok=True)
        acc = {"cpu": "cpu", "cuda": "gpu", "auto": "auto"}[args.device]
        cmd = [sys.executable, "-m", "bench.bench_scale", "--_scvi", str(pp), "--_out", str(res),
               "--_accelerator", acc, "--seed", str(args.seed)]
        if getattr(args, "scvi_max_epochs", None):
            cmd += ["--scvi-max-epochs", str(args.scvi_max_epochs)]
        log = out / "scvi.stderr.log"
        print(f"[{n}] scvi: {shlex.join(cmd)}", flush=True)
        load = round(os.getloadavg()[0], 1)
        commit = git_commit()
        m = measure(cmd, mem_cap_mb=cap_mb, timeout_s=timeout, log=log)
        info = json.loads(res.read_text()) if res.exists() else {}
        if m["status"] == "ok" and "train_s" not in info:
            m = {**m, "status": "failed"}
        new = _put(rows, _row(n, "scvi_train", m, log, genes, load=load, run=args.command, commit=commit,
                         train_s=round(info["train_s"], 1) if "train_s" in info else None,
                         epochs=info.get("epochs"), default_epochs=info.get("default_epochs"),
                         projected_train_s=(round(info["projected_train_s"], 1)
                                            if "projected_train_s" in info else None),
                         train_cells=info.get("train_cells")))
        print(f"[{n}] scvi: {new}", flush=True)
        _save(rows, args)
    return rows


def _put(rows: list[dict], row: dict) -> dict:
    """Add *row*, replacing the earlier row of the same size and stage."""
    rows[:] = [r for r in rows if (r["cells"], r["stage"]) != (row["cells"], row["stage"])]
    rows.append(row)
    return row


# ------------------------------------------------------------ results
def _paths(args) -> tuple[Path, Path, Path]:
    return RESULTS / f"{args.name}.json", RESULTS / f"{args.name}.md", RESULTS / f"{args.name}.png"


def _load(args) -> list[dict]:
    js = _paths(args)[0]
    return json.loads(js.read_text())["rows"] if js.exists() else []


def _save(rows: list[dict], args) -> None:
    js, md, png = _paths(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows = sorted(rows, key=lambda r: (r["cells"], _order(r["stage"])))
    payload = {"name": args.name, "command": args.command, "commit": git_commit(), "machine": machine(),
               "device": args.device, "note": args.note, "rows": rows}
    js.write_text(json.dumps(payload, indent=2) + "\n")
    md.write_text(_markdown(payload))
    try:
        _plot(rows, png, args.device)
    except Exception as exc:  # a plotting problem must not lose the table
        print(f"plot failed: {exc}", file=sys.stderr)


def _order(stage: str) -> int:
    order = ("input", *STAGES, "scvi_train")
    return order.index(stage) if stage in order else len(order)


def _fmt(v, unit="") -> str:
    if v is None:
        return "–"
    return f"{v:,.0f}{unit}" if isinstance(v, (int, float)) else str(v)


def _get(rows, n, stage):
    return next((r for r in rows if r["cells"] == n and r["stage"] == stage), None)


def _scvi_cell(sc: dict | None) -> str:
    """scVI's train() seconds; a partial run shows its projection to the default schedule."""
    if sc is None:
        return "–"
    if sc["status"] != "ok":
        return sc["status"]
    if sc.get("projected_train_s"):
        return f"≈ {_fmt(sc['projected_train_s'])} (projected; measured {_fmt(sc.get('train_s'))})"
    return _fmt(sc.get("train_s"))


def _markdown(p: dict) -> str:
    rows = p["rows"]
    sizes = sorted({r["cells"] for r in rows})
    out = [f"# {p['name']}", ""]
    if p.get("note"):
        out += [f"**{p['note']}**", ""]
    commits = sorted({r.get("commit") or "unrecorded" for r in rows})
    runs = sorted({r["run"] for r in rows if r.get("run")})
    genes = sorted({r["genes"] for r in rows if r.get("genes")})
    out += [
        f"Command (last run): `{p['command']}`  ",
        f"Code: commit `{p['commit']}` at the last write (`+dirty`: with uncommitted changes in "
        f"src/); the rows were measured at {', '.join(f'`{c}`' for c in commits)} (per-stage "
        f"table), device `{p['device']}`  ",
        f"Machine: {p['machine']['cpus']} CPUs, {p['machine']['platform']}, Python "
        f"{p['machine']['python']}; written {p['machine']['date']}",
        "",
        f"Inputs: PBMC 3k counts ({', '.join(f'{g:,}' for g in genes) or '?'} genes) resampled with "
        "replacement and binomially thinned "
        "(p = 0.9) to each size, labels kept (rare DC and Platelet included). Each stage is its own "
        "`garage` CLI child process (options: the run's command); wall time, CPU time (user + system) and "
        "peak RSS are that process's. `scvi_train` is scVI (scvi-tools) `SCVI.train()` with its "
        "default schedule on the same train-split HVG counts GARAGE's generator trains on "
        "(`train()` s = the call alone; wall, CPU and peak = the whole child, including reading). "
        "Where the full schedule did not fit the machine time, scVI ran `--scvi-max-epochs N` "
        "epochs and its `train()` time is projected to scvi-tools' own default epoch count for "
        "those cells (time per epoch x default epochs; 'N of D' in the epochs column); such rows "
        "are left out of the growth table and the plot.",
        "",
        "The load column is the 1-minute load average just before each stage started (on 2 "
        "cores, above about 1 means another job shared the machine, and wall times are then "
        "upper bounds; CPU seconds move much less with the load).",
        "",
        *([f"Runs merged into this table: {'; '.join(f'`{r}`' for r in runs)}.", ""] if runs else []),
        "## Per size",
        "",
        "| cells | GARAGE wall s | GARAGE CPU s | GARAGE peak MB | slowest stage | scVI `train()` s | "
        "scVI epochs | GARAGE gan wall s |",
        "|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for n in sizes:
        st = [_get(rows, n, s) for s in STAGES]
        st = [r for r in st if r is not None]
        complete = len(st) == len(STAGES) and all(r["status"] == "ok" for r in st)
        okr = [r for r in st if r["status"] == "ok"]
        wall = sum(r["wall_s"] for r in okr)
        cpu = sum(r.get("cpu_s") or 0 for r in okr)
        peak = max((r["peak_mb"] for r in okr), default=None)
        slow = max(okr, key=lambda r: r["wall_s"])["stage"] if okr else "–"
        sc = _get(rows, n, "scvi_train")
        gan = _get(rows, n, "gan")
        paren = (lambda v: _fmt(v)) if complete else (lambda v: f"({_fmt(v)}, incomplete)")
        out.append("| " + " | ".join([
            f"{n:,}", paren(wall), paren(cpu), _fmt(peak), slow,
            _scvi_cell(sc),
            (_fmt(sc.get("epochs")) + (f" of {sc['default_epochs']}" if sc.get("projected_train_s") else "")
             if sc else "–"),
            _fmt(gan["wall_s"]) if gan and gan["status"] == "ok" else "–"]) + " |")
    out += ["", "## Per stage", "",
            "| cells | stage | status | wall s | CPU s | peak MB | load (1 min) before | commit | measured |",
            "|---:|---|---|---:|---:|---:|---:|---|---|"]
    for r in rows:
        out.append("| " + " | ".join([
            f"{r['cells']:,}", r["stage"], r["status"], _fmt(r.get("wall_s")),
            _fmt(r.get("cpu_s")), _fmt(r.get("peak_mb")), _fmt(r.get("load_1min_before")),
            r.get("commit") or "–", r.get("measured") or "–"]) + " |")
    # growth between consecutive sizes: exponent b in t ~ cells^b (1 = linear)
    grow = []
    for s in (*STAGES, "scvi_train"):
        pts = [(r["cells"], r.get("cpu_s"), r.get("peak_mb")) for r in rows
               if r["stage"] == s and r["status"] == "ok" and not r.get("projected_train_s")]
        pts.sort()
        for (n1, c1, m1), (n2, c2, m2) in zip(pts, pts[1:]):
            if c1 and c2 and m1 and m2:
                lr = math.log(n2 / n1)
                grow.append((s, n1, n2, math.log(c2 / c1) / lr, math.log(m2 / m1) / lr))
    if grow:
        out += ["", "## Growth with cells", "",
                "Exponent b in cost ~ cells^b between consecutive sizes (1 = linear; fixed costs "
                "such as imports make small sizes look sub-linear).", "",
                "| stage | from | to | CPU-time exponent | peak-memory exponent |",
                "|---|---:|---:|---:|---:|"]
        out += [f"| {s} | {a:,} | {b:,} | {ct:.2f} | {mm:.2f} |" for s, a, b, ct, mm in grow]
    bad = [r for r in rows if r["status"] not in ("ok", "skipped")]
    if bad:
        out += ["", "## Failures", ""]
        out += [f"- {r['cells']:,} cells, {r['stage']}: {r['status']} — {r.get('error', '')}" for r in bad]
    out.append("")
    return "\n".join(out)


def _plot(rows: list[dict], png: Path, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    panels = (("wall_s", "wall time", "s", 1.0), ("cpu_s", "CPU time", "s", 1.0),
              ("peak_mb", "peak RSS", "GB", 1 / 1024))
    for ax, (key, title, unit, scale) in zip(axes, panels):
        for s in (*STAGES, "scvi_train"):
            pts = sorted((r["cells"], r.get(key)) for r in rows  # partial scVI runs: table only
                         if r["stage"] == s and r["status"] == "ok" and r.get(key)
                         and not r.get("projected_train_s"))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] * scale for p in pts], marker="o",
                        linestyle="--" if s == "scvi_train" else "-", label=s)
        if key == "wall_s":
            tr = sorted((r["cells"], r["train_s"]) for r in rows
                        if r["stage"] == "scvi_train" and r["status"] == "ok" and r.get("train_s"))
            if tr:
                ax.plot([p[0] for p in tr], [p[1] for p in tr], marker="s", linestyle=":",
                        label="scvi train() only")
        if key != "peak_mb":
            tot = []
            for n in sorted({r["cells"] for r in rows}):
                st = [_get(rows, n, s) for s in STAGES]
                if all(r is not None and r["status"] == "ok" and r.get(key) for r in st):
                    tot.append((n, sum(r[key] for r in st)))
            if tot:
                ax.plot([t[0] for t in tot], [t[1] for t in tot], color="black", marker="D",
                        label="GARAGE total")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("cells")
        ax.set_ylabel(f"{title} ({unit})")
        ax.set_title(f"{title} per stage ({device})")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------ CLI
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_scale", description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,30000,100000",
                    help="comma-separated cell counts (e.g. 10000,30000,100000,300000,1000000)")
    ap.add_argument("--stages", default=",".join(STAGES), help="subset of " + ",".join(STAGES))
    ap.add_argument("--skip-scvi", action="store_true", help="do not train scVI")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"],
                    help="device for GAT, GAN (and scVI's accelerator)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for GAT/GAN")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mem-cap-gb", type=float, default=22.0,
                    help="kill a stage whose RSS passes this (recorded as 'memory cap'); 0: none")
    ap.add_argument("--timeout-min", type=float, default=None,
                    help="kill a stage that runs longer (recorded as 'timeout')")
    ap.add_argument("--extra", action="append", default=[], metavar='STAGE="ARGS"',
                    help='extra options for one stage, e.g. gan="--epochs 2"; repeatable')
    ap.add_argument("--merge", action="store_true",
                    help="keep the other sizes already in bench/results/NAME.json")
    ap.add_argument("--note", default="", help="a line printed at the top of the table")
    ap.add_argument("--name", default="scale")
    ap.add_argument("--scvi-max-epochs", type=int, default=None,
                    help="train scVI this many epochs only and project its default schedule from the "
                         "time per epoch (for sizes where the full schedule does not fit the machine time)")
    ap.add_argument("--_scvi", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_out", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_accelerator", default="cpu", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._scvi is not None:  # child mode
        _scvi_child(args._scvi, args._accelerator, args.seed, args._out, args.scvi_max_epochs)
        return
    args.sizes = [int(float(v)) for v in args.sizes.split(",") if v.strip()]
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    bad = [s for s in args.stages if s not in STAGES]
    if bad:
        ap.error(f"unknown stage(s) {bad}; choose from {list(STAGES)}")
    args.stages = [s for s in STAGES if s in args.stages]  # pipeline order
    extra = {}
    for item in args.extra:
        stage, _, val = item.partition("=")
        if stage not in STAGES:
            ap.error(f"--extra {item!r}: stage must be one of {list(STAGES)}")
        extra[stage] = val
    args.extra = extra
    args.command = "python -m bench.bench_scale " + shlex.join(argv if argv is not None else sys.argv[1:])
    run(args)
    print(_paths(args)[1])


if __name__ == "__main__":
    main()
