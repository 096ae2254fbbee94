"""Which types a ``--state-gate`` run split, and how stable that choice is over seeds (read only).

For each ``bench.fidelity`` run folder matched by ``--runs`` this reads the saved generator
(``*.generator.pt``): the fit cells per within-type state of every split type, and the record a
gated run keeps (``state_excess``: per type with room for two states, the best k the size rule
allowed and its silhouette excess over one Gaussian).  Then, per dataset and type, over the runs:
how many runs split it, and the spread of its excess (round 26 of bench/results/fidelity_notes.md).

Run:  python -m bench.state_gate_read --runs 'bench/_work/fidelity/*/val2/garage_sg_s*' [--out FILE.md]
"""

from __future__ import annotations

import argparse
import glob
from pathlib import Path

import numpy as np


def read_run(folder: Path) -> dict | None:
    """{dataset, seed, split: {type: [fit cells per state]}, excess: {type: (k, excess)}} of one run."""
    import torch

    gens = sorted(folder.glob("*.generator.pt"))
    if len(gens) != 1:
        return None
    m = torch.load(gens[0], weights_only=True, map_location="cpu")
    cats = list(m["categories"])
    k = int(m.get("k_states", 1))
    split = {}
    if k > 1 and m.get("state_counts") is not None:
        per = m["state_counts"].view(len(cats), k, -1).sum(2)
        split = {c: [int(v) for v in per[i][per[i] > 0]] for i, c in enumerate(cats) if int((per[i] > 0).sum()) > 1}
    excess = {t: (int(v[0]), float(v[1])) for t, v in (m.get("state_excess") or {}).items()}
    seed = int(folder.name.rsplit("_s", 1)[1]) if "_s" in folder.name else -1
    return {"dataset": folder.parent.parent.name, "seed": seed, "split": split, "excess": excess}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", required=True, help="glob of bench.fidelity run folders of a gated variant")
    ap.add_argument("--out", type=Path, default=None, help="also write the report here (markdown)")
    args = ap.parse_args(argv)
    runs = [r for r in (read_run(Path(p)) for p in sorted(glob.glob(args.runs))) if r is not None]
    if not runs:
        raise SystemExit(f"bench.state_gate_read: no run folder with one generator matches {args.runs!r}")
    lines = [f"# Within-type states of gated runs: `{args.runs}`", "",
             "| dataset | seed | split types (fit cells per state) | best k and silhouette excess per type |",
             "|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (r["dataset"], r["seed"])):
        sp = "; ".join(f"{t} {v}" for t, v in r["split"].items()) or "none"
        ex = "; ".join(f"{t} k{k} {e:+.3f}" for t, (k, e) in r["excess"].items()) or "not recorded"
        lines.append(f"| {r['dataset']} | {r['seed']} | {sp} | {ex} |")
    lines += ["", "| dataset | type | runs that split it / runs | excess over the runs that recorded it: "
              "min, median, max (runs) |", "|---|---|---|---|"]
    for ds in sorted({r["dataset"] for r in runs}):
        rs = [r for r in runs if r["dataset"] == ds]
        for t in sorted({t for r in rs for t in (*r["excess"], *r["split"])}):
            ex = np.array([r["excess"][t][1] for r in rs if t in r["excess"]])
            n_split = sum(t in r["split"] for r in rs)  # the split is read from the state counts of every run
            spread = f"{ex.min():+.3f}, {np.median(ex):+.3f}, {ex.max():+.3f} ({len(ex)})" if len(ex) else "none recorded"
            lines.append(f"| {ds} | {t} | {n_split} / {len(rs)} | {spread} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
