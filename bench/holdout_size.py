"""Does a C2ST difference between two methods depend on how many holdout cells score it? (issue 13)

GARAGE ties scVI on mouse_bladder's validation split but trails it on the test split, whose holdout
is 1.26x larger (422 against 334 cells). A larger holdout gives the classifier more cells, so it
can find finer differences. This scores finished bench.fidelity run folders' synthetic files,
unchanged, against the same preprocessed file with its holdout cut to N cells at random (the train
cells kept; the cut is uniform over the holdout, not stratified by type), several times, and
reports the C2ST AUC, its control and the gap per cut. Nothing is trained again. With N = the
holdout's size (and one cut) it reproduces the run's own C2ST: the check that this path scores as
bench.fidelity did.

``--holdout test`` asks the other question, for validation-split runs: do the same models, trained
on the validation split's train cells, also tie on the *test* holdout? Their synthetic files are
scored against the test split's preprocessed file with the validation holdout's cells removed, so
the train cells are exactly the ones the models saw and the holdout is the test one (the control,
train cells against holdout, changes with it). If the tie holds there, the validation/test contrast
comes from how many cells the test-split models train on; if it breaks, from the test holdout cells.

``--holdout unseen`` draws, for each cut, a new holdout for validation-split runs: a stratified
draw (per type, about the validation holdout's size in all: each type's share is rounded) from
every cell those models never saw (the
validation and the test holdouts together), the rest of those cells left out. Over many cuts it
shows how far the methods' difference moves with the draw of holdout cells alone, which the
training-seed intervals of one split cannot show (every seed shares the split's one holdout).
Diagnosis only: nothing is tuned on it. Both modes take the runs of any validation fold (``val``,
``val2`` ..).

``--holdout halves`` needs no other cells: each cut keeps a stratified half of the run's own
holdout. For a mean over cells, a half drawn without replacement from n cells varies as much as a
fresh draw of n cells would, so the spread of a methods' difference over halves estimates how far
the holdout draw alone moves it, on any split (test included). The C2ST is not a plain mean:
its classifier learns from half the cells, so the gaps shrink (GARAGE's 0.086 -> 0.042 on
mouse_bladder's validation models) and so does their spread. Checked against ``unseen`` there
(round 24 notes), halves gave an sd of 0.008 for the 4-seed mean of GARAGE - scVI where the
unseen draws gave 0.010 (itself low: those draws share cells). Read it as a lower bound.

Run:  python -m bench.holdout_size --runs 'bench/_work/fidelity/mouse_bladder/test/garage_s[01]' \\
          --n-holdout 334 --cuts 3 --out bench/results/round23/holdout_size_mouse_bladder_test_garage.json
      python -m bench.holdout_size --runs 'bench/_work/fidelity/mouse_bladder/val/*_s[0-3]' --holdout test \\
          --out bench/results/round24/val_models_on_test_holdout_mouse_bladder.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

from ._common import finished_runs, machine, t_halfwidth


#: other figures kept per row when the evaluation has them (these reproduce a run's own row at its own
#: holdout; TSTR does not at the 2 repeats used here, so it is left out)
EXTRA = ("rare_agreement", "mia_auc")
#: the rows' key: one scoring of one run on one holdout
KEY = ["dataset", "split", "holdout", "cut", "n_holdout", "seed"]


def cut_holdout(real, n_keep: int, seed: int):
    """*real* with its holdout cut to *n_keep* cells drawn at random (train cells all kept)."""
    from garage import constants as C

    hold = np.flatnonzero(real.obs[C.OBS_SPLIT].astype(str).to_numpy() == C.SPLIT_HOLDOUT)
    if not 0 < n_keep <= len(hold):
        raise SystemExit(f"bench.holdout_size: --n-holdout must be in 1..{len(hold)} (the holdout's size)")
    keep = np.ones(real.n_obs, dtype=bool)
    keep[np.random.default_rng(seed).choice(hold, len(hold) - n_keep, replace=False)] = False
    return real[keep].copy()


def test_holdout_with_val_train(test, val):
    """The test split's file *test* with the validation holdout's cells (of *val*) removed: train
    cells = the validation split's train cells, holdout = the test holdout."""
    from garage import constants as C

    v_split = val.obs[C.OBS_SPLIT].astype(str)
    v_train = set(val.obs_names[v_split.to_numpy() == C.SPLIT_TRAIN])
    v_hold = set(val.obs_names[v_split.to_numpy() == C.SPLIT_HOLDOUT])
    t_split = test.obs[C.OBS_SPLIT].astype(str).to_numpy()
    t_train = set(test.obs_names[t_split == C.SPLIT_TRAIN])
    if v_train | v_hold != t_train or list(test.var_names) != list(val.var_names):
        raise SystemExit("bench.holdout_size: the validation file is not a re-split of the test "
                         "file's train cells (cells or genes differ)")
    keep = ~test.obs_names.isin(list(v_hold))
    return test[keep].copy()


