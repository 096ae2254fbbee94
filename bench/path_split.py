"""Seeded and unseeded cells apart: C2ST of each path's cells against the holdout (issue 13, round 13).

A GARAGE model makes two kinds of cells: *seeded* ones (a GAT seed's code in the hybrid input) and
*unseeded* ones (noise and labels only; the only kind a ``--shareable-model`` makes). This scores,
for finished ``bench.fidelity`` runs, the run's own cells split by the private provenance (which
cell had a seed), against the run's holdout in the same shared space that ``garage evaluate``
builds: the seeded cells alone, the unseeded cells alone, a random half of all cells and all
cells. Every row uses equal-sized
samples of holdout and synthetic cells (the smaller of the two), kNN C2ST as ``garage evaluate``
computes it (without its 2,000-cell cap: every holdout here is smaller), averaged over ``--draws``
subsample draws; the real control is train cells (those not used to fit the PCA) against the
holdout. ``random_half`` draws its sample from a random half of the cells, so it shows whether
drawing from a pool half the size alone moves the score.

Run:  python -m bench.path_split --runs 'bench/_work/fidelity/*/val/garage_cp_s*' --tag cp_val [--shareable]
(--shareable: also each model saved as `garage gan --shareable-model` saves it, generated and scored.)
Writes bench/results/path_split_TAG.{md,csv}.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

import numpy as np

from ._common import RESULTS, table_start
from .fidelity import prepare

SETS = ("seeded", "unseeded", "random_half", "all", "control")


def _outputs(run: Path) -> tuple[Path, Path] | None:
    """(synthetic h5ad, provenance tsv) of a run folder (or of its ``uncalibrated`` copy's folder)."""
    for syn in sorted(run.glob("*.synthetic.h5ad")) + sorted(run.glob("*.generated.h5ad")):
        stem = syn.name.rsplit(".", 2)[0]
        prov = next(iter(sorted(run.glob(f"{stem}*provenance*.tsv"))), None)
        if prov is not None:
            return syn, prov
    return None


def _run_files(run: Path) -> tuple[dict, Path] | None:
    """(row.json of the run, its trained model) of a run folder or of its ``uncalibrated`` copy;
    None while the run has no row."""
    row_file = next((p / "row.json" for p in (run, run.parent) if (p / "row.json").exists()), None)
    if row_file is None:
        return None
    model = next(m for m in sorted(run.glob("*.generator.pt")) if "shareable" not in m.name)
    return json.loads(row_file.read_text()), model


def _gap_mia_dcr(doc: dict) -> tuple[float, float, float]:
    """(C2ST gap to the real control, MIA AUC, DCR ratio) of a garage evaluate metrics document."""
    m = doc["metrics"]
    return (m["c2st_auc"]["value"] - m["c2st_auc"]["control"], m["mia_auc"]["value"], m["dcr_ratio"]["value"])


def score(run: Path, draws: int = 8, seed: int = 0) -> dict | None:
    import anndata as ad
    import torch

    from garage import constants as C
    from garage.evaluate._metrics import c2st_auc
    from garage.evaluate._seeds import read_provenance
    from garage.evaluate._space import build_space, check_synthetic

    from garage.gan._config import critic_path_value

    found, files = _outputs(run), _run_files(run)
    if found is None or files is None:
        return None
    row, model = files
    if row.get("status") != "ok":
        return None
    syn_path, prov_path = found
    real = ad.read_h5ad(prepare(row["dataset"], row["split"]))
    syn = check_synthetic(real, ad.read_h5ad(syn_path))  # genes in the real file's order, as evaluate does
    prov = read_provenance(prov_path)
    if not np.array_equal(prov["synthetic_cell"].to_numpy(), syn.obs_names.astype(str).to_numpy()):
        raise SystemExit(f"{prov_path}: rows do not match {syn_path.name}")
    seeded = prov[C.OBS_SEED_ID].to_numpy() != ""
    space = build_space(real, syn, 50, 0)
    ho, sy = space.pca["holdout"], space.pca["synthetic"]
    rng = np.random.default_rng([seed, 7])
    half = rng.random(len(sy)) < 0.5
    sets = {"seeded": sy[seeded], "unseeded": sy[~seeded], "random_half": sy[half], "all": sy,
            "control": space.pca["train"][space.train_ref]}
    cfg = torch.load(model, map_location="cpu", weights_only=True)["config"]
    # the label says how the model was trained (critic path on or off), whatever today's default is
    label = f"critic path {'on' if critic_path_value(cfg.get('critic_path', 'off')) == 'on' else 'off'}"
    if run.name == "uncalibrated":
        label += " (round-12 model, calibration removed)"
    out = {"dataset": row["dataset"], "split": row["split"], "seed": int(row["seed"]),
           "method": label, "run": str(run), "seeded_share": float(seeded.mean())}
    for name, x in sets.items():
        vals = []
        for r in range(draws):
            n = min(len(x), len(ho))
            a = ho[rng.choice(len(ho), n, replace=False)]
            b = x[rng.choice(len(x), n, replace=False)]
            vals.append(c2st_auc(a, b, seed=r))
        out[name] = float(np.mean(vals))
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}), flush=True)
    return out


