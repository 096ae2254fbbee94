"""Per-type C2ST and spread of GARAGE against scVI, from finished bench.fidelity run folders (read only).

For each table (dataset, split, seeds, GARAGE's run name, more run names to show): the mean over the
seeds of each type's ``c2st`` and of ``spread_ratio / spread_ratio_control`` in the runs'
``evaluate/eval.per_type.tsv``, for types with at least 20 holdout cells, biggest first; then, over
those types, Spearman's rho of the GARAGE - scVI per-type C2ST against (a) the GARAGE - scVI
difference in spread and (b) GARAGE's own spread (round 22 of bench/results/fidelity_notes.md).

Run:  python -m bench.per_type_read --table baron_mouse:val:19,20:garage:garage_pk2 \\
          --table pbmc3k:val:19,20:garage > per_type.txt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from scipy.stats import spearmanr

BASE = Path(__file__).resolve().parent / "_work" / "fidelity"
MIN_HOLDOUT = 20  # types with fewer holdout cells are left out (their per-type C2ST is mostly noise)


def parse_table(text: str) -> tuple[str, str, list[int], str, list[str]]:
    """``DATASET:SPLIT:SEEDS:GARAGE[:EXTRA,...]`` -> (dataset, split, seeds, GARAGE's run name, extras)."""
    parts = text.split(":")
    if len(parts) not in (4, 5):
        raise SystemExit(f"bench.per_type_read: --table {text!r} is not DATASET:SPLIT:SEEDS:GARAGE[:EXTRA,...]")
    extra = parts[4].split(",") if len(parts) == 5 and parts[4] else []
    return parts[0], parts[1], [int(s) for s in parts[2].split(",")], parts[3], extra


def per_type(ds, split, method, seeds, base: Path = BASE):
    """(runs found, holdout cells, control C2ST, mean C2ST, mean spread ratio ÷ control) per type."""
    runs = []
    for s in seeds:
        f = base / ds / split / f"{method}_s{s}" / "evaluate" / "eval.per_type.tsv"
        if f.is_file():
            runs.append(pd.read_csv(f, sep="\t", index_col=0))
    if not runs:
        return None
    cat = pd.concat(runs)
    by = cat.groupby(level=0)
    spread = (cat["spread_ratio"] / cat["spread_ratio_control"]).groupby(level=0).mean()
    return len(runs), runs[0]["n_real_holdout"], runs[0]["c2st_control"], by["c2st"].mean(), spread


def report(tables, base: Path = BASE) -> list[str]:
    lines, xs, gs, ys, rhos = [], [], [], [], []
    for ds, split, seeds, garage, extra in tables:
        found = {m: per_type(ds, split, m, seeds, base) for m in [garage, *extra, "scvi"]}
        if found[garage] is None or found["scvi"] is None:
            raise SystemExit(f"bench.per_type_read: {ds} {split} seeds {seeds}: no {garage} or no scvi run folder")
        out = {}
        for m, r in found.items():
            if r is None:
                continue
            k, out["n"], out["control"], out[f"{m} ({k})"], out[f"{m} spread"] = r
        d = pd.DataFrame(out).sort_values("n", ascending=False)
        lines += ["", f"{ds} {split} seeds {seeds}", d[d.n >= MIN_HOLDOUT].round(3).to_string()]
        _, n, _, ca, sa = found[garage]
        _, _, _, cb, sb = found["scvi"]
        keep = n[n >= MIN_HOLDOUT].index
        diff = (ca - cb)[keep]
        rhos.append(f"{ds} {split}: rho(spread difference, C2ST difference) {spearmanr((sa - sb)[keep], diff)[0]:+.2f}; "
                    f"rho(GARAGE spread, C2ST difference) {spearmanr(sa[keep], diff)[0]:+.2f}")
        xs += list((sa - sb)[keep]); gs += list(sa[keep]); ys += list(diff)
    lines += rhos
    lines.append(f"all {len(xs)} types: spread difference {spearmanr(xs, ys)}")
    lines.append(f"all {len(xs)} types: GARAGE spread {spearmanr(gs, ys)}")
    return lines


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--table", action="append", required=True, type=parse_table,
                    help="DATASET:SPLIT:SEEDS:GARAGE[:EXTRA,...], e.g. baron_mouse:test:0,1,2:garage:garage_ts4")
    args = ap.parse_args(argv)
    print("\n".join(report(args.table)))


if __name__ == "__main__":
    main()