def unseen_holdout(test, val, seed: int):
    """The validation split's train cells plus a fresh holdout: a stratified draw (per type) of as
    many cells as the validation holdout has, from every cell those train cells leave out."""
    import pandas as pd

    from garage import constants as C
    from garage.preprocess import stratified_split

    from .fidelity import split_strata

    test_holdout_with_val_train(test, val)  # the same checks: val must re-split test's train cells
    v_split = val.obs[C.OBS_SPLIT].astype(str).to_numpy()
    unseen = ~test.obs_names.isin(list(val.obs_names[v_split == C.SPLIT_TRAIN]))
    n_hold = int((v_split == C.SPLIT_HOLDOUT).sum())
    drawn = stratified_split(split_strata(test.obs, np.flatnonzero(unseen)), n_hold / int(unseen.sum()),
                             seed) == C.SPLIT_HOLDOUT
    keep = ~unseen
    keep[np.flatnonzero(unseen)[drawn]] = True
    out = test[keep].copy()
    split = np.where(unseen[keep], C.SPLIT_HOLDOUT, C.SPLIT_TRAIN)
    out.obs[C.OBS_SPLIT] = pd.Categorical(split, categories=[C.SPLIT_TRAIN, C.SPLIT_HOLDOUT])
    return out


def half_holdout(real, seed: int):
    """*real* with its holdout cut to a stratified half (per type, ``stratified_split``'s rounding)."""
    from garage import constants as C
    from garage.preprocess import stratified_split

    from .fidelity import split_strata

    hold = np.flatnonzero(real.obs[C.OBS_SPLIT].astype(str).to_numpy() == C.SPLIT_HOLDOUT)
    drop = stratified_split(split_strata(real.obs, hold), 0.5, seed) == C.SPLIT_HOLDOUT
    keep = np.ones(real.n_obs, dtype=bool)
    keep[hold[drop]] = False
    return real[keep].copy()