def shareable(run: Path, seed: int) -> dict:
    """The run's model saved as ``--shareable-model`` saves it (no seed codes: unseeded cells only,
    pooled library sizes for small groups), generated with the run's seed and scored by ``garage
    evaluate`` exactly as ``bench.fidelity`` scored the run: what a user sharing that model would get
    (a run with ``--shareable-model`` also trains with ``--critic-path on`` by default, so for a
    model trained with it off this is what sharing it cost before that default)."""
    from garage.gan import GarageGAN

    from ._common import measure
    from .fidelity import _garage, evaluate_args

    row, model = _run_files(run)
    out = run / "shareable"
    done = out / "evaluate" / "eval.garage_metrics.json"
    if not (done.exists() and done.stat().st_mtime > model.stat().st_mtime):
        out.mkdir(exist_ok=True)
        dest = out / "shareable.generator.pt"
        GarageGAN.load(model).save(dest, shareable=True)
        if measure(_garage("generate", "--model", dest, "--outdir", out, "--prefix", "shareable",
                           "--seed", seed, "--provenance"))["rc"] != 0:
            raise SystemExit(f"{run}: generate failed")
        ev = evaluate_args(prepare(row["dataset"], row["split"]), out / "shareable.generated.h5ad",
                           out / "evaluate", next(iter(sorted(run.parent.glob("*.seeds.h5ad")) + sorted(run.glob("*.seeds.h5ad")))),
                           out / "shareable.generated.provenance.tsv")
        if measure(_garage(*ev))["rc"] != 0:
            raise SystemExit(f"{run}: evaluate failed")
    return dict(zip(("shareable_c2st_gap", "shareable_mia", "shareable_dcr"),
                    _gap_mia_dcr(json.loads(done.read_text()))))


def _own_metrics(run: Path) -> tuple[float, float, float]:
    """(C2ST gap, MIA, DCR ratio) of the run's own cells, as garage evaluate scored them."""
    return _gap_mia_dcr(json.loads(next(p for p in (run / "evaluate" / "eval.garage_metrics.json",
                                                    run / "row.json") if p.exists()).read_text()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", required=True, action="append", help="glob of bench.fidelity run folders (repeatable)")
    ap.add_argument("--tag", required=True)
    ap.add_argument("--draws", type=int, default=8)
    ap.add_argument("--shareable", action="store_true",
                    help="also save each model as --shareable-model would, generate and evaluate it")
    args = ap.parse_args(argv)

    runs = sorted({Path(p) for g in args.runs for p in glob.glob(g)})
    rows = [r for r in (score(p, args.draws) for p in runs) if r]
    if args.shareable:
        for r in rows:
            r.update(shareable(Path(r["run"]), r["seed"]))
            print(json.dumps({k: r[k] for k in ("run", "shareable_c2st_gap", "shareable_mia")}), flush=True)
    if not rows:
        print("no finished runs with a provenance file", file=sys.stderr)
        return 1
    df, lines = table_start(rows, "path_split", args.tag, "Seeded and unseeded cells apart", argv)
    lines += [f"kNN C2ST AUC against the holdout (mean of {args.draws} equal-sized subsample draws; 0.5 = "
             "indistinguishable). `unseeded` is what a shareable model's cells are made of; `random_half` "
             "has as many cells as either path, so only a difference between paths shows against it.", "",
             "| method | dataset | split | seed | seeded share | " + " | ".join(SETS) + " |",
             "|---|---|---|---|---|" + "---|" * len(SETS)]
    for r in rows:
        lines.append(f"| {r['method']} | {r['dataset']} | {r['split']} | {r['seed']} | {r['seeded_share']:.2f} | "
                     + " | ".join(f"{r[k]:.3f}" for k in SETS) + " |")
    # means over the (dataset, split, seed) runs that every method has, so they are paired
    key = df["dataset"] + "/" + df["split"] + "/" + df["seed"].astype(str)
    common = set.intersection(*(set(key[df["method"] == m]) for m in df["method"].unique()))
    df = df[key.isin(common)]
    lines += ["", f"Mean over the {len(common)} runs (dataset, split, seed) that every method has, per method:", "",
              "| method | runs | " + " | ".join(SETS) + " |", "|---|---|" + "---|" * len(SETS)]
    for m, g in df.groupby("method"):
        lines.append(f"| {m} | {len(g)} | " + " | ".join(f"{g[k].mean():.3f}" for k in SETS) + " |")
    if args.shareable:
        lines += ["", "The same models saved as `--shareable-model` saves them (unseeded cells only), generated "
                  "with the run's seed and scored by `garage evaluate` as `bench.fidelity` scores a run "
                  "(C2ST gap to the real control, membership-attack AUC, DCR ratio), against the run's own "
                  "cells (all):", "",
                  "| method | dataset | split | seed | C2ST gap: run / shareable | MIA: run / shareable | "
                  "DCR ratio: run / shareable |", "|---|---|---|---|---|---|---|"]
        for r in rows:
            own = _own_metrics(Path(r["run"]))
            lines.append(f"| {r['method']} | {r['dataset']} | {r['split']} | {r['seed']} | "
                         f"{own[0]:.3f} / {r['shareable_c2st_gap']:.3f} | {own[1]:.3f} / {r['shareable_mia']:.3f} | "
                         f"{own[2]:.3f} / {r['shareable_dcr']:.3f} |")
        lines += ["", f"Mean over the same {len(common)} paired runs:", "",
                  "| method | runs | C2ST gap: run / shareable | MIA: run / shareable |", "|---|---|---|---|"]
        for m, g in df.groupby("method"):
            own = np.array([_own_metrics(Path(p)) for p in g["run"]])
            lines.append(f"| {m} | {len(g)} | {own[:, 0].mean():.3f} / {g['shareable_c2st_gap'].mean():.3f} | "
                         f"{own[:, 1].mean():.3f} / {g['shareable_mia'].mean():.3f} |")
    (RESULTS / f"path_split_{args.tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
