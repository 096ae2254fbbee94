"""Does a C2ST difference between two methods depend on how many holdout cells score it? (issue 13)

GARAGE ties scVI on mouse_bladder's validation split but trails it on the test split, whose holdout
is 1.26x larger (422 against 334 cells). A larger holdout gives the classifier more cells, so it
can find finer differences. This scores finished bench.fidelity run folders' synthetic files,
unchanged, against the same preprocessed file with its holdout cut to N cells at random (the train
cells kept; the cut is uniform over the holdout, not stratified by type), several times, and
reports the C2ST AUC, its control and the gap per cut. Nothing is trained again. With N = the
holdout's size (and one cut) it reproduces the run's own C2ST: the check that this path scores as
bench.fidelity did.

Run:  python -m bench.holdout_size --runs 'bench/_work/fidelity/mouse_bladder/test/garage_s[01]' \\
          --n-holdout 334 --cuts 3 --out bench/results/round23/holdout_size_mouse_bladder_test_garage.json
"""

from __future__ import annotations

import argparse
import glob
import json
import shlex
import sys
from pathlib import Path

import numpy as np

from ._common import machine


def cut_holdout(real, n_keep: int, seed: int):
    """*real* with its holdout cut to *n_keep* cells drawn at random (train cells all kept)."""
    from garage import constants as C

    hold = np.flatnonzero(real.obs[C.OBS_SPLIT].astype(str).to_numpy() == C.SPLIT_HOLDOUT)
    if not 0 < n_keep <= len(hold):
        raise SystemExit(f"bench.holdout_size: --n-holdout must be in 1..{len(hold)} (the holdout's size)")
    keep = np.ones(real.n_obs, dtype=bool)
    keep[np.random.default_rng(seed).choice(hold, len(hold) - n_keep, replace=False)] = False
    return real[keep].copy()


def main(argv=None) -> int:
    import anndata as ad

    from garage.evaluate import EvaluateConfig, evaluate_adata

    from .fidelity import prepare

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", action="append", required=True, help="glob of bench.fidelity run folders")
    ap.add_argument("--n-holdout", type=int, required=True, help="holdout cells to keep in each cut")
    ap.add_argument("--cuts", type=int, default=3, help="random cuts per run (seeds 100, 101, ...)")
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)
    if args.cuts < 1:
        ap.error("--cuts must be >= 1")
    from garage._utils import check_writable_dir, write_text_atomic
    from garage.errors import GarageError

    try:  # before minutes of scoring, not after
        check_writable_dir(args.out.parent)
    except GarageError as e:
        raise SystemExit(f"bench.holdout_size: {e}") from None
    folders = sorted({Path(p) for g in args.runs for p in glob.glob(g)})
    rows = []
    for f in folders:
        row = json.loads((f / "row.json").read_text()) if (f / "row.json").exists() else {}
        syn = next(f.glob("*.synthetic.h5ad"), None)
        if row.get("status") != "ok" or syn is None:
            print(f"skip {f}: no finished synthetic file", file=sys.stderr)
            continue
        real, cells = ad.read_h5ad(prepare(row["dataset"], row["split"])), ad.read_h5ad(syn)
        for c in range(args.cuts):
            doc = evaluate_adata(cut_holdout(real, args.n_holdout, 100 + c), cells,
                                 EvaluateConfig(plots=False, n_repeats=2, seed=0, c2st_draws=20))
            m = doc["metrics"]["c2st_auc"]
            rows.append({"dataset": row["dataset"], "split": row["split"], "seed": int(row["seed"]),
                         "method": row["method"], "cut": c, "n_holdout": args.n_holdout,
                         "c2st_auc": m["value"], "control": m["control"], "gap": m["value"] - m["control"]})
            print(json.dumps(rows[-1]), flush=True)
    if not rows:
        print("bench.holdout_size: no finished run matched", file=sys.stderr)
        return 1
    command = "python -m bench.holdout_size " + shlex.join(argv if argv is not None else sys.argv[1:])
    write_text_atomic(json.dumps({"command": command, "machine": machine(), "rows": rows}, indent=1) + "\n",
                      args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
