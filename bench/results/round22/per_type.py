# Per-type C2ST and spread (÷ its control) of GARAGE against scVI, mean over seeds, from the
# evaluate/eval.per_type.tsv files under bench/_work/fidelity (round 22 of the notes; read only).
# Run: .venv/bin/python bench/results/round22/per_type.py > bench/results/round22/per_type.txt
from pathlib import Path

import pandas as pd
from scipy.stats import spearmanr

BASE = Path(__file__).resolve().parents[2] / "_work" / "fidelity"
# (dataset, split, seeds, GARAGE's run name, extra methods shown in the table)
TABLES = [
    ("baron_mouse", "test", [0, 1, 2], "garage", ["garage_ts4"]),
    ("mouse_bladder", "test", [0, 1, 2], "garage", ["garage_ts4"]),
    ("baron_mouse", "val", [13, 14], "garage_lr2", []),
    ("pbmc3k", "val", [13, 14, 15], "garage_lr2", []),
    ("kang_ifnb", "val", [13, 14], "garage_lr2", []),
    ("sc_mixology", "val", [13, 14], "garage_lr2", []),
]


def per_type(ds, split, method, seeds):
    """(runs found, holdout cells, control C2ST, mean C2ST, mean spread ratio ÷ control) per type."""
    runs = []
    for s in seeds:
        f = BASE / ds / split / f"{method}_s{s}" / "evaluate" / "eval.per_type.tsv"
        if f.is_file():
            runs.append(pd.read_csv(f, sep="\t", index_col=0))
    if not runs:
        return None
    cat = pd.concat(runs)
    by = cat.groupby(level=0)
    spread = (cat["spread_ratio"] / cat["spread_ratio_control"]).groupby(level=0).mean()
    return len(runs), runs[0]["n_real_holdout"], runs[0]["c2st_control"], by["c2st"].mean(), spread


xs, gs, ys, rhos = [], [], [], []
for ds, split, seeds, garage, extra in TABLES:
    found = {m: per_type(ds, split, m, seeds) for m in [garage, *extra, "scvi"]}
    out = {}
    for m, r in found.items():
        if r is None:
            continue
        k, out["n"], out["control"], out[f"{m} ({k})"], out[f"{m} spread"] = r
    d = pd.DataFrame(out).sort_values("n", ascending=False)
    print(f"\n{ds} {split} seeds {seeds}")
    print(d[d.n >= 20].round(3).to_string())
    # across every type with >= 20 holdout cells: the GARAGE - scVI per-type C2ST against (a) the
    # GARAGE - scVI difference in spread ratio (each ÷ its control) and (b) GARAGE's own spread ratio
    _, n, _, ca, sa = found[garage]
    _, _, _, cb, sb = found["scvi"]
    keep = n[n >= 20].index
    diff = (ca - cb)[keep]
    rhos.append(f"{ds} {split}: rho(spread difference, C2ST difference) {spearmanr((sa - sb)[keep], diff)[0]:+.2f}; "
                f"rho(GARAGE spread, C2ST difference) {spearmanr(sa[keep], diff)[0]:+.2f}")
    xs += list((sa - sb)[keep]); gs += list(sa[keep]); ys += list(diff)
print("\n".join(rhos))
print("all", len(xs), "types: spread difference", spearmanr(xs, ys))
print("all", len(xs), "types: GARAGE spread", spearmanr(gs, ys))
