"""How much of ``--state-gate``'s silhouette excess is the estimate's own noise? (round 26)

The gate decides per type from one estimate: k-means of the type's codes, one draw of a Gaussian
reference and a silhouette subsample, all seeded by the run's seed.  This trains one run's
autoencoder again (``train_in_process`` with one adversarial step; with the run's seed it is the
run's own) so the codes are fixed, then runs the gate's own assignment (``_assign_states``) with
``--estimates`` different estimator seeds and reports, per type scored, the best excess: mean,
sd, min, max, and how many estimates reach the gate.  What moves between runs beyond this spread
is the autoencoder.

Run:  python -m bench.state_gate_noise \\
        --seeds-from bench/_work/fidelity/kang_ifnb/val2/garage_s25/kang_ifnb.seeds.h5ad --seed 25 \\
        [--k-max 4] [--gate 0.045] [--estimates 20] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import numpy as np

from ._common import train_in_process


def excess_spread(data, k_max: int, min_cells: int, gate: float, seeds) -> dict:
    """Per type index: the best excess of ``_assign_states`` under each estimator seed in *seeds*."""
    from garage.gan._model import _assign_states

    out: dict[int, list[float]] = {}
    for s in seeds:
        d = copy.copy(data)  # the assignment rewrites labels and the seed table: work on a copy
        d.labels = None
        _assign_states(d, k_max, min_cells, int(s), gate)
        for t, v in d.state_excess.items():
            out.setdefault(t, []).append(v[1])
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds-from", type=Path, required=True, help="a PREFIX.seeds.h5ad (GAT output)")
    ap.add_argument("--seed", type=int, default=0, help="the run's seed (its autoencoder)")
    ap.add_argument("--k-max", type=int, default=4)
    ap.add_argument("--min-cells", type=int, default=50)
    ap.add_argument("--gate", type=float, default=0.045)
    ap.add_argument("--estimates", type=int, default=20)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    _, model = train_in_process(args.seeds_from, args.seed, 1, {"gan_steps": 1})
    cats = model.meta["categories"]
    n_fit = np.bincount(model.data.types.numpy()[model.data.fit_rows], minlength=len(cats))
    spread = excess_spread(model.data, args.k_max, args.min_cells, args.gate,
                           range(1000, 1000 + args.estimates))
    rows = {}
    for t, v in sorted(spread.items()):
        a = np.asarray(v)
        rows[cats[t]] = {"fit_cells": int(n_fit[t]), "mean": float(a.mean()), "sd": float(a.std(ddof=1)),
                         "min": float(a.min()), "max": float(a.max()), "reach_gate": int((a >= args.gate).sum()),
                         "estimates": len(a)}
        r = rows[cats[t]]
        print(f"{cats[t]:24s} fit {r['fit_cells']:5d}  excess mean {r['mean']:+.4f} sd {r['sd']:.4f} "
              f"range {r['min']:+.4f} to {r['max']:+.4f}  reach {args.gate}: {r['reach_gate']} / {len(a)}", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"seeds_from": str(args.seeds_from), "seed": args.seed, "k_max": args.k_max,
                                        "gate": args.gate, "types": rows}, indent=1))


if __name__ == "__main__":
    main()