def difference(rows: list[dict], variant: str, reference: str) -> list[str]:
    """Lines of a table: *variant* - *reference* C2ST gap per training seed, for every holdout and
    cut both were scored on (rows paired by dataset, split, holdout, cut, holdout size and seed),
    with the mean over seeds; then, per holdout kind, the mean and the spread over cuts of those
    means, taken over the seeds paired in every cut of that kind (so a seed missing from one cut
    does not pass for a change of draw), and the seed-to-seed sd within one holdout."""
    import pandas as pd

    df = pd.DataFrame(rows)
    if df.empty or "method" not in df or not {variant, reference} <= set(df["method"]):
        raise SystemExit(f"bench.holdout_size: --difference needs rows of both {variant} and {reference}")
    if "holdout" not in df:  # outputs from before --holdout scored the run's own holdout
        df["holdout"] = "own"
    df["holdout"] = df["holdout"].fillna("own")
    dup = df.duplicated(["method", *KEY])
    if dup.any():
        r = df[dup].iloc[0]
        raise SystemExit(f"bench.holdout_size: the same scoring twice in the --from files ({r['method']}, "
                         f"{r['dataset']} {r['split']} seed {r['seed']}, holdout {r['holdout']} cut {r['cut']}): "
                         "pass each output once")
    v = df[df.method == variant].set_index(KEY)["gap"]
    r = df[df.method == reference].set_index(KEY)["gap"]
    d = (v - r).dropna().rename("d").reset_index()
    if d.empty:
        raise SystemExit(f"bench.holdout_size: no (dataset, split, holdout, cut, seed) has both {variant} and {reference}")
    seeds = sorted(d.seed.unique())
    out = [f"{variant} - {reference}, C2ST gap (C2ST AUC minus its control), per training seed", "",
           "| dataset | split | holdout | cut | n_holdout | " + " | ".join(f"s{x}" for x in seeds) + " | mean |",
           "|" + "---|" * (len(seeds) + 6)]
    for (ds, sp, ho, cut, nh), g in d.groupby(KEY[:-1], sort=True):
        per = dict(zip(g.seed, g.d))
        cells = [f"{per[x]:+.4f}" if x in per else "" for x in seeds]
        out.append(f"| {ds} | {sp} | {ho} | {cut} | {nh} | " + " | ".join(cells) + f" | {g.d.mean():+.4f} |")
    out.append("")
    for (ds, sp, ho), g in d.groupby(["dataset", "split", "holdout"], sort=True):
        cuts = g.groupby(["cut", "n_holdout"]).seed.apply(frozenset)
        common = sorted(frozenset.intersection(*cuts))
        if not common:
            out.append(f"{ds} {sp} on {ho}: no seed is paired in every cut")
            continue
        g = g[g.seed.isin(common)]
        m = g.groupby(["cut", "n_holdout"]).d.mean()
        line = (f"{ds} {sp} on {ho}: {len(m)} holdout(s), seeds {','.join(map(str, common))}: "
                f"mean of the per-cut means {m.mean():+.4f}")
        if len(m) > 1:
            line += f", range {m.min():+.4f} to {m.max():+.4f}, sd over cuts {m.std(ddof=1):.4f}"
        if len(common) > 1:
            var = g.groupby(["cut", "n_holdout"]).d.var(ddof=1)
            line += f"; seed-to-seed sd within one holdout {np.sqrt(var.mean()):.4f}"
            if len(m) > 1:  # each seed averaged over the cuts, then a t-interval over the seeds
                per_seed = g.groupby("seed").d.mean()
                hw = t_halfwidth(per_seed.to_numpy())
                line += ("; per seed over the cuts " + ", ".join(f"s{k} {v:+.4f}" for k, v in per_seed.items())
                         + f", 95 % t over seeds {per_seed.mean() - hw:+.4f} to {per_seed.mean() + hw:+.4f}"
                         " (the pool's own draw not counted)")
        dropped = sorted(set(d[(d.dataset == ds) & (d.split == sp) & (d.holdout == ho)].seed) - set(common))
        if dropped:
            line += f" (seeds {','.join(map(str, dropped))} left out: not paired in every cut)"
        out.append(line)
    return out


