"""Wall time and peak memory of `garage gat` on pbmc3k and on a 100k-cell resample.

Targets (issue 4), CPU on the 2-core dev machine: pbmc3k < 60 s; 100k cells
< 10 min and < 8 GB.  Peak memory is the max RSS of the `garage gat` child
process alone (bench._common.measure).  The 100k input is pbmc3k resampled
with replacement and binomially thinned (bench._common.resample_counts), then
run through `garage preprocess`; the preprocessed files are cached under
bench/_work/ and reused (preprocessing is not part of the GAT timing).

Run:  .venv/bin/python -m bench.bench_gat [--n-cells 100000] [--threads 1] [--device cpu]
      .venv/bin/python -m bench.bench_gat --skip-large      # pbmc3k only
Writes bench/results/gat_<name>.{json,md}.

``--seeds-report`` measures the seed choice instead (issue 13.4), on every real
dataset at hand (pbmc3k and sc_mixology from shared/data, plus the ones
``python -m bench.datasets`` built under bench/_work/data), for each training seed:

- Spearman correlation with node degree of the raw attention centrality (summed
  alpha) and of the relative one (alpha times the number of cells the target
  attends over, averaged over out-edges), and between the two;
- coverage: per type, the mean PCA distance (50 PCs; ``nn10``: the leading 10)
  from its train cells to their nearest seed of the type, and the largest such
  distance (``worst``, the worst-covered cell), averaged over types, divided by
  the same figure for random seeds (mean of 3 draws) -- below 1 covers better
  than random;
- sub-state balance (datasets with a condition column): per type, the total
  variation distance between the condition mix of its seeds and of its train
  cells, averaged over types with >= 2 conditions (0 = seeds mirror the mix);
- how many score seeds change when the relative centrality replaces the raw one.

Columns: ``{nn,nn10,worst}_ratio_<strategy>_<centrality>`` (the centrality of
the score; coverage regions in PCA unless ``_gat``), ``tv_*`` sub-state balance,
``rho_*`` Spearman correlations.

All strategies reuse one trained GAT per (dataset, seed), so they differ only in
the seed choice.  Run: ``python -m bench.bench_gat --seeds-report [--train-seeds 0 1]``
(writes bench/results/gat_seeds.{json,md}).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from ._common import PBMC3K, WORK, measure, resample_counts, write_result


def _preprocessed(name: str, counts: Path, label_key: str = "cell_type") -> Path:
    """Reuse bench/_work/preprocess/NAME.preprocessed.h5ad, else make it."""
    out = WORK / "preprocess" / f"{name}.preprocessed.h5ad"
    if out.exists():
        return out
    cmd = [sys.executable, "-m", "garage.cli", "-q", "preprocess", "--input", counts,
           "--label-key", label_key, "--prefix", name, "--outdir", out.parent]
    m = measure(cmd)
    if m["rc"] != 0:
        raise SystemExit(f"preprocess failed on {name}")
    print(f"preprocessed {name}: {m['wall_s']:.0f} s, {m['peak_mb']:.0f} MB", flush=True)
    return out


def _summary(outdir: Path, prefix: str) -> dict:
    import anndata as ad

    from garage import constants as C

    s = ad.read_h5ad(outdir / f"{prefix}{C.SUFFIX_SEEDS}", backed="r")
    g = s.uns[C.UNS_KEY]["gat"]
    seeds = dict(zip(g["seed_types"], (int(v) for v in g["seed_counts"])))
    train = dict(zip(g["seed_types"], (int(v) for v in g["n_train"])))
    rare = [str(t) for t in g["rare_types"]]
    return {
        "cells": int(s.n_obs),
        "edges": int(s.obsp[C.OBSP_CONNECTIVITIES].nnz),
        "mode": str(g["mode"]),
        "epochs": int(g["epochs"]),
        "holdout_bal_acc": round(float(g["holdout_balanced_accuracy"]), 4),
        "rare_seeds": ", ".join(f"{t} {seeds[t]}/{train[t]}" for t in rare),
        "n_seeds": int(g["n_seeds"]),
    }


# ------------------------------------------------------------------ seeds report
#: (name, counts file, label key, condition column or None); missing files are skipped
SEED_DATASETS = [
    ("pbmc3k", PBMC3K, "cell_type", None),
    ("sc_mixology", PBMC3K.parent / "sc_mixology.h5ad", "cell_type", "protocol"),
    ("pbmc68k_reduced", WORK / "data" / "pbmc68k_reduced.h5ad", "bulk_labels", None),
    ("kang_ifnb", WORK / "data" / "kang_ifnb.h5ad", "cell_type", "stim"),
    ("baron_mouse", WORK / "data" / "baron_mouse.h5ad", "cell_type", "mouse"),
    ("mouse_bladder", WORK / "data" / "mouse_bladder.h5ad", "cell_type", None),
    ("worm_neuron", WORK / "data" / "worm_neuron.h5ad", "cell_type", None),
]


def _nearest_seed(x, lab, train, mask) -> dict[str, float]:
    """Distances from a type's train cells to its nearest seed, averaged over types.

    ``nn``: mean over cells, all PCs; ``nn10``: the same in the leading 10 PCs;
    ``worst``: the farthest cell of the type (all PCs).
    """
    import numpy as np

    out = {"nn": [], "nn10": [], "worst": []}
    for t in np.unique(lab[mask]):
        cells, seeds = x[train & (lab == t)], x[mask & (lab == t)]
        for key, cols in (("nn", slice(None)), ("nn10", slice(0, 10))):
            c, s = cells[:, cols], seeds[:, cols]
            d2 = (c**2).sum(1)[:, None] + (s**2).sum(1)[None] - 2 * c @ s.T
            d = np.sqrt(np.maximum(d2, 0)).min(1)
            out[key].append(d.mean())
            if key == "nn":
                out["worst"].append(d.max())
    return {k: float(np.mean(v)) for k, v in out.items()}


def _substate_tv(cond, lab, train, mask) -> float:
    """Mean over types of TV(condition mix of seeds, condition mix of train cells)."""
    import numpy as np
    import pandas as pd

    out = []
    for t in np.unique(lab[mask]):
        c_train = pd.Series(cond[train & (lab == t)]).value_counts(normalize=True)
        if len(c_train) < 2:
            continue
        c_seed = pd.Series(cond[mask & (lab == t)]).value_counts(normalize=True)
        out.append(0.5 * c_train.subtract(c_seed, fill_value=0).abs().sum())
    return float(np.mean(out)) if out else float("nan")


def seeds_report(train_seeds: list[int], threads: int) -> list[dict]:
    import anndata as ad
    import numpy as np
    import pandas as pd
    from scipy.stats import spearmanr

    from garage import constants as C
    from garage._utils import set_threads
    from garage.gat import GATConfig, gat_adata
    from garage.gat._graph import CSRGraph
    from garage.gat._run import _choose_seeds

    set_threads(threads)
    rows = []
    for name, counts, label_key, cond_key in SEED_DATASETS:
        if not Path(counts).exists():
            print(f"skip {name}: {counts} not found (python -m bench.datasets --build {name})")
            continue
        adata = ad.read_h5ad(_preprocessed(name, Path(counts), label_key))
        lab = adata.obs[C.OBS_LABEL].astype(str).to_numpy()
        train = (adata.obs[C.OBS_SPLIT] == C.SPLIT_TRAIN).to_numpy()
        deg = CSRGraph.from_adjacency(adata.obsp[C.OBSP_CONNECTIVITIES]).degree().numpy()
        pca = np.asarray(adata.obsm[C.OBSM_PCA], dtype=np.float64)
        cond = None
        if cond_key is not None:
            raw = ad.read_h5ad(counts, backed="r").obs[cond_key].astype(str)
            cond = raw.reindex(adata.obs_names).to_numpy()
        perm = np.argsort(np.asarray(adata.obs_names, dtype=str), kind="stable")
        for seed in train_seeds:
            cfg = GATConfig(seed=seed, centrality="raw", seed_strategy="score")
            res = gat_adata(adata, cfg)
            c_raw, c_rel = res.centralities["raw"], res.centralities["relative"]
            labels = adata.obs[C.OBS_LABEL].astype(str)
            emb = res.adata.obsm[C.OBSM_GAT]
            # the score under the relative centrality, same classifier confidence
            r_rel = pd.Series(c_rel).groupby(lab).rank().to_numpy() / \
                pd.Series(lab).map(pd.Series(lab).value_counts()).to_numpy()
            lam = cfg.score_weight
            score_rel = r_rel**lam * np.clip(res.scores.confidence, 0, 1) ** (1 - lam)

            def choose(score=res.scores.score, **kw):
                return _choose_seeds(adata, GATConfig(**{**cfg.to_dict(), **kw}), labels, train,
                                     score, res.plan, emb, perm)[0]

            masks = {"score_raw": res.adata.obs[C.OBS_SEED].to_numpy(),
                     "score_relative": choose(score_rel),
                     "coverage_raw": choose(seed_strategy="coverage"),
                     "coverage_relative": choose(score_rel, seed_strategy="coverage"),
                     "coverage_gat": choose(seed_strategy="coverage", coverage_space="gat")}
            randoms = [choose(seed_strategy="random", seed=s) for s in (101, 102, 103)]
            rand = pd.DataFrame([_nearest_seed(pca, lab, train, m) for m in randoms]).mean()
            row = {
                "dataset": name, "seed": seed, "cells": int(adata.n_obs),
                "types": int(len(np.unique(lab))), "rare": len(res.plan.rare_types),
                "n_seeds": int(masks["score_raw"].sum()),
                "rho_raw_degree": round(float(spearmanr(c_raw, deg)[0]), 3),
                "rho_relative_degree": round(float(spearmanr(c_rel, deg)[0]), 3),
                "rho_raw_relative": round(float(spearmanr(c_raw, c_rel)[0]), 3),
                "score_seeds_changed": round(float((masks["score_raw"] & ~masks["score_relative"])
                                                   .sum() / masks["score_raw"].sum()), 3),
                "nn_dist_random": round(float(rand["nn"]), 3),
            }
            for k, m in masks.items():
                d = _nearest_seed(pca, lab, train, m)
                row[f"nn_ratio_{k}"] = round(d["nn"] / rand["nn"], 3)
                if k in ("score_raw", "score_relative", "coverage_raw"):
                    row[f"nn10_ratio_{k}"] = round(d["nn10"] / rand["nn10"], 3)
                    row[f"worst_ratio_{k}"] = round(d["worst"] / rand["worst"], 3)
            if cond is not None:
                row["tv_random"] = round(float(np.mean(
                    [_substate_tv(cond, lab, train, m) for m in randoms])), 3)
                for k in ("score_raw", "score_relative", "coverage_raw"):
                    row[f"tv_{k}"] = round(_substate_tv(cond, lab, train, masks[k]), 3)
            rows.append(row)
            print(row, flush=True)
    return _same_columns(rows)


_STRATEGIES = ("score_raw", "score_relative", "coverage_raw", "coverage_relative", "coverage_gat")
SEED_COLUMNS = (
    "dataset", "seed", "cells", "types", "rare", "n_seeds", "rho_raw_degree",
    "rho_relative_degree", "rho_raw_relative", "score_seeds_changed", "nn_dist_random",
    *(f"{m}_ratio_{k}" for m in ("nn", "nn10", "worst") for k in _STRATEGIES),
    "tv_random", *(f"tv_{k}" for k in _STRATEGIES),
)


def _same_columns(rows: list[dict]) -> list[dict]:
    """Every row with every column present in any row, in SEED_COLUMNS order ("" where missing)."""
    have = {k for r in rows for k in r}
    cols = [c for c in SEED_COLUMNS if c in have] + sorted(have - set(SEED_COLUMNS))
    return [{c: r.get(c, "") for c in cols} for r in rows]


def append_seeds_summary(md: Path, rows: list[dict]) -> None:
    """Append the mean and range over datasets x training seeds of every ratio column."""
    import pandas as pd

    df = pd.DataFrame(rows)
    cols = [c for c in df.columns if c.startswith(("rho_", "nn", "worst_", "tv_", "score_seeds"))]
    lines = ["", "## Over all datasets and training seeds", "",
             "| column | mean | min | max | rows |", "|---|---|---|---|---|"]
    for c in cols:
        v = pd.to_numeric(df[c], errors="coerce").dropna()
        lines.append(f"| {c} | {v.mean():.3f} | {v.min():.3f} | {v.max():.3f} | {len(v)} |")
    lines += ["", "Ratios are to random seeds with the same per-type quotas (below 1: seeds closer "
              "to the cells of their type); `tv_*`: condition mix of seeds vs train cells, per "
              "type (0 = same mix); `rho_*`: Spearman correlation over all cells."]
    with open(md, "a") as fh:
        fh.write("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-cells", type=int, default=100_000)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 is fastest on a loaded 2-core machine)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--skip-large", action="store_true", help="pbmc3k only")
    ap.add_argument("--name", default=None, help="results name (default gat_<device>)")
    ap.add_argument("--seeds-report", action="store_true",
                    help="measure centrality vs degree and seed coverage (gat_seeds.md)")
    ap.add_argument("--train-seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("gat_args", nargs="*", help="extra `garage gat` options after --")
    args = ap.parse_args()
    if args.seeds_report:
        rows = seeds_report(args.train_seeds, args.threads)
        command = "python -m bench.bench_gat " + shlex.join(sys.argv[1:])
        md = write_result(args.name or "gat_seeds", rows, command.strip())
        append_seeds_summary(md, rows)
        print(md)
        return

    (WORK / "gat").mkdir(parents=True, exist_ok=True)
    inputs = [("pbmc3k", _preprocessed("pbmc3k", PBMC3K))]
    if not args.skip_large:
        name = f"resampled_{args.n_cells}"
        counts = WORK / f"pbmc3k_resampled_{args.n_cells}.h5ad"
        if not (WORK / "preprocess" / f"{name}.preprocessed.h5ad").exists() and not counts.exists():
            resample_counts(PBMC3K, args.n_cells).write_h5ad(counts)
        inputs.append((name, _preprocessed(name, counts)))

    rows = []
    for name, pp in inputs:
        outdir = WORK / "gat" / args.device
        cmd = [sys.executable, "-m", "garage.cli", "-q", "gat", "--input", pp, "--prefix", name,
               "--outdir", outdir, "--device", args.device, "--threads", str(args.threads),
               *args.gat_args]
        print("running:", shlex.join(map(str, cmd)), flush=True)
        load = os.getloadavg()[0]  # the dev machine is shared: > 2 means contended cores
        m = measure(cmd)
        if m["rc"] != 0:
            raise SystemExit(f"garage gat failed on {name} (rc {m['rc']})")
        row = {"dataset": name, **_summary(outdir, name), "device": args.device,
               "threads": args.threads, "wall_s": round(m["wall_s"], 1),
               "peak_mb": round(m["peak_mb"]), "load_1min_before": round(load, 1)}
        rows.append(row)
        print(row, flush=True)
    command = "python -m bench.bench_gat " + shlex.join(sys.argv[1:])
    print(write_result(args.name or f"gat_{args.device}", rows, command.strip()))


if __name__ == "__main__":
    main()
