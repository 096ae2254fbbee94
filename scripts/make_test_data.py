#!/usr/bin/env python3
"""Build the small real datasets that ship inside the package.

1. ``pbmc3k_small.h5ad``: 40% of every common type of the 10x PBMC 3k data
   (../shared/data/pbmc3k.h5ad) plus *all* DC (32) and Platelet (14) cells, so
   the two rare types stay rare (~3% and ~1.3%) and present.
3. ``sc_mixology_small.h5ad``: cell lines profiled by two protocols
   (../shared/data/sc_mixology.h5ad): up to 60 cells of every cell line x
   protocol group (A549 and H838 exist under CEL-seq2 only) and the 3,000 genes
   with the most counts, keeping ``cell_type``, ``protocol`` and ``batch``.
   The covariate tests use it.
2. ``pbmc68k_reduced_counts.h5ad``: scanpy's bundled pbmc68k_reduced (700 cells,
   765 genes, 10 FACS-sorted bulk_labels) with counts recovered from .raw as
   round(expm1(raw.X) * n_counts / 1e4) (see shared/TOOLING.md).

Run:  python scripts/make_test_data.py [--pbmc3k PATH]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

OUT = Path(__file__).resolve().parents[1] / "src" / "garage" / "datasets"
RARE = ("DC", "Platelet")


def pbmc3k_small(src: Path, seed: int = 0) -> ad.AnnData:
    full = ad.read_h5ad(src)
    rng = np.random.default_rng(seed)
    keep = []
    for ct, idx in full.obs.groupby("cell_type", observed=True).indices.items():
        if ct in RARE:
            keep.extend(idx)
        else:
            keep.extend(rng.choice(idx, size=int(round(0.4 * len(idx))), replace=False))
    keep = np.sort(np.asarray(keep))
    sub = full[keep].copy()
    sub.X = sp.csr_matrix(sub.X, dtype=np.float32)
    genes = np.asarray((sub.X > 0).sum(axis=0)).ravel() > 0
    sub = sub[:, genes].copy()
    sub.obs = sub.obs[["cell_type"]].copy()
    sub.obs["cell_type"] = sub.obs["cell_type"].astype(str).astype("category")
    sub.uns = {"source": "40% of common types + all DC/Platelet of 10x PBMC 3k (seed 0); "
                         "made by scripts/make_test_data.py"}
    return sub


def pbmc68k_counts() -> ad.AnnData:
    import scanpy as sc

    a = sc.datasets.pbmc68k_reduced()
    raw = a.raw.to_adata()
    X = raw.X.toarray() if sp.issparse(raw.X) else np.asarray(raw.X)
    counts = np.round(np.expm1(X) * a.obs["n_counts"].to_numpy()[:, None] / 1e4)
    out = ad.AnnData(
        X=sp.csr_matrix(counts.astype(np.float32)),
        obs=pd.DataFrame({"bulk_labels": a.obs["bulk_labels"].astype(str).astype("category")},
                         index=a.obs_names),
        var=pd.DataFrame(index=raw.var_names),
    )
    out.uns = {"source": "scanpy.datasets.pbmc68k_reduced, counts = round(expm1(raw.X)*n_counts/1e4); "
                         "made by scripts/make_test_data.py"}
    return out


def sc_mixology_small(src: Path, seed: int = 0, per_group: int = 60, n_genes: int = 3000) -> ad.AnnData:
    full = ad.read_h5ad(src)
    rng = np.random.default_rng(seed)
    keep = []
    for _, idx in full.obs.groupby(["cell_type", "protocol"], observed=True).indices.items():
        keep.extend(rng.choice(idx, size=min(per_group, len(idx)), replace=False))
    sub = full[np.sort(np.asarray(keep))].copy()
    sub.X = sp.csr_matrix(sub.X, dtype=np.float32)
    top = np.sort(np.argsort(-np.asarray(sub.X.sum(axis=0)).ravel(), kind="stable")[:n_genes])
    sub = sub[:, top].copy()
    sub.obs = sub.obs[["cell_type", "protocol", "batch"]].copy()
    for c in sub.obs.columns:
        sub.obs[c] = sub.obs[c].astype(str).astype("category")
    sub.var = sub.var[["gene_ids"]].copy()
    sub.uns = {"source": f"sc_mixology (Tian et al. 2019): up to {per_group} cells per cell line x protocol, "
                         f"top {n_genes} genes by counts (seed {seed}); made by scripts/make_test_data.py"}
    return sub


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pbmc3k", type=Path,
                   default=Path(__file__).resolve().parents[2] / "shared" / "data" / "pbmc3k.h5ad")
    p.add_argument("--sc-mixology", type=Path,
                   default=Path(__file__).resolve().parents[2] / "shared" / "data" / "sc_mixology.h5ad")
    args = p.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    a = pbmc3k_small(args.pbmc3k)
    a.write_h5ad(OUT / "pbmc3k_small.h5ad", compression="gzip")
    print("pbmc3k_small", a.shape, a.obs["cell_type"].value_counts().to_dict())
    m = sc_mixology_small(args.sc_mixology)
    m.write_h5ad(OUT / "sc_mixology_small.h5ad", compression="gzip")
    print("sc_mixology_small", m.shape, m.obs.groupby(["cell_type", "protocol"], observed=True).size().to_dict())
    b = pbmc68k_counts()
    b.write_h5ad(OUT / "pbmc68k_reduced_counts.h5ad", compression="gzip")
    print("pbmc68k_reduced_counts", b.shape, b.obs["bulk_labels"].value_counts().to_dict())


if __name__ == "__main__":
    main()