def main(argv=None) -> int:
    import anndata as ad

    from garage import constants as C
    from garage.evaluate import EvaluateConfig, evaluate_adata

    from .fidelity import SPLITS, prepare

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", action="append", help="glob of bench.fidelity run folders")
    ap.add_argument("--difference", nargs=2, metavar=("VARIANT", "REFERENCE"),
                    help="score nothing: print VARIANT - REFERENCE per seed, holdout and cut from the "
                         "rows of earlier outputs (--from, several)")
    ap.add_argument("--from", dest="sources", action="append", default=[], type=Path,
                    help="with --difference: an earlier output JSON of this tool")
    ap.add_argument("--n-holdout", type=int, default=None,
                    help="holdout cells to keep in each cut (default: all, one cut)")
    ap.add_argument("--holdout", choices=["own", "test", "unseen", "halves"], default="own",
                    help="own: the run's own holdout; test: validation-split runs scored on the test "
                         "holdout, trained cells unchanged; unseen: validation-split runs scored on "
                         "--cuts fresh draws from all cells they never saw; halves: --cuts stratified "
                         "halves of the run's own holdout")
    ap.add_argument("--cuts", type=int, default=None,
                    help="random cuts per run (seeds 100, 101, ...; default 3); not with a whole holdout")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if args.difference:
        if not args.sources:
            ap.error("--difference reads rows from --from FILE (one or more)")
        if args.runs or args.out:
            ap.error("--difference scores nothing: leave out --runs and --out")
        rows = []
        for src in args.sources:
            try:
                rows += json.loads(src.read_text())["rows"]
            except (OSError, ValueError, KeyError) as e:
                raise SystemExit(f"bench.holdout_size: cannot read rows from {src}: {e}") from None
        print("\n".join(difference(rows, *args.difference)))
        return 0
    if not args.runs or args.out is None:
        ap.error("--runs and --out are required (unless --difference)")
    if args.cuts is not None and args.cuts < 1:
        ap.error("--cuts must be >= 1")
    if args.holdout in ("unseen", "halves") and args.n_holdout is not None:
        ap.error(f"--holdout {args.holdout} sets the holdout's size itself; leave out --n-holdout")
    if args.n_holdout is None and args.holdout not in ("unseen", "halves"):
        if args.cuts not in (None, 1):
            ap.error(f"--holdout {args.holdout} without --n-holdout scores the whole holdout once: "
                     "leave out --cuts")
        args.cuts = 1
    args.cuts = 3 if args.cuts is None else args.cuts
    from garage._utils import check_writable_dir, write_text_atomic
    from garage.errors import GarageError

    try:  # before minutes of scoring, not after
        check_writable_dir(args.out.parent)
    except GarageError as e:
        raise SystemExit(f"bench.holdout_size: {e}") from None
    files: dict[tuple[str, str], object] = {}

    def read(ds: str, split: str):
        if (ds, split) not in files:
            files[(ds, split)] = ad.read_h5ad(prepare(ds, split))
        return files[(ds, split)]

    jobs = []  # every run checked (and its holdout built) before any is scored
    for f, row, syn in finished_runs(args.runs, log=sys.stderr):
        if args.holdout in ("test", "unseen") and row["split"] not in SPLITS[1:]:
            print(f"skip {f}: --holdout {args.holdout} scores the runs of a validation fold only "
                  f"({', '.join(SPLITS[1:])}), not {row['split']}", file=sys.stderr)
            continue
        real = read(row["dataset"], row["split"])
        test = read(row["dataset"], "test") if args.holdout in ("test", "unseen") else None
        if test is not None:
            built = test_holdout_with_val_train(test, real)  # refuses a file that is not a re-split
            real = built if args.holdout == "test" else real
        if args.n_holdout is not None:
            cut_holdout(real, args.n_holdout, 0)  # refuses an N above the holdout's size
        jobs.append((row, syn, real, test))
    rows = []
    for row, syn, real, test in jobs:
        cells = ad.read_h5ad(syn)
        for c in range(args.cuts):
            if args.holdout == "unseen":
                cut = unseen_holdout(test, real, 100 + c)
            elif args.holdout == "halves":
                cut = half_holdout(real, 100 + c)
            else:
                cut = real if args.n_holdout is None else cut_holdout(real, args.n_holdout, 100 + c)
            n_hold = int((cut.obs[C.OBS_SPLIT].astype(str) == C.SPLIT_HOLDOUT).sum())
            doc = evaluate_adata(cut, cells,
                                 EvaluateConfig(plots=False, n_repeats=2, seed=0, c2st_draws=20))
            m = doc["metrics"]["c2st_auc"]
            rows.append({"dataset": row["dataset"], "split": row["split"], "seed": int(row["seed"]),
                         "method": row["method"], "holdout": args.holdout, "cut": c,
                         "n_holdout": n_hold,
                         "c2st_auc": m["value"], "control": m["control"], "gap": m["value"] - m["control"],
                         **{k: doc["metrics"][k]["value"] for k in EXTRA if k in doc["metrics"]}})
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
