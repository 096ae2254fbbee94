"""Paired 95 % t-intervals over bench.pair's runs: is a variant's difference from its reference resolved?

``bench.pair`` reports the mean, median and range of the paired differences; this adds the interval
(Student t over runs, each run one pair) and how many runs moved each way, for one pair table or for
several pooled (e.g. two rounds' pairs of the same two methods, scored by the same evaluation).

Run:  python -m bench.pair_interval bench/results/round23/pair_r23_garage_vs_scvi_val.csv \\
          bench/results/round21/pair_r21_garage_vs_scvi_val.csv
Prints what each table compared (its .md's Reference / Variant line: pool only tables of the same
comparison), then one line per metric: runs, mean difference (variant − reference) [95 % interval],
and how many runs were lower, equal and higher with the variant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from ._common import t_halfwidth

from .pair import SHOW


def interval(d: np.ndarray) -> tuple[float, float, float]:
    """Mean of the paired differences and its 95 % Student-t interval (nan half-width under 2 runs)."""
    m, hw = float(np.mean(d)), t_halfwidth(d)
    return m, m - hw, m + hw


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pairs", nargs="+", help="bench.pair CSV tables (pooled when more than one)")
    args = ap.parse_args(argv)
    frames, what = [], []
    for p in args.pairs:
        try:
            t = pd.read_csv(p)
        except (OSError, ValueError, pd.errors.EmptyDataError) as e:  # ParserError is a ValueError
            print(f"{p}: cannot read a bench.pair table ({str(e).splitlines()[0] if str(e) else type(e).__name__})",
                  file=sys.stderr)
            return 2
        missing = [c for c in ("dataset", "split", "seed") if c not in t.columns]
        if missing or not any(c.endswith("_var") for c in t.columns):
            print(f"{p}: not a bench.pair table (no {', '.join(missing) or '*_ref / *_var'} column)", file=sys.stderr)
            return 2
        frames.append(t)
        try:
            text = Path(p).with_suffix(".md").read_text()
        except (OSError, UnicodeDecodeError):  # no readable .md: the methods stay unnamed
            text = ""
        line = next((ln for ln in text.splitlines() if ln.startswith("Reference:")), None)
        # pooling two different comparisons would be meaningless: show what each table compared
        what.append(f"{p}: {line.split(' (bench.fidelity')[0] if line else 'no readable .md beside it: methods not named'}")
    df = pd.concat(frames, ignore_index=True)
    dup = df.duplicated(["dataset", "split", "seed"])
    if dup.any():
        r = df[dup].iloc[0]
        print(f"{r['dataset']} {r['split']} s{r['seed']} appears twice: the tables overlap", file=sys.stderr)
        return 2
    print(f"{len(df)} paired runs from {len(args.pairs)} table(s); difference = variant − reference")
    print("\n".join(what))
    for k in SHOW:
        if f"{k}_var" not in df or f"{k}_ref" not in df:
            continue
        d = (df[f"{k}_var"] - df[f"{k}_ref"]).dropna().to_numpy(dtype=float)
        if d.size == 0:
            continue
        m, lo, hi = interval(d)
        print(f"{k}: {d.size} runs, mean {m:+.4f} [95 % t {lo:+.4f}, {hi:+.4f}], with the variant "
              f"lower in {int((d < 0).sum())}, equal in {int((d == 0).sum())}, higher in {int((d > 0).sum())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
