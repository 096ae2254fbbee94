"""Registry and builders of real, labelled scRNA-seq count datasets for the fidelity benchmark.

Every dataset is built into one clean layout: raw integer counts in ``X`` (CSR, float32),
the cell-type label in ``obs[label_key]``, optional covariates in ``obs``, unique var names,
and ``uns['source']`` naming where it came from. Builds are deterministic and each spec
records the sha256 of the file it builds, so a changed source or builder shows up.

Sources are files that already live on the machine (``shared/data``), a file shipped in
this package, or a public GitHub repository brought here with the search tool's ``fetch``
(a bare git snapshot under ``$GARAGE_MIRROR_DIR``, default ``/work/.mirror``). Files are
read from the pinned commit of that snapshot; nothing fetched is copied into the repo.
R data files (``.rda``/``.RData``) need the ``rdata`` package (``pip install rdata``).

    python -m bench.datasets --list
    python -m bench.datasets --build baron_mouse      # or --build all
    python -m bench.datasets --check all              # integer counts, Leiden ARI, cross-checks
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
PACKAGE_DATA = REPO / "src" / "garage" / "datasets"
DEFAULT_WORKDIR = REPO / "bench" / "_work" / "data"
RARE_THRESHOLD = 0.03

#: name -> spec. ``source.kind`` is ``shared`` (a file in shared/data), ``package`` (a file
#: in src/garage/datasets) or ``github`` (files read from a fetched snapshot at ``commit``).
DATASETS: dict[str, dict] = {
    "pbmc3k": {
        "description": "10x Genomics 3k PBMCs of one healthy donor, Seurat tutorial labels.",
        "organism": "human", "tissue": "blood (PBMC)", "technology": "10x Chromium v1 (UMI)",
        "source": {"kind": "shared", "path": "pbmc3k.h5ad",
                   "origin": "zdebruine/singlet data/pbmc3k.RData (see shared/data/README.md)"},
        "citation": "Zheng GXY et al. (2017) Massively parallel digital transcriptional profiling "
                    "of single cells. Nat Commun 8:14049; labels: Seurat guided-clustering tutorial.",
        "label_key": "cell_type", "condition_keys": [],
        "expected": (2638, 13713),
        "filtering": ["None here: the shared file is already clean and is copied byte for byte "
                      "(its README records the 62 unlabelled cells and 1 all-zero gene dropped "
                      "when it was made)."],
        "sha256": "b5c6471ca6792589444342f03c6e1bce47e662b092906dd203c8161d097e0ef7",
    },
    "sc_mixology": {
        "description": "Five lung adenocarcinoma cell lines (CellBench), CEL-seq2 and Drop-seq, "
                       "demuxlet singlets.",
        "organism": "human", "tissue": "lung adenocarcinoma cell lines",
        "technology": "CEL-seq2 + Drop-seq (UMI)",
        "source": {"kind": "shared", "path": "sc_mixology.h5ad",
                   "origin": "LuyiTian/sc_mixology data/csv (see shared/data/README.md)"},
        "citation": "Tian L et al. (2019) Benchmarking single cell RNA-sequencing analysis "
                    "pipelines using mixture control experiments. Nat Methods 16:479-487.",
        "label_key": "cell_type", "condition_keys": ["protocol", "batch"],
        "expected": (1021, 27952),
        "filtering": ["None here: copied byte for byte (its README records the doublets, ERCC "
                      "rows and all-zero genes dropped when it was made)."],
        "sha256": "435c15eb4b1181317ee22f25ac2f3218096a110c69646c9caa40dac12f307d3b",
    },
    "pbmc68k_reduced": {
        "description": "scanpy's pbmc68k_reduced with raw counts recovered, FACS-sorted bulk labels.",
        "organism": "human", "tissue": "blood (PBMC)", "technology": "10x Chromium v1 (UMI)",
        "source": {"kind": "package", "path": "pbmc68k_reduced_counts.h5ad",
                   "origin": "scanpy.datasets.pbmc68k_reduced(); counts = "
                             "round(expm1(raw.X) * n_counts / 1e4) (scripts/make_test_data.py)"},
        "citation": "Zheng GXY et al. (2017) Nat Commun 8:14049 (68k PBMCs and sorted "
                    "populations); subset shipped by scanpy (Wolf FA et al. 2018, Genome Biol 19:15).",
        "label_key": "bulk_labels", "condition_keys": [],
        "expected": (700, 765),
        "filtering": ["None here: copied byte for byte from the package. It holds only the 765 "
                      "genes scanpy kept."],
        "sha256": "57b7d811ed4bd16d4b8f93f11adf5fc616284dcb576fd390ddbfe20cc2fb727b",
    },
    "baron_mouse": {
        "description": "Mouse pancreatic cells from two mice of two strains (Baron et al. 2016), "
                       "inDrop UMI counts with the authors' cell-type calls.",
        "organism": "mouse", "tissue": "pancreas (islets)", "technology": "inDrop (UMI)",
        "source": {
            "kind": "github",
            "repos": {
                "counts": {"repo": "WHY-17/scDSSC",
                           "commit": "ccfaf0d296be207459977edda3071da49b8f39a7",
                           "paths": ["Mouse1.h5", "Mouse2.h5"]},
                "labels": {"repo": "zhiyhu/CIDER",
                           "commit": "0b6e1678c5e05aabe717acb9ad4db801422abac1",
                           "paths": ["data/pancreas_meta.RData"]},
            },
            "origin": "GEO GSE84133 (GSM2230761 mouse1, GSM2230762 mouse2 umifm_counts.csv)",
        },
        "citation": "Baron M et al. (2016) A single-cell transcriptomic map of the human and mouse "
                    "pancreas reveals inter- and intra-cell population structure. Cell Syst "
                    "3:346-360. GEO GSE84133.",
        "label_key": "cell_type", "condition_keys": ["mouse"],
        "expected": (1886, 14878),
        "filtering": [
            "No cell or gene removed: all 822 + 1,064 cells of the GEO tables carry a label and "
            "all 14,878 genes are kept.",
            "Counts: the X matrices of scDSSC's Mouse1.h5/Mouse2.h5 (int32, the GEO tables' "
            "count columns in file order). Those files hold integer label codes only, and no "
            "gene or cell names.",
            "Labels, cell names and mouse: CIDER's pancreas_meta (Baron human + mouse "
            "assigned_cluster per GEO cell, in GEO order). The build checks that, in each mouse, "
            "its 13 names and the h5 codes map one to one over every cell, and fails otherwise.",
            "Gene names are not in either source: var names are positional ids gene_00000 .. "
            "gene_14877 (the GEO header order).",
            "obs['library'] is the inDrop library parsed from the cell name (lib1..lib3).",
        ],
        "sha256": "27e4005436a586388af7875864ca30cbeaec07e3271503ba0263d20b1e4413a7",
    },
    "kang_ifnb": {
        "description": "PBMCs of two lupus patients, unstimulated or 6 h IFN-beta "
                       "(Kang et al. 2018), muscat's example subset with the authors' cell types.",
        "organism": "human", "tissue": "blood (PBMC), IFN-beta stimulation",
        "technology": "10x Chromium (UMI), demuxlet-multiplexed",
        "source": {
            "kind": "github",
            "repos": {
                "sce": {"repo": "HelenaLC/muscat",
                        "commit": "017b290b414212c357e184d17edcca27f4302ace",
                        "paths": ["data/example_sce.rda"]},
            },
            "cross_check": {"repo": "immunogenomics/harmony",
                            "commit": "df19af23ae0639bd6ea2da63898f973f08c85862",
                            "paths": ["data/pbmc_stim.RData"]},
            "origin": "GEO GSE96583 batch 2 (ExperimentHub EH2259), subset by muscat",
        },
        "citation": "Kang HM et al. (2018) Multiplexed droplet single-cell RNA-sequencing using "
                    "natural genetic variation. Nat Biotechnol 36:89-94. GEO GSE96583. Subset: "
                    "Crowell HL et al. (2020) muscat, Nat Commun 11:6077.",
        "label_key": "cell_type", "condition_keys": ["stim", "donor", "sample"],
        "expected": (1556, 1267),
        "filtering": [
            "Nothing removed here. muscat's authors made the subset (their data docs): demuxlet "
            "singlets with a cell call; 5 of 8 cell types (B, CD4 T, CD8 T, CD14+ and FCGR3A+ "
            "monocytes); genes with a count > 1 in > 50 cells; cells with > 200 detected genes; "
            "at most 100 cells per type and sample. The current snapshot keeps donors 101 and "
            "107 (4 samples).",
            "X is the 'counts' assay (integers); the 'logcounts' assay is not used.",
            "Only 1,267 genes survive muscat's gene filter, so preprocess's default of 2,000 "
            "HVGs keeps every gene (it runs; --n-top-genes 1000 makes HVG selection bite).",
        ],
        "sha256": "6bdf8d40d97291cea23b630dec76d97e9a6f3843abdb28b0ffcd22ed3c6157a0",
    },
    "worm_neuron": {
        "description": "C. elegans L2 larva neurons profiled by sci-RNA-seq (Cao et al. 2017), "
                       "as distributed with scDeepCluster, 10 neuron types.",
        "organism": "C. elegans", "tissue": "nervous system (whole larva, neurons)",
        "technology": "sci-RNA-seq (combinatorial indexing, UMI)",
        "source": {
            "kind": "github",
            "repos": {
                "counts": {"repo": "ttgump/scDeepCluster",
                           "commit": "ff7f29d003be7112c6a3dcab37c44d461423647d",
                           "paths": ["scRNA-seq data/worm_neuron_cell.h5"]},
            },
            "cross_check": {"repo": "ttgump/scDeepCluster",
                            "commit": "ff7f29d003be7112c6a3dcab37c44d461423647d",
                            "paths": ["scRNA-seq data/worm_neuron_cell_select_2100.h5"]},
            "origin": "Cao et al. 2017 (GSE98561), neuron subset prepared by Tian et al. 2019",
        },
        "citation": "Cao J et al. (2017) Comprehensive single-cell transcriptional profiling of a "
                    "multicellular organism. Science 357:661-667. Prepared subset: Tian T et al. "
                    "(2019) Clustering single-cell RNA-seq data with a model-based deep learning "
                    "approach. Nat Mach Intell 1:191-198.",
        "label_key": "cell_type", "condition_keys": [],
        "expected": (4186, 13488),
        "filtering": [
            "Nothing removed here (all 4,186 cells carry a label).",
            "The source stores integer-valued float64 counts; the build checks they are integers.",
            "The source has numeric labels (1-10) and no gene or cell names: labels become "
            "type_01 .. type_10, var names gene_00000 .. gene_13487, cells worm_0000 ...",
        ],
        "sha256": "ad4e10c9712dd377cfc277ab603bdd8afca99821937a74f0f23852e7c8f24f39",
    },
    "cbmc": {
        "description": "Cord blood mononuclear cells profiled by CITE-seq (Stoeckius et al. 2017), "
                       "the RNA counts of 2,000 genes as distributed with scDSSC, 15 clusters.",
        "organism": "human (the study spiked in mouse cells)", "tissue": "cord blood (CBMC)",
        "technology": "CITE-seq on 10x Chromium (UMI)",
        "source": {
            "kind": "github",
            "repos": {
                "counts": {"repo": "WHY-17/scDSSC",
                           "commit": "ccfaf0d296be207459977edda3071da49b8f39a7",
                           "paths": ["CITE_CBMC_counts_top2000.h5"]},
            },
            "origin": "GEO GSE100866 (CBMC, RNA UMI table; inferred from the file's name and its "
                      "8,617 cells, as the file names no cell), 2,000-gene subset prepared for scDSSC",
        },
        "citation": "Stoeckius M et al. (2017) Simultaneous epitope and transcriptome measurement in "
                    "single cells. Nat Methods 14:865-868. GEO GSE100866. Prepared subset: the "
                    "scDSSC repository (WHY-17/scDSSC, deep sparse subspace clustering).",
        "label_key": "cell_type", "condition_keys": [],
        "expected": (8617, 2000),
        "filtering": [
            "Nothing removed here (all 8,617 cells carry a label).",
            "The source keeps 2,000 genes chosen by its preparers (the file's name says 'top2000'; "
            "how they were ranked is not recorded) and stores integer-valued float32 counts; the "
            "build checks they are integers. Cells are shallow: a median of 161 counts and 113 "
            "detected genes over these 2,000 genes.",
            "The source has numeric labels (1-15) and no gene or cell names: labels become "
            "type_01 .. type_15, var names gene_00000 .. gene_01999, cells cbmc_0000 ... "
            "The study spiked mouse cells into the sample and its clustering named doublet groups, "
            "so some clusters are presumably those; which number is which is not recorded here.",
            "The source's 10 antibody (ADT) columns carry no names and are not kept.",
        ],
        "sha256": "3dfd69dade3daa1d9cd4e60b6941314bd06089a74ea874bff69bea9bb76f63c6",
    },
    "mouse_bladder": {
        "description": "Mouse bladder cells from the Mouse Cell Atlas (Han et al. 2018), Microwell-"
                       "seq, a 2,100-cell subsample distributed with scDeepCluster, 16 types.",
        "organism": "mouse", "tissue": "bladder", "technology": "Microwell-seq (UMI)",
        "source": {
            "kind": "github",
            "repos": {
                "counts": {"repo": "ttgump/scDeepCluster",
                           "commit": "ff7f29d003be7112c6a3dcab37c44d461423647d",
                           "paths": ["scRNA-seq data/mouse_bladder_cell_select_2100.h5"]},
            },
            "origin": "Mouse Cell Atlas (GSE108097) bladder, prepared by Tian et al. 2019",
        },
        "citation": "Han X et al. (2018) Mapping the mouse cell atlas by Microwell-seq. Cell "
                    "172:1091-1107. Prepared subset: Tian T et al. (2019) Nat Mach Intell 1:191-198.",
        "label_key": "cell_type", "condition_keys": [],
        "expected": (2100, 20670),
        "filtering": [
            "Nothing removed here. The source is the scDeepCluster authors' random 2,100-cell "
            "subsample of the 2,746 bladder cells (the full file is too large to fetch here).",
            "The source has numeric labels (1-16) and no gene or cell names: labels become "
            "type_01 .. type_16, var names gene_00000 .. gene_20669, cells bladder_0000 ...",
        ],
        "sha256": "ed7dc864f365a186bfc390f3fda706233e9c13f42caff559adb0d6044076ce8a",
    },
}


# ----------------------------------------------------------------------------- sources

def mirror_root() -> Path:
    return Path(os.environ.get("GARAGE_MIRROR_DIR", "/work/.mirror"))


def _git_dir(repo: str) -> Path:
    base = mirror_root() / repo.replace("/", "+") / "repo"
    for cand in (base, base / ".git"):
        if (cand / "HEAD").is_file() and (cand / "objects").is_dir():
            return cand
    raise FileNotFoundError(
        f"No snapshot of {repo} under {mirror_root()}. Bring it with the search tool: "
        f"fetch github:{repo} (or set GARAGE_MIRROR_DIR to where snapshots live).")


def git_blob(repo: str, commit: str, path: str) -> bytes:
    """Bytes of PATH at COMMIT in the fetched snapshot of REPO."""
    gd = _git_dir(repo)
    proc = subprocess.run(["git", f"--git-dir={gd}", "show", f"{commit}:{path}"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        raise FileNotFoundError(
            f"{repo}@{commit[:12]}:{path} is not in the snapshot at {gd} "
            f"({proc.stderr.decode().strip()}). Fetch github:{repo} again; files of 4 MiB and "
            f"more are absent from snapshots.")
    return proc.stdout


def _read_rda(blob: bytes) -> dict:
    try:
        import rdata
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise ImportError("R data sources need the 'rdata' package: pip install rdata") from exc
    import tempfile
    with tempfile.NamedTemporaryFile(suffix=".rda") as fh:
        fh.write(blob)
        fh.flush()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # S4 classes without a converter come back raw
            return rdata.read_rda(fh.name)


def _dgc_to_csr(m) -> "sp.csr_matrix":
    """A raw dgCMatrix (genes x cells) as a cells x genes CSR matrix."""
    import scipy.sparse as sp
    n_genes, n_cells = (int(d) for d in m.Dim)
    csc = sp.csc_matrix((np.asarray(m.x, dtype=np.float64), np.asarray(m.i), np.asarray(m.p)),
                        shape=(n_genes, n_cells))
    return csc.T.tocsr()


def _h5_xy(blob: bytes) -> tuple[np.ndarray, np.ndarray]:
    import h5py
    with h5py.File(io.BytesIO(blob), "r") as h:
        return h["X"][:], h["Y"][:]


def _as_counts(X) -> "sp.csr_matrix":
    """Integer check, then CSR float32 without explicit zeros."""
    import scipy.sparse as sp
    X = sp.csr_matrix(X, dtype=np.float64)
    if X.nnz and (np.any(X.data < 0) or not np.array_equal(X.data, np.round(X.data))):
        raise ValueError("source counts are not non-negative integers")
    X.eliminate_zeros()
    X.sort_indices()
    return X.astype(np.float32)


def _src(spec: dict, role: str) -> dict:
    return spec["source"]["repos"][role]


# ----------------------------------------------------------------------------- builders

def _build_baron_mouse(spec: dict):
    import anndata as ad
    import pandas as pd

    c = _src(spec, "counts")
    lab = _src(spec, "labels")
    meta = _read_rda(git_blob(lab["repo"], lab["commit"], lab["paths"][0]))["pancreas_meta"]
    blocks, obs = [], []
    for mouse, path in zip(("mouse1", "mouse2"), c["paths"]):
        X, codes = _h5_xy(git_blob(c["repo"], c["commit"], path))
        m = meta[meta["Sample"] == mouse]
        if len(m) != X.shape[0]:
            raise ValueError(f"{mouse}: {len(m)} labelled cells but {X.shape[0]} count rows")
        tab = pd.crosstab(m["Group"].astype(str).values, codes)
        if not (((tab > 0).sum(axis=1) == 1).all() and ((tab > 0).sum(axis=0) == 1).all()):
            raise ValueError(f"{mouse}: label names and count-file codes do not map one to one")
        blocks.append(_as_counts(X))
        obs.append(pd.DataFrame({
            "cell_type": m["Group"].astype(str).values,
            "mouse": mouse,
            "library": [n.split("_")[1].split(".")[0] for n in m.index],
        }, index=m.index.astype(str)))
    import scipy.sparse as sp
    X = sp.vstack(blocks).tocsr()
    obs = pd.concat(obs)
    var = pd.DataFrame(index=[f"gene_{i:05d}" for i in range(X.shape[1])])
    return ad.AnnData(X=X, obs=obs, var=var)


def _build_kang_ifnb(spec: dict):
    import anndata as ad
    import pandas as pd

    s = _src(spec, "sce")
    sce = _read_rda(git_blob(s["repo"], s["commit"], s["paths"][0]))["example_sce"]
    counts = sce.assays.data.listData["counts"]
    cd = sce.colData.listData
    genes = np.asarray(counts.Dimnames[0]).astype(str)
    cells = np.asarray(counts.Dimnames[1]).astype(str)
    if not np.array_equal(cells, np.asarray(sce.colData.rownames).astype(str)):
        raise ValueError("counts columns and colData rows differ")
    sample = np.asarray(cd["sample_id"]).astype(str)
    obs = pd.DataFrame({
        "cell_type": np.asarray(cd["cluster_id"]).astype(str),
        "stim": np.asarray(cd["group_id"]).astype(str),
        "donor": [x[4:] for x in sample],
        "sample": sample,
    }, index=cells)
    return ad.AnnData(X=_as_counts(_dgc_to_csr(counts)), obs=obs,
                      var=pd.DataFrame(index=genes))


def _build_scdeepcluster(spec: dict, prefix: str):
    import anndata as ad
    import pandas as pd

    c = _src(spec, "counts")
    X, y = _h5_xy(git_blob(c["repo"], c["commit"], c["paths"][0]))
    if not np.array_equal(y, np.round(y)):
        raise ValueError("labels are not integer codes")
    y = y.astype(int)
    obs = pd.DataFrame({"cell_type": [f"type_{v:02d}" for v in y]},
                       index=[f"{prefix}_{i:04d}" for i in range(X.shape[0])])
    var = pd.DataFrame(index=[f"gene_{i:05d}" for i in range(X.shape[1])])
    return ad.AnnData(X=_as_counts(X), obs=obs, var=var)


_BUILDERS = {
    "baron_mouse": _build_baron_mouse,
    "kang_ifnb": _build_kang_ifnb,
    "worm_neuron": lambda spec: _build_scdeepcluster(spec, "worm"),
    "mouse_bladder": lambda spec: _build_scdeepcluster(spec, "bladder"),
    "cbmc": lambda spec: _build_scdeepcluster(spec, "cbmc"),
}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _finalize(adata, name: str, spec: dict):
    """Drop unlabelled cells, categorical obs, unique var names, provenance in uns."""
    label = spec["label_key"]
    keep = adata.obs[label].notna().to_numpy() & (adata.obs[label].astype(str) != "").to_numpy()
    adata = adata[keep].copy()
    for col in [label, *spec["condition_keys"]]:
        adata.obs[col] = adata.obs[col].astype(str).astype("category")
    adata.var_names = adata.var_names.astype(str)
    adata.var_names_make_unique()
    adata.obs_names = adata.obs_names.astype(str)
    if not adata.obs_names.is_unique:
        raise ValueError(f"{name}: duplicate cell names")
    adata.obs["n_counts"] = np.asarray(adata.X.sum(axis=1)).ravel().astype(np.float32)
    src = spec["source"]
    adata.uns["source"] = json.dumps({
        "dataset": name, "origin": src.get("origin", ""),
        "repos": {k: {"repo": v["repo"], "commit": v["commit"], "paths": v["paths"]}
                  for k, v in src.get("repos", {}).items()},
        "citation": spec["citation"],
    }, sort_keys=True)
    return adata


def build(name: str, workdir: Path | str = DEFAULT_WORKDIR, verify_sha: bool = True) -> Path:
    """Build dataset NAME as WORKDIR/NAME.h5ad and return its path.

    Shape must match ``expected``; a sha256 differing from the spec's warns (HDF5/anndata
    versions can change bytes without changing content) unless the spec has none yet.
    """
    from garage._utils import atomic_path

    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    spec = DATASETS[name]
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / f"{name}.h5ad"
    kind = spec["source"]["kind"]
    if kind in ("shared", "package"):
        base = SHARED_DATA if kind == "shared" else PACKAGE_DATA
        src = base / spec["source"]["path"]
        if not src.is_file():
            raise FileNotFoundError(f"{src} is missing (expected in {base})")
        # a temporary name of its own, renamed into place: two benchmark runs started at once both
        # build the file, and neither may read (or write into) the other's half-written copy
        with atomic_path(out) as tmp:
            shutil.copyfile(src, tmp)
            _check_layout(tmp, spec, name=src)  # the error names the source, not the temporary copy
    else:
        adata = _finalize(_BUILDERS[name](spec), name, spec)
        if adata.shape != tuple(spec["expected"]):
            raise ValueError(f"{name}: built {adata.shape}, expected {spec['expected']}")
        with atomic_path(out) as tmp:
            adata.write_h5ad(tmp)
    digest = sha256(out)
    if verify_sha and spec.get("sha256") and digest != spec["sha256"]:
        warnings.warn(f"{name}: sha256 {digest} differs from the registry's {spec['sha256']}")
    return out


def _check_layout(path: Path, spec: dict, name: Path | str | None = None) -> None:
    """Shape, CSR float32 counts and the label / condition columns of the file at *path*; an error
    names *name* (default *path*)."""
    import anndata as ad
    import scipy.sparse as sp
    a = ad.read_h5ad(path)
    name = path if name is None else name
    if a.shape != tuple(spec["expected"]):
        raise ValueError(f"{name}: shape {a.shape}, expected {spec['expected']}")
    if not (sp.issparse(a.X) and a.X.format == "csr" and a.X.dtype == np.float32):
        raise ValueError(f"{name}: X is not CSR float32")
    for col in [spec["label_key"], *spec["condition_keys"]]:
        if col not in a.obs:
            raise ValueError(f"{name}: obs has no {col!r}")


# ----------------------------------------------------------------------------- summaries

def summarize(path: Path, spec: dict, threshold: float = RARE_THRESHOLD) -> dict:
    import anndata as ad
    a = ad.read_h5ad(path)
    counts = a.obs[spec["label_key"]].value_counts()
    n = a.n_obs
    return {
        "cells": n, "genes": a.n_vars,
        "types": {str(k): int(v) for k, v in counts.items()},
        "rare_types": {str(k): int(v) for k, v in counts.items() if v / n < threshold},
        "conditions": {c: {str(k): int(v) for k, v in a.obs[c].value_counts().sort_index().items()}
                       for c in spec["condition_keys"]},
        "sha256": sha256(path),
    }


def _print_summary(name: str, path: Path, s: dict) -> None:
    spec = DATASETS[name]
    print(f"== {name}: {s['cells']:,} cells x {s['genes']:,} genes -> {path}")
    print(f"   label {spec['label_key']!r}: {len(s['types'])} types: "
          + ", ".join(f"{k} {v}" for k, v in s["types"].items()))
    rare = ", ".join(f"{k} {v} ({v / s['cells']:.1%})" for k, v in s["rare_types"].items())
    print(f"   rare (<{RARE_THRESHOLD:.0%}): {rare or 'none'}")
    for c, vals in s["conditions"].items():
        print(f"   condition {c!r}: " + ", ".join(f"{k} {v}" for k, v in vals.items()))
    print(f"   sha256 {s['sha256']}")


# ----------------------------------------------------------------------------- checks

def leiden_agreement(path: Path, label_key: str, seed: int = 0) -> dict:
    """ARI/NMI of a plain Leiden clustering (resolution 1) against the labels."""
    import anndata as ad
    import scanpy as sc
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    a = ad.read_h5ad(path)
    sc.pp.filter_genes(a, min_cells=3)
    n_top = min(2000, a.n_vars - 1)
    sc.pp.highly_variable_genes(a, n_top_genes=n_top, flavor="seurat_v3", subset=True)
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    sc.pp.pca(a, n_comps=min(50, a.n_vars - 1), random_state=seed)
    # garage's own kNN choice: scanpy 1.11 crashes on pynndescent's csr_array above 4,096 cells
    from garage.preprocess import _knn_transformer
    sc.pp.neighbors(a, n_neighbors=15, random_state=seed,
                    transformer=_knn_transformer(a.n_obs, 15, seed))
    sc.tl.leiden(a, resolution=1.0, random_state=seed, flavor="igraph", n_iterations=2,
                 directed=False)
    lab = a.obs[label_key].astype(str).to_numpy()
    cl = a.obs["leiden"].astype(str).to_numpy()
    return {"leiden_clusters": int(len(set(cl))),
            "ari": round(float(adjusted_rand_score(lab, cl)), 3),
            "nmi": round(float(normalized_mutual_info_score(lab, cl)), 3)}


def _integer_check(path: Path) -> dict:
    import anndata as ad
    a = ad.read_h5ad(path)
    d = a.X.data
    tot = np.asarray(a.X.sum(axis=1)).ravel()
    return {"counts_integer": bool(np.array_equal(d, np.round(d)) and (d >= 0).all()),
            "max_count": int(d.max()) if d.size else 0,
            "total_per_cell_min_median_max": [int(tot.min()), int(np.median(tot)), int(tot.max())]}


def _crosscheck_baron_mouse(path: Path, spec: dict) -> dict:
    # The build itself fails unless names and codes map one to one; restate it as a number.
    import anndata as ad
    import pandas as pd
    a = ad.read_h5ad(path)
    c = _src(spec, "counts")
    out = {}
    for mouse, p in zip(("mouse1", "mouse2"), c["paths"]):
        _, codes = _h5_xy(git_blob(c["repo"], c["commit"], p))
        names = a.obs.loc[a.obs["mouse"] == mouse, "cell_type"].astype(str).to_numpy()
        tab = pd.crosstab(names, codes)
        agree = int(tab.max(axis=1).sum())
        out[mouse] = f"{agree}/{len(names)} cells: CIDER label and scDSSC code agree one to one"
    return out


def _crosscheck_kang_ifnb(path: Path, spec: dict) -> dict:
    import anndata as ad
    a = ad.read_h5ad(path)
    cc = spec["source"]["cross_check"]
    h = _read_rda(git_blob(cc["repo"], cc["commit"], cc["paths"][0]))
    same = compared = cells = 0
    for cond, key in (("ctrl", "pbmc.ctrl"), ("stim", "pbmc.stim")):
        hm = _dgc_to_csr(h[key])
        hcells = {b: i for i, b in enumerate(np.asarray(h[key].Dimnames[1]).astype(str))}
        hgenes = {g: j for j, g in enumerate(np.asarray(h[key].Dimnames[0]).astype(str))}
        shared = [g for g in a.var_names if g in hgenes]
        ai = [a.var_names.get_loc(g) for g in shared]
        hj = [hgenes[g] for g in shared]
        sub = a[a.obs["stim"] == cond]
        for name in sub.obs_names:
            b = name[:-3] + "-1" if name.endswith("-11") else name
            if b not in hcells:
                continue
            x = np.asarray(sub[name].X[:, ai].todense()).ravel()
            y = np.asarray(hm[hcells[b]][:, hj].todense()).ravel()
            cells += 1
            compared += x.size
            same += int(np.sum(x == y))
    import scanpy as sc
    b = a.copy()
    sc.pp.normalize_total(b, target_sum=1e4)
    sc.pp.log1p(b)
    isg = [g for g in ("ISG15", "IFI6", "IFIT3", "MX1") if g in b.var_names]
    shifts = {}
    for t in sorted(b.obs["cell_type"].unique()):
        m = b.obs["cell_type"] == t
        st = np.asarray(b[m & (b.obs["stim"] == "stim"), isg].X.mean(axis=0)).ravel()
        ct = np.asarray(b[m & (b.obs["stim"] == "ctrl"), isg].X.mean(axis=0)).ravel()
        shifts[t] = round(float(np.mean(st - ct)), 2)
    return {"harmony_overlap": f"{cells} cells also in harmony's pbmc_stim; {same}/{compared} "
                               f"counts on shared genes identical",
            "isg_log_shift_stim_minus_ctrl": {"genes": isg, "by_type": shifts}}


def _crosscheck_worm_neuron(path: Path, spec: dict) -> dict:
    import anndata as ad
    a = ad.read_h5ad(path)
    cc = spec["source"]["cross_check"]
    X2, y2 = _h5_xy(git_blob(cc["repo"], cc["commit"], cc["paths"][0]))
    full = a.X.toarray()
    index = {hashlib.sha1(r.astype(np.float32).tobytes()).hexdigest(): i for i, r in enumerate(full)}
    lab = a.obs["cell_type"].astype(str).to_numpy()
    found = agree = 0
    for r, y in zip(X2, y2):
        i = index.get(hashlib.sha1(r.astype(np.float32).tobytes()).hexdigest())
        if i is not None:
            found += 1
            agree += int(lab[i] == f"type_{int(y):02d}")
    return {"select_2100_subset": f"{found}/{len(y2)} rows of the authors' 2,100-cell file are "
                                  f"rows of the full file; {agree}/{found} with the same label"}


_CROSSCHECKS = {
    "baron_mouse": _crosscheck_baron_mouse,
    "kang_ifnb": _crosscheck_kang_ifnb,
    "worm_neuron": _crosscheck_worm_neuron,
}


def check(name: str, workdir: Path | str = DEFAULT_WORKDIR) -> dict:
    spec = DATASETS[name]
    path = Path(workdir) / f"{name}.h5ad"
    if not path.is_file():
        path = build(name, workdir)
    res = {"dataset": name, **_integer_check(path), **leiden_agreement(path, spec["label_key"])}
    if name in _CROSSCHECKS:
        res["cross_check"] = _CROSSCHECKS[name](path, spec)
    return res


# ----------------------------------------------------------------------------- CLI

def _names(arg: str) -> list[str]:
    return list(DATASETS) if arg == "all" else [arg]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.datasets", description=__doc__.split("\n")[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--list", action="store_true", help="list the registry")
    g.add_argument("--build", metavar="NAME|all", help="build one dataset or all")
    g.add_argument("--check", metavar="NAME|all",
                   help="integer counts, Leiden ARI against labels, cross-checks (JSON)")
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    a = p.parse_args(argv)
    if a.list:
        for n, s in DATASETS.items():
            src = s["source"]
            where = (src["path"] if src["kind"] != "github" else
                     "; ".join(f"fetch github:{v['repo']}" for v in src["repos"].values()))
            cond = ",".join(s["condition_keys"]) or "-"
            print(f"{n:16s} {s['expected'][0]:>6,} x {s['expected'][1]:>6,}  label={s['label_key']:<12s}"
                  f" cond={cond:<20s} {s['technology']}; {s['tissue']} [{src['kind']}: {where}]")
        return 0
    if a.build:
        for n in _names(a.build):
            path = build(n, a.workdir)
            _print_summary(n, path, summarize(path, DATASETS[n]))
        return 0
    for n in _names(a.check):
        print(json.dumps(check(n, a.workdir), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
