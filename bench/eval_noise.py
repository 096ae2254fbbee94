"""How much of a benchmark run's C2ST is the evaluation's own noise? (issue 13, round 20)

Every comparison in ``bench.fidelity`` and ``bench.pair`` reads one evaluation of one synthetic
file (evaluation seed 0). This scores finished run folders' synthetic files again, unchanged,
under several evaluation seeds and with several numbers of C2ST draws (``garage evaluate
--c2st-draws``), and reports:

- per run and draw count: the sd over evaluation seeds of the C2ST AUC, of its control and of
  the gap (what one evaluation adds to a run's figure);
- per pair of runs of the same dataset, split and training seed (two trainings of one setting, or
  a variant and its reference; ``--pair A,B`` names the two runs' folder names without the
  ``_sSEED``): the gap
  difference B - A under each evaluation seed, its mean (the training difference, with the
  evaluation averaged out) and its sd over evaluation seeds (what the evaluation adds to a
  paired difference).

Run:  python -m bench.eval_noise --runs 'bench/_work/fidelity/*/val/garage_lr2*_s13' \\
          --eval-seeds 0,1,2,3 --draws 3,20 --pair garage_lr2,garage_lr2b --tag s13
Writes bench/results/eval_noise_TAG.{md,csv}.
"""

from __future__ import annotations

import argparse
import glob
from pathlib import Path

import numpy as np

from ._common import finished_runs, table_start


def score(real, syn, eval_seed: int, draws: int) -> tuple[float, float]:
    """(C2ST AUC, control) of one synthetic AnnData under one evaluation seed and draw count."""
    from garage.evaluate import EvaluateConfig, evaluate_adata

    # n_repeats only sets the intervals' draws, which this does not read; the value has its own
    doc = evaluate_adata(real, syn, EvaluateConfig(plots=False, n_repeats=2, seed=eval_seed, c2st_draws=draws))
    m = doc["metrics"]["c2st_auc"]
    if m["value"] is None or m["control"] is None:
        raise SystemExit("bench.eval_noise: the holdout is too small for a C2ST")
    return float(m["value"]), float(m["control"])


def main(argv=None) -> None:
    import anndata as ad
    import pandas as pd

    from .fidelity import prepare

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", action="append", required=True, help="glob of bench.fidelity run folders")
    ap.add_argument("--eval-seeds", default="0,1,2,3")
    ap.add_argument("--draws", default="3,20", help="C2ST draw counts to compare")
    ap.add_argument("--pair", default=None, help="A,B: run-folder name prefixes to pair (B - A)")
    ap.add_argument("--tag", required=True)
    args = ap.parse_args(argv)
    eval_seeds = [int(s) for s in args.eval_seeds.split(",")]
    draws = [int(d) for d in args.draws.split(",")]
    if not any(glob.glob(g) for g in args.runs):
        raise SystemExit(f"bench.eval_noise: no run folder matches {args.runs}")
    rows = []
    for f, row, syn_path in finished_runs(args.runs):
        real = ad.read_h5ad(prepare(row["dataset"], row["split"]))
        syn = ad.read_h5ad(syn_path)
        for e in eval_seeds:
            for d in draws:
                auc, ctrl = score(real, syn, e, d)
                rows.append({"dataset": row["dataset"], "split": row["split"], "seed": int(row["seed"]),
                             "run": f.name.rsplit("_s", 1)[0], "eval_seed": e, "draws": d,
                             "c2st_auc": auc, "control": ctrl, "gap": auc - ctrl})
                print(f"{f}: eval seed {e}, {d} draws: C2ST {auc:.4f} control {ctrl:.4f}", flush=True)
    df, md = table_start(rows, "eval_noise", args.tag, "C2ST of unchanged synthetic files under several "
                         "evaluation seeds", argv)
    md += ["Per run and draw count: sd over the evaluation seeds (the file and the real cells never "
           "change; only the evaluation's subsamples, CV folds and shared PCA do).", "",
           "| dataset | split | run | seed | draws | C2ST mean | sd C2ST | sd control | sd gap |",
           "|---|---|---|---|---|---|---|---|---|"]
    if len(eval_seeds) < 2:
        md.append("(one evaluation seed: no sd)")
    for (ds, sp, run, seed, d), g in df.groupby(["dataset", "split", "run", "seed", "draws"], sort=True):
        md.append(f"| {ds} | {sp} | {run} | {seed} | {d} | {g.c2st_auc.mean():.3f} | {g.c2st_auc.std(ddof=1):.4f} | "
                  f"{g.control.std(ddof=1):.4f} | {g.gap.std(ddof=1):.4f} |")
    for d, g in df.groupby("draws"):
        sd = g.groupby(["dataset", "split", "run", "seed"]).c2st_auc.std(ddof=1)
        md.append("")
        md.append(f"{d} draws: root-mean-square sd of the C2ST AUC over {len(sd)} runs "
                  f"{float(np.sqrt((sd ** 2).mean())):.4f}.")
    if args.pair:
        a, b = args.pair.split(",")
        md += ["", f"Pairs ({b} − {a}, same dataset, split, training seed and evaluation seed): gap difference",
               "", "| dataset | seed | draws | per evaluation seed | mean | sd over evaluation seeds |",
               "|---|---|---|---|---|---|"]
        pairs = []
        for (ds, sp, seed, d), g in df.groupby(["dataset", "split", "seed", "draws"], sort=True):
            ga, gb = g[g.run == a].set_index("eval_seed"), g[g.run == b].set_index("eval_seed")
            common = ga.index.intersection(gb.index)
            if len(common) == 0:
                continue
            diff = (gb.loc[common, "gap"] - ga.loc[common, "gap"]).to_numpy()
            pairs.append({"draws": d, "mean": diff.mean(), "sd": diff.std(ddof=1) if len(diff) > 1 else np.nan})
            md.append(f"| {ds} | {seed} | {d} | {', '.join(f'{x:+.3f}' for x in diff)} | {diff.mean():+.4f} | "
                      f"{pairs[-1]['sd']:.4f} |")
        if not pairs:
            md.append(f"(no dataset, split and seed has runs of both {a} and {b})")
        for d, g in (pd.DataFrame(pairs).groupby("draws") if pairs else ()):
            md.append("")
            spread = f"{g['mean'].std(ddof=1):.4f}" if len(g) > 1 else "– (one pair)"
            md.append(f"{d} draws, {len(g)} pairs: sd of a paired difference over evaluation seeds (rms) "
                      f"{float(np.sqrt((g['sd'] ** 2).mean())):.4f}; sd of the pairs' means across datasets "
                      f"and seeds (the paired effect as it varies between runs, evaluation averaged) {spread}.")
    out = Path(__file__).resolve().parent / "results" / f"eval_noise_{args.tag}.md"
    out.write_text("\n".join(md) + "\n")
    print(out)


if __name__ == "__main__":
    main()
