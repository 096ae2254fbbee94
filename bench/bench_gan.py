#!/usr/bin/env python3
"""Benchmark of stage 2 (GAN) on PBMC 3k: quality vs holdout, privacy, wall time, peak memory.

Trains on the train split of ``../shared/data/pbmc3k.h5ad`` with the given
options, generates, and scores the synthetic cells against the real holdout
with the ARCHITECTURE.md definitions (a private re-implementation until
``garage evaluate`` exists):

- shared space: log-normalised HVGs -> 50-PC PCA fitted on real train cells;
- ``c2st_auc``: kNN (k=15) classifier, 5-fold stratified CV, balanced classes,
  real holdout vs synthetic; control = real holdout vs real train;
- ``rare_agreement``: a balanced logistic regression on standardised PCs trained on real train cells,
  fraction of synthetic rare cells assigned to their label (control: holdout);
- ``dcr_ratio``: median distance to the nearest train cell, synthetic / holdout;
- ``exact_copies``: synthetic count vectors equal to a train cell.
The within-type kNN interpolation baseline (garage.baselines) is scored the same way.

Run:  .venv/bin/python bench/bench_gan.py [--name NAME] [--gan KEY=VALUE ...]
Writes bench/results/gan_<NAME>.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PBMC3K = ROOT.parent / "shared" / "data" / "pbmc3k.h5ad"
WORK = ROOT / "bench" / "_work" / "gan"
RARE = ("DC", "Platelet")


def fallback_seeds(adata, frac: float = 0.1, rare_threshold: float = 0.05, seed: int = 0):
    """FALLBACK seed marking (until garage.gat is importable): 10% of every type's
    train cells at random, and every train cell of a rare type."""
    from garage import constants as C

    rng = np.random.default_rng(seed)
    train = np.asarray(adata.obs[C.OBS_SPLIT] == C.SPLIT_TRAIN)
    lab = adata.obs[C.OBS_LABEL].astype(str).to_numpy()
    seed_mask = np.zeros(adata.n_obs, dtype=bool)
    n_train = train.sum()
    for t in np.unique(lab[train]):
        idx = np.flatnonzero(train & (lab == t))
        if len(idx) / n_train < rare_threshold:
            seed_mask[idx] = True
        else:
            seed_mask[rng.choice(idx, max(1, int(round(frac * len(idx)))), replace=False)] = True
    adata.obs[C.OBS_SEED] = seed_mask
    adata.obs[C.OBS_SCORE] = rng.random(adata.n_obs).astype(np.float32)
    return adata


def make_seeds(pp_path: Path, outdir: Path, prefix: str, test: bool = False) -> tuple[Path, str]:
    """Seeds from garage.gat when it exists, else the labelled fallback (cached)."""
    cached = outdir / f"{prefix}.seeds.h5ad"
    if cached.exists() and cached.stat().st_mtime > pp_path.stat().st_mtime:
        import anndata as ad

        src = ad.read_h5ad(cached, backed="r").uns.get("garage", {})
        return cached, "garage.gat (cached)" if "gat" in src else "fallback (cached)"
    try:
        from garage.gat import TEST_OVERRIDES, GATConfig, run_gat
    except ImportError:
        import anndata as ad

        from garage._utils import write_h5ad_atomic

        a = fallback_seeds(ad.read_h5ad(pp_path))
        out = outdir / f"{prefix}.seeds.h5ad"
        write_h5ad_atomic(a, out)
        return out, "fallback(10% per type + all rare)"
    cfg = GATConfig(**(TEST_OVERRIDES if test else {}))
    return run_gat(pp_path, outdir, prefix, cfg)["h5ad"], "garage.gat"


# ----------------------------------------------------------------------------- metrics
class Space:
    """Log-normalised HVGs -> PCA(50) fitted on the real train cells."""

    def __init__(self, train_counts, n_pcs: int = 50, seed: int = 0):
        from sklearn.decomposition import PCA

        from garage._norm import log_normalize

        self._ln = log_normalize
        self.pca = PCA(n_components=n_pcs, random_state=seed).fit(log_normalize(train_counts).toarray())

    def __call__(self, counts):
        import scipy.sparse as sp

        return self.pca.transform(self._ln(sp.csr_matrix(counts)).toarray())


def c2st_auc(a, b, seed: int = 0, k: int = 15, reps: int = 3) -> tuple[float, float]:
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    vals = []
    for r in range(reps):
        rng = np.random.default_rng(seed + r)
        n = min(len(a), len(b))
        xa = a[rng.choice(len(a), n, replace=False)]
        xb = b[rng.choice(len(b), n, replace=False)]
        x = np.vstack([xa, xb])
        y = np.r_[np.zeros(n), np.ones(n)]
        cv = StratifiedKFold(5, shuffle=True, random_state=seed + r)
        vals.append(cross_val_score(KNeighborsClassifier(k), x, y, cv=cv, scoring="roc_auc").mean())
    return float(np.mean(vals)), float(np.std(vals))


def score(space, train, holdout, syn, syn_labels, train_labels, hold_labels, train_counts, syn_counts):
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import NearestNeighbors
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from garage.baselines import exact_copy_mask

    auc, auc_sd = c2st_auc(holdout, syn)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, class_weight="balanced",
                                                             random_state=0)).fit(train, train_labels)
    pred = clf.predict(syn)
    per_type = {}
    for t in sorted(set(syn_labels)):
        m = syn_labels == t
        per_type[t] = {"n": int(m.sum()), "agreement": float((pred[m] == t).mean())}
    rare_m = np.isin(syn_labels, RARE)
    nn = NearestNeighbors(n_neighbors=1).fit(train)
    d_syn = nn.kneighbors(syn)[0].ravel()
    d_hold = nn.kneighbors(holdout)[0].ravel()
    rare_h = np.isin(hold_labels, RARE)
    return {
        "dcr_ratio_rare": float(np.median(d_syn[rare_m]) / np.median(d_hold[rare_h])) if rare_m.any() else None,
        "c2st_auc": auc, "c2st_auc_std": auc_sd,
        "rare_agreement": float((pred[rare_m] == syn_labels[rare_m]).mean()) if rare_m.any() else None,
        "type_agreement": float((pred == syn_labels).mean()),
        "n_types_predicted": int(len(set(pred))),
        "dcr_ratio": float(np.median(d_syn) / np.median(d_hold)),
        "exact_copies": int(exact_copy_mask(syn_counts, train_counts).sum()),
        "per_type": per_type,
        "zero_frac": float((np.asarray(syn_counts.todense()) == 0).mean()),
        "median_library": float(np.median(np.asarray(syn_counts.sum(1)).ravel())),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", default="pbmc3k_default")
    ap.add_argument("--gan", nargs="*", default=[], help="GANConfig overrides KEY=VALUE (JSON values)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--boost-cells", type=int, default=2000,
                    help="cells for the uniform-rare-boost generate check")
    args = ap.parse_args(argv)

    import anndata as ad
    import scipy.sparse as sp
    import torch

    from garage import constants as C
    from garage.baselines import knn_interpolation
    from garage.gan import GANConfig, run_gan
    from garage.preprocess import PreprocessConfig, run_preprocess

    torch.set_num_threads(args.threads)
    WORK.mkdir(parents=True, exist_ok=True)
    pp = WORK / "pbmc3k.preprocessed.h5ad"
    if not pp.exists():
        run_preprocess(PBMC3K, WORK, "pbmc3k", PreprocessConfig(label_key="cell_type", seed=0))
    seeds, seed_source = make_seeds(pp, WORK, "pbmc3k")

    over = {}
    for kv in args.gan:
        k, v = kv.split("=", 1)
        try:
            over[k] = json.loads(v)
        except json.JSONDecodeError:
            over[k] = v
    cfg = GANConfig(**over)
    outdir = WORK / f"gan_{args.name}"
    t0 = time.perf_counter()
    out = run_gan(seeds, outdir, "pbmc3k", cfg, device=args.device, threads=args.threads)
    wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    real = ad.read_h5ad(pp)
    train_m = np.asarray(real.obs[C.OBS_SPLIT] == C.SPLIT_TRAIN)
    tc = sp.csr_matrix(real.layers[C.LAYER_COUNTS][train_m])
    hc = sp.csr_matrix(real.layers[C.LAYER_COUNTS][~train_m])
    tl = real.obs[C.OBS_LABEL].astype(str).to_numpy()[train_m]
    hl = real.obs[C.OBS_LABEL].astype(str).to_numpy()[~train_m]
    space = Space(tc)
    tr, ho = space(tc), space(hc)
    syn = ad.read_h5ad(out["h5ad"])
    sl = syn.obs[C.OBS_CELL_TYPE].astype(str).to_numpy()
    res = {
        "name": args.name, "seed_source": seed_source, "config": cfg.for_output(False).to_dict(),
        "wall_seconds_train_and_generate": round(wall, 1), "peak_rss_mb": round(peak_mb, 1),
        "threads": args.threads, "device": args.device,
        "n_synthetic": int(syn.n_obs),
        "n_per_type": syn.obs[C.OBS_CELL_TYPE].value_counts().to_dict(),
        "gan": score(space, tr, ho, space(syn.X), sl, tl, hl, tc, sp.csr_matrix(syn.X)),
    }
    # control: real holdout vs real train, same metrics
    ctl = score(space, tr, ho, ho, hl, tl, hl, tc, hc)
    ctl["dcr_ratio"] = 1.0
    res["control_holdout_vs_train"] = {"c2st_auc": c2st_auc(ho, tr)[0],
                                       "rare_agreement": ctl["rare_agreement"],
                                       "type_agreement": ctl["type_agreement"],
                                       "zero_frac": float((hc.toarray() == 0).mean()),
                                       "median_library": float(np.median(np.asarray(hc.sum(1)).ravel()))}
    if not args.no_baseline:
        n_per = {k: int(v) for k, v in res["n_per_type"].items()}
        rtrain = real[train_m].copy()
        b = knn_interpolation(rtrain, C.OBS_LABEL, n_per, k=5, seed=0)
        bl = b.obs[C.OBS_CELL_TYPE].astype(str).to_numpy()
        res["knn_baseline"] = score(space, tr, ho, space(b.X), bl, tl, hl, tc, sp.csr_matrix(b.X))
    # rare boost from the saved model (garage generate): rare types in larger numbers
    from garage.gan import run_generate

    boost = ad.read_h5ad(run_generate(out["model"], outdir, "boost", n_cells=args.boost_cells,
                                      composition="uniform-rare-boost", seed=1)["h5ad"])
    bl = boost.obs[C.OBS_CELL_TYPE].astype(str).to_numpy()
    sb = score(space, tr, ho, space(boost.X), bl, tl, hl, tc, sp.csr_matrix(boost.X))
    res["rare_boost_generate"] = {"n_per_type": boost.obs[C.OBS_CELL_TYPE].value_counts().to_dict(),
                                  **{k: sb[k] for k in ("rare_agreement", "dcr_ratio", "dcr_ratio_rare",
                                                        "exact_copies", "per_type")}}
    out_json = ROOT / "bench" / "results" / f"gan_{args.name}.json"
    out_json.write_text(json.dumps(res, indent=1, default=str))
    g, c = res["gan"], res["control_holdout_vs_train"]
    print(f"[{args.name}] wall {wall:.1f}s peak {peak_mb:.0f}MB | c2st {g['c2st_auc']:.3f} (control "
          f"{c['c2st_auc']:.3f}, knn {res.get('knn_baseline', {}).get('c2st_auc', float('nan')):.3f}) | rare_agree "
          f"{g['rare_agreement']:.3f} type_agree {g['type_agreement']:.3f} | dcr {g['dcr_ratio']:.3f} "
          f"(knn {res.get('knn_baseline', {}).get('dcr_ratio', float('nan')):.3f}) | copies {g['exact_copies']} | "
          f"zero {g['zero_frac']:.3f}/{c['zero_frac']:.3f} lib {g['median_library']:.0f}/{c['median_library']:.0f} | "
          f"boost rare_agree {res['rare_boost_generate']['rare_agreement']:.3f} "
          f"dcr_rare {res['rare_boost_generate']['dcr_ratio_rare']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
