"""Calibration on and off with the same trained weights (issue 13, round 12, paired check).

For every finished ``bench.fidelity`` GARAGE run whose model carries a per-type calibration
(``garage gan --calibrate mean|diag``), write a copy of its generator without the calibration,
generate from it with the run's seed (``garage generate``: the same draws as the run's own
cells, up to the calibration) and evaluate it exactly as ``bench.fidelity`` evaluated the run.
The difference between the two rows is the calibration's effect alone: no training noise.

Run:  python -m bench.calib_pair --runs 'bench/_work/fidelity/*/test/garage_cal_s*' --tag test
Writes bench/results/calib_pair_TAG.{md,csv}.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

from ._common import RESULTS, measure, paired_table, table_start
from .fidelity import _garage, evaluate_args, prepare

KEYS = ("c2st_gap", "mia_auc", "seed_mia_auc", "dcr_ratio", "rare_agreement", "tstr_rare_f1", "tstr_macro_f1")


def _metrics(doc: dict) -> dict:
    m = doc["metrics"]

    def v(k, part="value"):
        x = m.get(k, {})
        return x.get(part) if isinstance(x, dict) else None

    out = {"c2st_gap": (v("c2st_auc") - v("c2st_auc", "control")) if v("c2st_auc") is not None else None}
    for k in KEYS[1:]:
        out[k] = v(k)
    return out


def uncalibrated_copy(model: Path, dest: Path) -> Path:
    import torch

    payload = torch.load(model, map_location="cpu", weights_only=True)
    if "calib_a" not in payload:
        raise SystemExit(f"{model} carries no calibration")
    for k in [k for k in payload if k.startswith("calib_")]:
        payload.pop(k)
    payload["config"] = dict(payload["config"], calibrate="none")
    torch.save(payload, dest)
    return dest


def pair(run: Path) -> dict | None:
    row = json.loads((run / "row.json").read_text()) if (run / "row.json").exists() else {}
    if row.get("status") != "ok":
        return None
    name, seed = row["dataset"], int(row["seed"])
    model = next(run.glob("*.generator.pt"))
    out = run / "uncalibrated"
    done = out / "evaluate" / "eval.garage_metrics.json"
    if done.exists() and done.stat().st_mtime > model.stat().st_mtime:  # this model's pair was scored
        return _row(run, row, done)
    out.mkdir(exist_ok=True)
    unc = uncalibrated_copy(model, out / "uncal.generator.pt")
    m = measure(_garage("generate", "--model", unc, "--outdir", out, "--prefix", "uncal", "--seed", seed,
                        "--provenance"))
    if m["rc"] != 0:
        print(f"{run}: generate failed", flush=True)
        return None
    ev = evaluate_args(prepare(name, row["split"]), out / "uncal.generated.h5ad", out / "evaluate",
                       next(run.glob("*.seeds.h5ad")), next(out.glob("uncal.generated*provenance*"), None))
    if measure(_garage(*ev))["rc"] != 0:  # evaluated as bench.fidelity evaluated the run
        print(f"{run}: evaluate failed", flush=True)
        return None
    return _row(run, row, done)


def _row(run: Path, row: dict, done: Path) -> dict:
    off = _metrics(json.loads(done.read_text()))
    on = _metrics(json.loads((run / "evaluate" / "eval.garage_metrics.json").read_text()))
    res = {"dataset": row["dataset"], "seed": int(row["seed"])}
    for k in KEYS:
        res[f"{k}_off"], res[f"{k}_on"] = off[k], on[k]
    print(json.dumps(res), flush=True)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", required=True, help="glob of bench.fidelity run folders")
    ap.add_argument("--tag", default="test")
    args = ap.parse_args(argv)

    rows = [r for r in (pair(Path(p)) for p in sorted(glob.glob(args.runs))) if r]
    if not rows:
        print("no finished runs", file=sys.stderr)
        return 1
    df, lines = table_start(rows, "calib_pair", args.tag, "Calibration on / off, same trained weights", argv)
    lines += ["Per dataset: mean over training seeds of the run with its calibration (on) and of the same "
             "model's cells generated without it (off; same seed, same draws), and the mean paired "
             "difference on - off with its range over seeds.", ""]
    show = ("c2st_gap", "mia_auc", "seed_mia_auc", "dcr_ratio", "rare_agreement", "tstr_rare_f1")
    lines += paired_table(df, show, "off", "on", "the calibration")
    (RESULTS / f"calib_pair_{args.tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
