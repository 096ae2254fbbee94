"""How clustered each type's latent codes are, per trained run (issue 13, round 22).

``--type-states K`` splits every big type into k-means states of its train cells' codes.  It
helped one development set (baron_mouse) and not the others, so the question is whether a
per-type statistic of the codes could tell beforehand which types have states worth splitting.
For each run folder of ``bench.fidelity`` (its GAT seeds file; the saved model holds no encoder,
so the run's default autoencoder is trained again with the run's seed) this takes the fit cells' standardised posterior means from the run's autoencoder (the space
where ``--type-states`` clusters) and reports per type with at least 100 fit cells the silhouette of
k-means with k = 2, 3, 4 (scikit-learn's, seeded with the run's seed; only k whose every cluster
keeps 50 cells, the default ``--state-min-cells``), beside the same for cells drawn from one
Gaussian fitted to the type (a type without sub-states).  Default library model only: with
``--library joint`` the states also cluster on the log library size, which this leaves out.

    python -m bench.state_silhouette --runs 'bench/_work/fidelity/*/val/garage_s16' --out FILE.json
"""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

import numpy as np


def run_codes(folder: Path, seed: int):
    """(standardised codes of the fit cells, their labels) of one bench.fidelity run folder: the
    default autoencoder of *seed* trained again on its GAT seeds file with one adversarial step
    (a saved model holds no encoder, so its codes cannot be read back from it; with the same
    seed the autoencoder phase is the run's own, as in ``bench.vae_ceiling``)."""
    from ._common import train_in_process

    seeds = list(folder.glob("*.seeds.h5ad"))
    if len(seeds) != 1:
        raise SystemExit(f"{folder}: needs exactly one *.seeds.h5ad")
    _, model = train_in_process(seeds[0], seed, 1, {"gan_steps": 1})
    data, cats = model.data, model.meta["categories"]
    fit = data.fit_rows
    z = data.codes.numpy()[fit][:, : model.config.n_latent]
    return z, np.asarray(cats, dtype=object)[data.types.numpy()[fit]]


def silhouettes(z, labels, min_type: int = 100, min_state: int = 50, seed: int = 0) -> list[dict]:
    """Per type: the k-means silhouette at each k in 2-4 whose every cluster keeps *min_state*
    cells (the rule of ``--type-states``' own k-means), and the same for a reference of as many
    cells drawn from one Gaussian with the type's mean and covariance (what an unclustered type
    of that shape scores; silhouettes of 0.1-0.3 mean little without it)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    rng = np.random.default_rng(seed)
    rows = []
    for t in sorted(set(labels), key=lambda t: -(labels == t).sum()):
        zt = z[labels == t]
        if len(zt) < min_type:
            continue
        ref = rng.multivariate_normal(zt.mean(0), np.cov(zt, rowvar=False), size=len(zt))
        row = {"type": t, "n_fit": int(len(zt))}
        for k in (2, 3, 4):
            if len(zt) // k < min_state:
                break
            lab = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(zt)
            if np.bincount(lab, minlength=k).min() < min_state:
                continue
            ref_lab = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(ref)
            row[f"k{k}"] = round(float(silhouette_score(zt, lab)), 4)
            row[f"k{k}_gaussian"] = round(float(silhouette_score(ref, ref_lab)), 4)
        rows.append(row)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", required=True, help="glob of bench.fidelity run folders")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    out = {}
    for f in sorted(glob.glob(args.runs)):
        seed = int(Path(f).name.rsplit("_s", 1)[1])
        z, labels = run_codes(Path(f), seed)
        out[f] = silhouettes(z, labels, seed=seed)
        for r in out[f]:
            ks = "  ".join(f"k={k} {r[f'k{k}']:.3f} (Gaussian {r[f'k{k}_gaussian']:.3f})"
                           for k in (2, 3, 4) if f"k{k}" in r)
            print(f"{Path(f).parent.parent.name:12s} {r['type']:22s} n={r['n_fit']:5d}  {ks}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
