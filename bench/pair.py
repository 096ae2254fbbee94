"""A variant against the default, run by run: same dataset, split and training seed (issue 13).

``bench.fidelity`` reports a variant's mean over seeds; between two variants that hides which
seed moved which way. This pairs every finished run of a variant with the run of the reference
model trained on the same dataset, split and seed (its evaluation as ``bench.fidelity`` wrote
it), and reports the paired differences: per run, per dataset, and over all runs.

Run:  python -m bench.pair --runs 'bench/_work/fidelity/*/val/garage_ns1_s*' \\
          --reference 'bench/_work/fidelity/*/val/garage_calp_s*/uncalibrated' --tag ns1_val
(``--reference`` may be given more than once.)
A glob may also name bench.fidelity's one-seed tables (``bench/results/fidelity_val_TAG.csv``, each
beside its ``.md``, whose command gives the split and the seed): the committed record of runs whose
folders are gone.  A table that holds several methods needs ``GLOB::METHOD`` to pick one row, e.g.
``--runs 'bench/results/round23/fidelity_val_r23_scvi_*.csv::garage'`` and
``--reference 'bench/results/round23/fidelity_val_r23_scvi_*.csv::scvi'``.
Writes bench/results/pair_TAG.{md,csv}.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import re
import sys
from pathlib import Path

import numpy as np

from ._common import paired_table, table_start
from .calib_pair import KEYS, _metrics

SHOW = ("c2st_gap", "mia_auc", "seed_mia_auc", "dcr_ratio", "rare_agreement", "tstr_rare_f1")


def _table(path: Path, method: str | None = None) -> tuple[tuple[str, str, int], dict, str] | str:
    """((dataset, split, seed), metrics, what ran) of a one-seed bench.fidelity table (its row of
    ``method`` when one is named), or why it is not one.  Its ``.md`` twin names the split and the
    seed (the CSV has neither)."""
    md = path.with_suffix(".md")
    if not md.exists():
        return f"{path}: no {md.name} beside it (it names the split and the seed)"
    command = next((ln for ln in md.read_text().splitlines() if ln.startswith("Command:")), "")
    # bench.fidelity's own default split is val; a command that names none ran on it
    split, seeds = re.search(r"--split[ =]([\w@.]+)", command), re.search(r"--seeds[ =]([\d,]+)", command)
    if not seeds or "," in seeds.group(1):
        return f"{path}: not a one-seed bench.fidelity table (its .md's command names no single --seeds)"
    with path.open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("method") != "real (control)"
                and (method is None or r.get("method") == method)]
    if len(rows) != 1 or rows[0].get("n_seeds") != "1":
        n = rows[0].get("n_seeds") if len(rows) == 1 else "-"
        which = f" of method {method!r}" if method else " (name one with GLOB::METHOD)" if len(rows) > 1 else ""
        return f"{path}: expected one method row{which} over one seed, found {len(rows)} row(s) (n_seeds {n})"
    r = rows[0]

    def num(k):
        return float(r[k]) if r.get(k) not in (None, "") else None

    key = (r["dataset"], split.group(1) if split else "val", int(seeds.group(1)))
    return key, {k: num(k) for k in KEYS}, f"{r['method']} (one-seed tables, no row key)"


def _run(path: Path, method: str | None = None) -> tuple[tuple[str, str, int], dict, str] | str:
    """((dataset, split, seed), metrics, what ran) of a finished run folder (its row.json may be
    one level up) or of a one-seed table (``_table``, its row of ``method``), or why it is not one."""
    if path.suffix == ".csv":
        return _table(path, method)
    if method is not None:
        return f"{path}: ::{method} picks a row of a table; a run folder holds one method"
    row_file = next((p / "row.json" for p in (path, path.parent) if (p / "row.json").exists()), None)
    done = path / "evaluate" / "eval.garage_metrics.json"
    if row_file is None:
        return f"{path}: no row.json (not a bench.fidelity run, or unfinished)"
    row = json.loads(row_file.read_text())
    if row.get("status") != "ok":
        return f"{path}: status {row.get('status')!r}"
    if not done.exists():
        return f"{path}: no evaluation"
    what = f"{row.get('method', '?')} (key {row.get('key', '?')})"
    if row_file.parent != path:  # a folder inside the run (e.g. calib_pair's uncalibrated cells)
        what += f", its {path.name}/ folder"
    return (row["dataset"], row["split"], int(row["seed"])), _metrics(json.loads(done.read_text())), what


def _collect(*patterns: str) -> tuple[dict, list[str], set[str]]:
    """{key: metrics}, the folders skipped (and why), and what ran (method and code) in the rest."""
    out, skipped, what = {}, [], set()
    picks = [pattern.rsplit("::", 1) if "::" in pattern else (pattern, None) for pattern in patterns]
    for pattern, m in picks:
        if m is not None and not m.strip():
            raise SystemExit(f"{pattern}:: names no method: write GLOB::METHOD, e.g. '...csv::garage'")
    for p, method in sorted({(p, m) for pattern, m in picks for p in glob.glob(pattern)}, key=str):
        got = _run(Path(p), method)
        if isinstance(got, str):
            skipped.append(got)
            continue
        if got[0] in out:
            raise SystemExit(f"{' '.join(patterns)!r} match two runs of {got[0]}: make the globs narrower")
        out[got[0]] = got[1]
        what.add(got[2])
    return out, skipped, what


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", required=True, help="glob of the variant's bench.fidelity run folders")
    ap.add_argument("--reference", required=True, action="append",
                    help="glob of the reference runs (e.g. the default's); repeat to add more")
    ap.add_argument("--tag", required=True)
    args = ap.parse_args(argv)

    (var, skip_var, what_var), (ref, skip_ref, what_ref) = _collect(args.runs), _collect(*args.reference)
    keys = sorted(set(var) & set(ref))
    if not keys:
        why = "; ".join(skip_var + skip_ref)
        print("no run of the variant has a reference run of the same dataset, split and seed"
              + (f" (left out: {why})" if why else ""), file=sys.stderr)
        return 1
    rows = []
    for k in keys:
        r = {"dataset": k[0], "split": k[1], "seed": k[2]}
        for m in KEYS:
            r[f"{m}_ref"], r[f"{m}_var"] = ref[k][m], var[k][m]
        rows.append(r)
    df, lines = table_start(rows, "pair", args.tag, "Variant against reference, paired by training seed", argv)
    unpaired = sorted(set(var) - set(ref))
    lines += [f"Reference: {', '.join(sorted(what_ref))}. Variant: {', '.join(sorted(what_var))} "
              "(bench.fidelity's method name and its row key: a hash of the method, its options and the "
              "GAN and GAT code that trained it).", ""]
    if skip_var or skip_ref:
        lines += ["Matched but left out (unfinished, or no row of the named method): " + "; ".join(skip_var + skip_ref) + ".", ""]
    lines += ["Each row: the reference run / the variant's run of the same dataset, split and training seed "
              "(`c2st_gap` = C2ST AUC minus its real-vs-real control; 0 is perfect). Per dataset: mean "
              "reference / mean variant (mean paired difference).", ""]
    if unpaired:
        lines += [f"Variant runs without a reference run (left out): {', '.join(f'{d} {s} s{n}' for d, s, n in unpaired)}.", ""]
    head = "| dataset | split | seed | " + " | ".join(f"{k}: ref / var" for k in SHOW) + " |"
    lines += [head, "|---|---|---|" + "---|" * len(SHOW)]

    def cell(a, b):
        if a is None or b is None or np.isnan(a) or np.isnan(b):
            return "–"
        return f"{a:.3f} / {b:.3f} ({b - a:+.3f})"

    for r in rows:
        lines.append(f"| {r['dataset']} | {r['split']} | {r['seed']} | "
                     + " | ".join(cell(r[f"{k}_ref"], r[f"{k}_var"]) for k in SHOW) + " |")
    lines += [""] + paired_table(df, SHOW, "ref", "var", "the variant")
    dm = (df["mia_auc_var"] - df["mia_auc_ref"]).astype(float).dropna()
    lines[-1] += f" MIA AUC mean difference {dm.mean():+.4f}."
    from ._common import RESULTS

    (RESULTS / f"pair_{args.tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
