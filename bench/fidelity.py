"""Multi-dataset fidelity benchmark with train / validation / test splits (issue 13).

The protocol that keeps defaults honest:

1. ``garage preprocess`` (seed 0) splits every dataset into train and a *test*
   holdout, stratified by type.  Nothing is ever tuned on the test holdout.
2. ``--split val`` drops the test cells and re-splits the train cells the same
   way (20 % per type, another seed) into train' and a *validation* holdout.
   Defaults are chosen on these validation runs.  ``--split val2`` .. ``val9`` are
   more validation "folds": the same re-split with seeds of their own, so another
   draw of validation cells (random re-splits that overlap, not disjoint folds).  Every training seed of one fold shares that fold's
   holdout, so a seed interval does not cover the draw of holdout cells (round 24
   of bench/results/fidelity_notes.md: on mouse_bladder it moved GARAGE - scVI
   by as much as the seeds did); a comparison that must hold beyond one draw is
   run on several folds and read per fold (a t-interval over every (fold, seed)
   run as if independent still understates the draw with few folds).
   ``--split SPLIT@F`` (e.g. ``val@0.6``) is SPLIT with its train cells thinned to
   about the fraction F per type (the same holdout; ``stratified_split``'s rounding, so
   a small type keeps 0.5-0.6 at F = 0.5 and a one-cell type keeps its cell) and its
   kNN graph built again on the kept cells: how a comparison moves with the number
   of train cells (diagnosis; round 24).  The graph of a ``val`` file is the test
   file's with the test cells removed (about 17 edges a cell on mouse_bladder against
   21 in the test file); only GARAGE's GAT reads it.  ``SPLIT@1`` keeps every cell and
   builds the graph again: the full-cell arm to compare a thinned one with.
3. ``--split test`` trains on the full train split and reports the test holdout:
   the table the README shows.

Every method trains on the same cells and is scored by the same ``garage
evaluate`` against the same holdout, for several training seeds (GAT, GAN and
scVI seeds change; the split does not).  Each (dataset, split, method, seed)
runs in a child process, so its wall time and peak memory are its own, and its
metrics JSON is cached: rerunning the command only computes what is missing (a run
that failed counts as missing: it is trained again).

Methods
-------
garage          GARAGE defaults (GAT seeds + hybrid-input GAN)
garage_noseed   ablation: ``--seed-mix 0`` (no seed cells in the generator input)
garage_random   ablation: seeds chosen at random, same quotas (``garage gat --seed-strategy random``)
scvi            scvi-tools SCVI, posterior-predictive samples of train cells in train proportions
knn_interp      within-type kNN interpolation in count space + Poisson sampling
garage#REV      GARAGE's GAT and GAN stages *as they were at commit REV*, with that
                commit's defaults (its ``src/`` is extracted with ``git archive`` into
                bench/_work/trees/); preprocessing and scoring are today's, so the
                row compares the old generator like for like with the current one

Every table also has a ``real (control)`` row: each metric's control value from
the same evaluations (real train cells against the same holdout), the score of
a perfect generator.

Extra GARAGE variants for development: ``--variant NAME='{"gan": {...}, "gat": {...}}'``
adds a method ``garage@NAME`` whose GAN/GAT options override the defaults.

Run:  python -m bench.fidelity --split val --seeds 0,1,2
      python -m bench.fidelity --split test --seeds 0,1,2     (the reported table)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from ._common import REPO, RESULTS, WORK, machine, measure, t_halfwidth

#: tuned on (validation splits): datasets of different tissues / technologies / designs; cbmc (8,617
#: cells, four times the others) joined in round 27 for the question of scale; a plain
#: ``python -m bench.fidelity`` runs these, cbmc included (GARAGE took about 280 s and scVI about
#: 530 s a seed on its validation split here, two runs sharing two cores)
DEV_DATASETS = ("pbmc3k", "sc_mixology", "kang_ifnb", "baron_mouse", "cbmc")
#: never tuned on, not even their validation splits: judged on their test splits only
HELDOUT_DATASETS = ("pbmc68k_reduced", "worm_neuron", "mouse_bladder")
DEFAULT_DATASETS = DEV_DATASETS
METHODS = ("garage", "garage_noseed", "garage_random", "scvi", "knn_interp")
VAL_FRACTION = 0.2
VAL_SEED = 1009  # the validation re-split's own seed (not the preprocess seed); fold K uses VAL_SEED + K - 1
SPLITS = ("test", "val", *(f"val{k}" for k in range(2, 10)))
THIN_SEED = 2027  # the seed that thins a split's train cells (SPLIT@F)


def split_arg(text: str) -> str:
    """A ``--split`` value: one of SPLITS, or ``SPLIT@F`` with 0 < F < 1 (train cells thinned)."""
    base, at, frac = text.partition("@")
    if base not in SPLITS:
        raise argparse.ArgumentTypeError(f"{text!r}: the split must be one of {', '.join(SPLITS)} "
                                         "(optionally @F, e.g. val@0.6)")
    if at:
        try:
            f = float(frac)
        except ValueError:
            f = float("nan")
        if not 0 < f <= 1 or frac != f"{f:g}":
            raise argparse.ArgumentTypeError(f"{text!r}: F in SPLIT@F must be a fraction in (0, 1] "
                                             "written plainly, e.g. 0.6 (1: keep every cell, build "
                                             "the kNN graph again)")
    return text
#: metrics in the summary table: name -> how to read it
TABLE = ("c2st_auc", "c2st_gap", "rare_agreement", "rare_agreement_control", "rare_spread_ratio",
         "tstr_macro_f1", "tstr_rare_f1", "dcr_ratio", "mia_auc", "seed_mia_auc", "train_s")
#: the seed ablation's rare-type figures (issue 13.4): GAT seeds vs random seeds vs no seeds
SEED_TABLE = ("rare_agreement", "tstr_rare_f1", "rare_c2st", "rare_dcr_ratio", "rare_spread_ratio")
SEED_METHODS = ("garage", "garage_random", "garage_noseed")
#: extra columns when a dataset has a condition (NAME+KEY)
COND_TABLE = ("condition_lfc_corr", "condition_lfc_corr_control", "c2st_per_condition")
FID = WORK / "fidelity"
#: git revision whose GAT/GAN code the cached GARAGE rows must come from (``--code-rev``; HEAD)
CODE_REV: str | None = None
#: ``--any-code``: report every cached row, whatever code made it (tables that join runs of
#: several commits; each run's own table names its command)
ANY_CODE = False


# ------------------------------------------------------------------ datasets
def dataset(name: str) -> tuple[Path, str, str | None]:
    """(counts file, label key, condition key) of a benchmark dataset.

    ``NAME+KEY`` (e.g. ``kang_ifnb+stim``) runs dataset NAME with ``garage preprocess
    --condition-key KEY``: split by type x condition, a conditioned GARAGE, baselines that keep
    the condition, and evaluate's per-condition scores (issue 16)."""
    if "+" in name:
        base, cond = name.split("+", 1)
        path, key, _ = dataset(base)
        return path, key, cond
    try:  # the dataset registry (bench/datasets.py) knows more datasets and how to build them
        from . import datasets as reg

        spec = reg.DATASETS[name]
        path = reg.build(name)
        return Path(path), _get(spec, "label_key"), None
    except (ImportError, KeyError, AttributeError):
        pass
    shared = REPO.parent / "shared" / "data"
    known = {
        "pbmc3k": (shared / "pbmc3k.h5ad", "cell_type"),
        "sc_mixology": (shared / "sc_mixology.h5ad", "cell_type"),
        "pbmc68k_reduced": (REPO / "src" / "garage" / "datasets" / "pbmc68k_reduced_counts.h5ad",
                            "bulk_labels"),
    }
    if name not in known:
        raise SystemExit(f"unknown dataset {name!r}; known: {sorted(known)}")
    path, key = known[name]
    return path, key, None


def _get(spec, key):
    return spec[key] if isinstance(spec, dict) else getattr(spec, key)


def _garage(*args) -> list[str]:
    return [sys.executable, "-m", "garage.cli", "-q", *map(str, args)]


def prepare(name: str, split: str) -> Path:
    """The preprocessed file whose holdout is the test (``split=test``) or validation set."""
    d = FID / name
    d.mkdir(parents=True, exist_ok=True)
    if "@" in split:  # SPLIT@F: SPLIT's file with its train cells thinned to F per type
        base, _, frac = split_arg(split).partition("@")
        src = prepare(name, base)
        thin = d / f"{name}.{base}.train{frac}.preprocessed.h5ad"
        if not thin.exists():
            _thin_train(src, thin, float(frac))
        return thin
    test = d / f"{name}.preprocessed.h5ad"
    if not test.exists():
        path, key, cond = dataset(name)
        cmd = ["preprocess", "--input", path, "--label-key", key, "--prefix", name, "--outdir", d, "--seed", 0]
        if cond:
            cmd += ["--condition-key", cond]
        m = measure(_garage(*cmd))
        if m["rc"] != 0:
            raise SystemExit(f"{name}: preprocess failed")
    if split == "test":
        return test
    val = d / f"{name}.{split}.preprocessed.h5ad"
    if not val.exists():
        _write_val(test, val, val_seed(split))
    return val


def split_strata(obs, rows=None):
    """The strata every split here draws within: the type, or type x condition when *obs* has one
    (as `garage preprocess` splits), for the positions *rows* (default all), as a plain Series."""
    import pandas as pd

    from garage import constants as C

    rows = np.arange(len(obs)) if rows is None else rows
    s = obs[C.OBS_LABEL].astype(str).iloc[rows]
    if C.OBS_CONDITION in obs:
        s = s + "\x1f" + obs[C.OBS_CONDITION].astype(str).iloc[rows]
    return pd.Series(s.to_numpy())


def _thin_train(src: Path, out: Path, frac: float) -> None:
    """*src* with its train cells thinned to *frac* per type (x condition); the holdout kept whole."""
    import anndata as ad

    from garage import constants as C
    from garage._utils import atomic_path
    from garage.preprocess import stratified_split

    a = ad.read_h5ad(src)
    train = np.flatnonzero(a.obs[C.OBS_SPLIT].astype(str).to_numpy() == C.SPLIT_TRAIN)
    drop = (stratified_split(split_strata(a.obs, train), 1 - frac, THIN_SEED) == C.SPLIT_HOLDOUT
            if frac < 1 else np.zeros(len(train), dtype=bool))  # @1: every cell, the graph built again
    keep = np.ones(a.n_obs, dtype=bool)
    keep[train[drop]] = False
    a = a[keep].copy()
    # the kNN graph (the GAT's input) built again on the kept cells, as `garage preprocess` would
    # on them (same k, PCA space and seed): a subset of the old graph would leave the kept cells
    # with about half their neighbours, a change GARAGE sees and scVI does not
    import scanpy as sc

    from garage.preprocess import _knn_transformer

    prm = a.uns["neighbors"]["params"]
    k = int(min(prm["n_neighbors"], a.n_obs - 1))
    sc.pp.neighbors(a, n_neighbors=k, use_rep=prm["use_rep"], random_state=prm["random_state"],
                    transformer=_knn_transformer(a.n_obs, k, prm["random_state"]))
    a.uns[C.UNS_KEY]["split"] = (str(a.uns[C.UNS_KEY].get("split", "test")) +
                                 f"; train cells thinned to {frac:g} per type, seed {THIN_SEED}; "
                                 "kNN graph built again on the kept cells")
    with atomic_path(out) as tmp:
        a.write_h5ad(tmp)


def val_seed(split: str) -> int:
    """The re-split seed of a validation fold: ``val`` is fold 1, ``valK`` fold K."""
    if split not in SPLITS or split == "test":
        raise SystemExit(f"bench.fidelity: {split!r} is not a validation split ({', '.join(SPLITS[1:])})")
    return VAL_SEED + (int(split[3:]) - 1 if split[3:] else 0)


def _write_val(test: Path, out: Path, seed: int = VAL_SEED) -> None:
    """Drop the test cells and re-split the train cells into train' / validation (seed *seed*)."""
    import anndata as ad
    import pandas as pd

    from garage import constants as C
    from garage.preprocess import stratified_split

    a = ad.read_h5ad(test)
    a = a[a.obs[C.OBS_SPLIT].astype(str) == C.SPLIT_TRAIN].copy()
    a.obs[C.OBS_SPLIT] = pd.Categorical(stratified_split(split_strata(a.obs), VAL_FRACTION, seed),
                                        categories=[C.SPLIT_TRAIN, C.SPLIT_HOLDOUT])
    a.uns[C.UNS_KEY]["split"] = f"validation: {VAL_FRACTION:.0%} of the train cells per type, seed {seed}"
    from garage._utils import atomic_path

    with atomic_path(out) as tmp:  # two runs started at once must never read a half-written split
        a.write_h5ad(tmp)


# ------------------------------------------------------------------ methods
def _variant_opts(method: str, variants: dict) -> dict:
    base = {"garage": {}, "garage_noseed": {"gan": {"seed_mix": 0.0}},
            "garage_random": {"gat": {"seed_strategy": "random"}}}
    if method in base:
        return base[method]
    if method.startswith("garage@"):
        return variants[method.split("@", 1)[1]]
    return {}


def _old_commit(rev: str) -> str:
    import subprocess

    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", f"{rev}^{{commit}}"],
                         capture_output=True, text=True)
    if sha.returncode != 0:
        raise SystemExit(f"garage#{rev}: not a commit of this repository")
    return sha.stdout.strip()


def _old_tree(sha: str) -> Path:
    """The src/ folder of commit *sha*, extracted with ``git archive`` into bench/_work/trees/."""
    import io
    import subprocess
    import tarfile

    root = WORK / "trees" / sha[:12]
    if not (root / "src" / "garage").is_dir():
        tar = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", sha, "src"],
                             capture_output=True, check=True).stdout
        tmp = root.with_name(f"{root.name}.tmp{os.getpid()}")  # two benchmarks may extract at once
        with tarfile.open(fileobj=io.BytesIO(tar)) as t:
            t.extractall(tmp, filter="data")
        try:
            tmp.rename(root)
        except OSError:  # the other one was first
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return root / "src"


#: options that were on/off flags and are now choices (a variant's ``true`` still means ``on``)
_CHOICE_NOW = {"critic_path"}


def _opt_args(opts: dict) -> list[str]:
    out = []
    for k, v in opts.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool) and k in _CHOICE_NOW:
            out += [flag, "on" if v else "off"]
        elif isinstance(v, bool):
            out.append(flag if v else "--no-" + k.replace("_", "-"))
        else:
            out += [flag, str(v)]
    return out


def run_one(name: str, split: str, method: str, seed: int, variants: dict, scvi_epochs: int | None,
            force: bool = False, report_only: bool = False) -> dict | None:
    """Train + evaluate one (dataset, split, method, seed); return its row (cached).

    *report_only*: return the cached row of the current code, or None; never compute."""
    opts = _variant_opts(method, variants)
    code = _code_version() if method.startswith("garage") else ""
    env = None
    old = method.startswith("garage#")  # an earlier commit's GAT + GAN with that commit's defaults
    if old:
        code = _old_commit(method.split("#", 1)[1])
    key = hashlib.sha1(json.dumps([method, opts, scvi_epochs, code], sort_keys=True).encode()).hexdigest()[:8]
    # the key names what was trained; the row's "eval" names the evaluation code that scored it. A
    # row of this training scored by another evaluation (rows from before round 20 name none) is
    # scored again from its own synthetic file, never reused beside rows of this evaluation
    ev_code = _eval_version()
    label = method.replace("@", "_").replace("#", "_rev_").replace("/", "_")
    out = FID / name / split / f"{label}_s{seed}"
    done = out / "row.json"
    seeds = out / f"{name}.seeds.h5ad" if method.startswith("garage") else None
    if done.exists() and not force:
        row = json.loads(done.read_text())
        if report_only and ANY_CODE:
            return row
        if row.get("key") == key and row.get("status") != "ok":
            # a failure is not a result: report it, but train again (the cause, e.g. a package missing
            # from the environment, may have been fixed since)
            if report_only:
                return row
            print(f"  {out.name}: trained again (its last run: {row.get('status')})", flush=True)
        elif row.get("key") == key:
            # --code-rev reports that commit's rows as they were scored
            if row.get("eval") == ev_code or (report_only and CODE_REV):
                return row
            syn = next(out.glob("*.synthetic.h5ad"), None)
            if not report_only and syn is not None:
                print(f"  {out.name}: scored again (the evaluation code changed; the training is reused)",
                      flush=True)
                return _score(row, out, prepare(name, split), seeds, done, ev_code)
    if report_only:
        return None
    if old:
        env = dict(os.environ, PYTHONPATH=str(_old_tree(code)))
    pp = prepare(name, split)
    out.mkdir(parents=True, exist_ok=True)
    t_gat = 0.0
    if method.startswith("garage"):
        gat_opts = opts.get("gat", {})
        m = measure(_garage("gat", "--input", pp, "--prefix", name, "--outdir", out, "--seed", seed,
                            *_opt_args(gat_opts)), env)
        if m["rc"] != 0:
            return _fail(done, key, "gat failed")
        t_gat = m["wall_s"]
        prefix = label
        m = measure(_garage("gan", "--input", seeds, "--prefix", prefix, "--outdir", out,
                            "--seed", seed, "--checkpoint-every", 0, *_opt_args(opts.get("gan", {}))), env)
    else:
        cmd = [sys.executable, "-m", "bench", "--_train", method, "--_seeds", pp, "--_out", out,
               "--seed", seed]
        if scvi_epochs:
            cmd += ["--scvi-epochs", scvi_epochs]
        m = measure(cmd)
    if m["rc"] != 0:
        return _fail(done, key, "train failed")
    row = {"dataset": name, "split": split, "method": method, "seed": seed, "key": key, "status": "ok",
           "train_s": round(m["wall_s"] + t_gat, 1), "gan_s": round(m["wall_s"], 1),
           "peak_mb": round(m["peak_mb"])}
    return _score(row, out, pp, seeds, done, ev_code)


def _score(row: dict, out: Path, pp: Path, seeds: Path | None, done: Path, ev_code: str) -> dict:
    """`garage evaluate` of a run folder's synthetic file into *row* (saved as *done*)."""
    syn = next(out.glob("*.synthetic.h5ad"))
    prov = next(out.glob("*.provenance.tsv"), None)
    e = measure(_garage(*evaluate_args(pp, syn, out / "evaluate", seeds, prov)))
    if e["rc"] != 0:
        return _fail(done, row["key"], "evaluate failed")
    doc = json.loads((out / "evaluate" / "eval.garage_metrics.json").read_text())
    row.update({"metrics": doc["metrics"], "per_type": str(out / "evaluate" / "eval.per_type.tsv"),
                "rare_types": doc.get("rare_types", []), "n_cells": doc.get("n_cells", {}), "eval": ev_code})
    row.pop("cond", None)
    if doc.get("conditions"):
        row["cond"] = _condition_summary(doc["conditions"])
    done.write_text(json.dumps(row, indent=1, default=float))
    return row


_HELP_CACHE: dict[str, str] = {}


def evaluate_args(pp: Path, syn: Path, outdir: Path, seeds: Path | None, prov: Path | None) -> list:
    """`garage evaluate` arguments of a benchmark row (prefix ``eval``, evaluation seed 0; the GAT
    seeds and the private provenance for the seed-privacy checks when this evaluate takes them)."""
    ev = ["evaluate", "--real", pp, "--synthetic", syn, "--prefix", "eval", "--outdir", outdir, "--seed", 0]
    if seeds is not None and _evaluate_takes("--seeds"):
        ev += ["--seeds", seeds]
        if prov is not None and _evaluate_takes("--provenance"):
            ev += ["--provenance", prov]
    return ev


def _tree_version(*paths: str) -> str:
    """Git tree ids of *paths* at CODE_REV (default HEAD) joined by ``:``, plus ``:dirty`` when
    HEAD's working tree has changes under them."""
    import subprocess

    rev = CODE_REV or "HEAD"
    out = subprocess.run(["git", "-C", str(REPO), "rev-parse", *(f"{rev}:{p}" for p in paths)],
                         capture_output=True, text=True)
    dirty = "" if CODE_REV else subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", *paths], capture_output=True, text=True).stdout.strip()
    return out.stdout.strip().replace("\n", ":") + (":dirty" if dirty else "")


def _eval_version() -> str:
    """Git tree id of the evaluation code (``src/garage/evaluate``), ``:dirty`` when it has changes."""
    return _tree_version("src/garage/evaluate")


def _code_version() -> str:
    """Git tree ids of the GAT and GAN code: a cached GARAGE row is reused only for the same code."""
    return _tree_version("src/garage/gan", "src/garage/gat")


def _evaluate_takes(flag: str) -> bool:
    import subprocess

    if "evaluate" not in _HELP_CACHE:
        _HELP_CACHE["evaluate"] = subprocess.run(_garage("evaluate", "--help"), capture_output=True,
                                                 text=True).stdout
    return flag in _HELP_CACHE["evaluate"]


def _fail(done: Path, key: str, why: str) -> dict:
    row = {"status": why, "key": key}
    done.write_text(json.dumps(row))
    print(f"  {done.parent.name}: {why}", flush=True)
    return row


# ------------------------------------------------------------------ summary
def _condition_summary(block: dict) -> dict:
    """Means over conditions (per-condition C2ST) and over (type, condition) pairs (lfc corr)."""
    def mean(xs):
        xs = [x for x in xs if x is not None and np.isfinite(x)]
        return float(np.mean(xs)) if xs else None

    per = block.get("metrics", {})
    eff = block.get("effect", [])
    return {"c2st_per_condition": mean([m["c2st_auc"]["value"] for m in per.values()]),
            "c2st_per_condition_control": mean([m["c2st_auc"]["control"] for m in per.values()]),
            "condition_lfc_corr": mean([e.get("value") for e in eff]),
            "condition_lfc_corr_control": mean([e.get("control") for e in eff]),
            "n_effects": len(eff), "levels": block.get("levels", [])}


def _rare_per_type(row: dict, column: str, control: bool = False):
    """Mean of a per-type column (``c2st``) over the rare types, from the row's per_type.tsv."""
    import pandas as pd

    path = row.get("per_type")
    if not path or not Path(path).exists():
        return None
    pt = pd.read_csv(path, sep="\t")
    rare = pt[pt["is_rare"].astype(str).str.lower() == "true"]
    col = f"{column}_control" if control else column
    v = pd.to_numeric(rare.get(col), errors="coerce").dropna() if col in rare else pd.Series([], dtype=float)
    return float(v.mean()) if len(v) else None


def _value(row: dict, name: str):
    if name == "rare_c2st":
        return _rare_per_type(row, "c2st")
    if name in COND_TABLE:
        return (row.get("cond") or {}).get(name)
    m = row.get("metrics", {})
    if name == "c2st_gap":
        c = m.get("c2st_auc", {})
        return None if c.get("value") is None else c["value"] - c["control"]
    if name == "rare_agreement_control":
        return m.get("rare_agreement", {}).get("control")
    if name == "train_s":
        return row.get("train_s")
    return m.get(name, {}).get("value")


def summarise(rows: list[dict], control_from: str = "garage") -> "pd.DataFrame":  # noqa: F821
    """One row per (dataset, method): mean over seeds and a 95 % t-interval half-width.

    The real-vs-real control row comes from the control values of *control_from*'s evaluations."""
    import pandas as pd

    recs = []
    for r in rows:
        if r.get("status") != "ok":
            continue
        rec = {"dataset": r["dataset"], "method": r["method"], "seed": r["seed"], "eval": r.get("eval") or "none"}
        rec.update({k: _value(r, k) for k in TABLE + COND_TABLE + SEED_TABLE})
        recs.append(rec)
    # the real-vs-real control: each metric's own control value (train vs holdout) in control_from's runs
    for r in rows:
        if r.get("status") == "ok" and r["method"] == control_from:
            rec = {"dataset": r["dataset"], "method": "real (control)", "seed": r["seed"],
                   "eval": r.get("eval") or "none"}
            m = r["metrics"]
            rec.update({k: m.get(k, {}).get("control") for k in TABLE + SEED_TABLE if k in m})
            rec["rare_c2st"] = _rare_per_type(r, "c2st", control=True)
            rec["c2st_gap"] = 0.0
            rec["rare_agreement_control"] = m.get("rare_agreement", {}).get("control")
            cs = r.get("cond") or {}
            rec["c2st_per_condition"] = cs.get("c2st_per_condition_control")
            rec["condition_lfc_corr"] = rec["condition_lfc_corr_control"] = cs.get("condition_lfc_corr_control")
            recs.append(rec)
    df = pd.DataFrame(recs)
    out = []
    for (ds, meth), g in df.groupby(["dataset", "method"], sort=False):
        evals = sorted(set(g["eval"]))
        # the evaluation code that scored these rows ("none": before round 20 rows did not say)
        rec = {"dataset": ds, "method": meth, "n_seeds": len(g), "eval": evals[0] if len(evals) == 1 else "mixed"}
        for k in dict.fromkeys(TABLE + COND_TABLE + SEED_TABLE):
            if k not in g.columns:
                rec[k], rec[k + "_hw"] = np.nan, np.nan
                continue
            v = pd.to_numeric(g[k], errors="coerce").dropna().to_numpy(float)
            rec[k] = float(v.mean()) if v.size else np.nan
            rec[k + "_hw"] = t_halfwidth(v)
        out.append(rec)
    return pd.DataFrame(out)


def targets(summary, method: str = "garage") -> list[str]:
    """Issue 13's 'done means' per dataset for *method* (the defaults' rows), as pass/fail lines."""
    lines = []
    for ds, g in summary.groupby("dataset", sort=False):
        by = {r["method"]: r for _, r in g.iterrows()}
        ga, sc = by.get(method), by.get("scvi")
        if ga is None:
            continue
        checks = []
        if sc is not None:
            checks.append(("C2ST gap <= scVI's", ga["c2st_gap"] <= sc["c2st_gap"],
                           f"{ga['c2st_gap']:.3f} vs {sc['c2st_gap']:.3f}"))
            if np.isfinite(ga["tstr_rare_f1"]) and np.isfinite(sc["tstr_rare_f1"]):
                checks.append(("TSTR rare F1 >= scVI's", ga["tstr_rare_f1"] >= sc["tstr_rare_f1"],
                               f"{ga['tstr_rare_f1']:.3f} vs {sc['tstr_rare_f1']:.3f}"))
        if np.isfinite(ga["rare_agreement"]):
            checks.append(("rare agreement >= control - 0.05",
                           ga["rare_agreement"] >= ga["rare_agreement_control"] - 0.05,
                           f"{ga['rare_agreement']:.3f} vs {ga['rare_agreement_control']:.3f}"))
        if np.isfinite(ga["rare_spread_ratio"]):
            checks.append(("rare spread ratio in 0.8-1.2", 0.8 <= ga["rare_spread_ratio"] <= 1.2,
                           f"{ga['rare_spread_ratio']:.3f}"))
        checks.append(("DCR ratio >= 0.95", ga["dcr_ratio"] >= 0.95, f"{ga['dcr_ratio']:.3f}"))
        checks.append(("MIA AUC <= 0.55", ga["mia_auc"] <= 0.55, f"{ga['mia_auc']:.3f}"))
        for what, ok, val in checks:
            lines.append(f"- {ds}: {what}: {'PASS' if ok else 'FAIL'} ({val})")
    return lines


def _overview(summary, cell) -> list[str]:
    """One table across datasets: a metric per method (mean ± half-width, seeds), control first."""
    order = ["real (control)", "garage", "garage_noseed", "garage_random", "scvi", "knn_interp"]
    methods = [m for m in order if m in set(summary["method"])]
    methods += [m for m in dict.fromkeys(summary["method"]) if m not in methods]
    out = []
    for metric, title in (("c2st_auc", "C2ST AUC (0.5 = indistinguishable; compare with the control)"),
                          ("rare_agreement", "rare agreement (real holdout's own: the control)"),
                          ("tstr_rare_f1", "TSTR rare F1 (control: trained on real train cells)"),
                          ("mia_auc", "membership-attack AUC (0.5 = no leak)")):
        rows = []
        for ds, g in summary.groupby("dataset", sort=False):
            by = {r["method"]: r for _, r in g.iterrows()}
            vals = [cell(by[m], metric) + (f" ({int(by[m]['n_seeds'])})" if m in by and m != "real (control)"
                                           and cell(by[m], metric) else "") if m in by else "" for m in methods]
            if any(vals):
                rows.append("| " + " | ".join([ds, *vals]) + " |")
        if rows:
            out += [f"## Overview: {title}", "", "Mean ± 95 % half-width over training seeds (number of seeds).", "",
                    "| dataset | " + " | ".join(methods) + " |", "|" + "---|" * (len(methods) + 1), *rows, ""]
    return out


def _seed_ablation(summary, cell) -> list[str]:
    """Issue 13.4: GAT seeds vs random seeds (same quotas) vs no seeds, rare-type figures."""
    rows = []
    for ds, g in summary.groupby("dataset", sort=False):
        by = {r["method"]: r for _, r in g.iterrows()}
        if not any(m in by for m in SEED_METHODS[1:]) or "garage" not in by:
            continue
        if not np.isfinite(by["garage"].get("rare_agreement", np.nan)):
            continue  # no rare types
        for m in ("real (control)", *SEED_METHODS):
            if m in by:
                n = "" if m == "real (control)" else str(int(by[m]["n_seeds"]))
                rows.append("| " + " | ".join([ds, m, n, *[cell(by[m], k) for k in SEED_TABLE]]) + " |")
    if not rows:
        return []
    return ["## Seed ablation: GAT seeds vs random seeds vs no seeds (rare types)", "",
            "`garage_random`: the same number of seeds per type, chosen at random "
            "(`garage gat --seed-strategy random`); `garage_noseed`: `--seed-mix 0`. "
            "`rare_c2st`: per-type C2ST averaged over the rare types (0.5 = indistinguishable; the "
            "control row is real train vs holdout); `rare_dcr_ratio`: distance to the closest train "
            "cell, rare types (≥ 1: no closer than real holdout cells). A blank `rare_c2st`: "
            "every rare type has too few holdout cells for evaluate's per-type C2ST.", "",
            "| dataset | method | n_seeds | " + " | ".join(SEED_TABLE) + " |", "|" + "---|" * (len(SEED_TABLE) + 3),
            *rows, ""]


def join_rows(summary, spec: str, split: str):
    """*summary* with the rows of some methods from an earlier table's CSV (``CSV=METHOD,METHOD``),
    in the datasets' order of *summary*; returns (summary, a note naming the source and any dataset
    the CSV lacks a method for). The CSV must be a table of the same split (its name starts with
    ``fidelity_SPLIT``); a method already in *summary* is refused; joined rows keep their source in
    the column ``source``."""
    import pandas as pd

    path, _, methods = spec.partition("=")
    want = [m for m in methods.split(",") if m]
    if not path or not want:
        raise SystemExit(f"--join {spec!r}: write CSV=METHOD[,METHOD]")
    fname = Path(path).name  # fidelity_val_x.csv is fold 1's; fidelity_val2_x.csv is not
    if not (fname.startswith(f"fidelity_{split}_") or fname == f"fidelity_{split}.csv"):
        raise SystemExit(f"--join {spec!r}: {Path(path).name} is not a table of the {split} split "
                         f"(fidelity_{split}*.csv)")
    clash = sorted(set(want) & set(summary["method"]))
    if clash:
        raise SystemExit(f"--join {spec!r}: {clash} already in this table")
    extra = pd.read_csv(path)
    extra = extra[extra["method"].isin(want) & extra["dataset"].isin(summary["dataset"].unique())].copy()
    missing = sorted(set(want) - set(extra["method"]))
    if missing:
        raise SystemExit(f"--join {spec!r}: {path} has no rows of {missing} for these datasets")
    extra["source"] = str(path)
    order = {d: i for i, d in enumerate(summary["dataset"].unique())}
    both = pd.concat([summary, extra], ignore_index=True)
    both = both.iloc[sorted(range(len(both)), key=lambda i: (order[both["dataset"].iat[i]], i))]
    gaps = [f"{m} on {d}" for d in order for m in want
            if not ((extra["dataset"] == d) & (extra["method"] == m)).any()]
    note = f"rows of {', '.join(want)}: from `{path}`" + (f" (none there for {', '.join(gaps)})" if gaps else "")
    here = set(summary["eval"]) if "eval" in summary.columns else set()
    there = set(extra["eval"].fillna("none")) if "eval" in extra.columns else {"none"}
    if there != here or len(here) != 1 or here & {"none", "mixed"}:
        # e.g. rows scored before round 20's C2ST draws beside rows scored after: say so in the report
        note += (f"; **not shown to be scored by the same evaluation** (evaluation code there: "
                 f"{', '.join(sorted(there))}; here: {', '.join(sorted(here)) or 'none'}; 'none': the rows "
                 f"do not say), so their C2ST may not be like for like")
    return both.reset_index(drop=True), note


def write_report(summary, split: str, cmd: str, tag: str, targets_for: str = "garage",
                 joined: list[str] | None = None) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"fidelity_{split}{('_' + tag) if tag else ''}"  # a split "val@0.5" has a dot: no with_suffix
    csv_path, md_path = RESULTS / f"{name}.csv", RESULTS / f"{name}.md"
    summary.to_csv(csv_path, index=False)

    def cell(r, k):
        v, hw = r[k], r.get(k + "_hw", np.nan)
        if v is None or not np.isfinite(v):
            return ""
        f = "{:.0f}" if k == "train_s" else "{:.3f}"
        return f.format(v) + (f" ± {f.format(hw)}" if np.isfinite(hw) else "")

    whole, _, frac = split.partition("@")
    what = "test split" if whole == "test" else (
        f"validation split (fold {whole[3:] or 1}, re-split seed {val_seed(whole)})")
    if frac:
        what += f", train cells thinned to {frac} per type (seed {THIN_SEED})"
    lines = [f"# Fidelity on the {what}", "",
             f"Command: `{cmd}`", "", f"Machine: {machine()}", "",
             "Mean over training seeds ± the half-width of a 95 % t-interval over seeds. "
             "`c2st_gap` = C2ST AUC minus its real-vs-real control in the same evaluation "
             "(0 is perfect). `rare_agreement_control` is the real holdout's own agreement. "
             "`train_s` includes GARAGE's GAT stage.", ""]
    if joined:
        lines += ["Joined from an earlier table of the same split (the CSV's column `source` names it; "
                  "the holdout and the evaluation are the same as long as the preprocessing of that run "
                  "was): " + "; ".join(joined) + ".", ""]
    for ds, g in summary.groupby("dataset", sort=False):
        keys = TABLE
        if "+" in ds:  # a condition: per-condition C2ST and the condition effect (issue 16)
            keys = TABLE + ("c2st_per_condition", "condition_lfc_corr")
        cols = ["method", "n_seeds", *keys]
        lines += [f"## {ds}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for _, r in g.iterrows():
            lines.append("| " + " | ".join([r["method"], str(r["n_seeds"])] + [cell(r, k) for k in keys]) + " |")
        lines.append("")
    if any("+" in str(ds) for ds in summary["dataset"]):
        lines += ["`NAME+KEY` datasets ran with `garage preprocess --condition-key KEY`. "
                  "`c2st_per_condition`: C2ST of synthetic vs real holdout cells of the same condition, "
                  "mean over conditions. `condition_lfc_corr`: correlation of per-gene log-fold changes "
                  "between conditions (synthetic vs holdout), mean over types with enough cells under "
                  "both; its control row is train vs holdout.", ""]
    lines += _overview(summary, cell)
    lines += _seed_ablation(summary, cell)
    lines += [f"## Issue 13 targets (GARAGE defaults: the `{targets_for}` rows)", "",
              *targets(summary, targets_for), ""]
    md_path.write_text("\n".join(lines))
    return md_path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.fidelity", description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default=",".join(DEFAULT_DATASETS))
    ap.add_argument("--split", type=split_arg, default="val",
                    help="test: the reported table; val: validation fold 1, where defaults are chosen; "
                         "val2..val9: more validation folds (other draws of validation cells); "
                         "SPLIT@F: SPLIT with its train cells thinned to the fraction F per type")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                    help='extra GARAGE variant, e.g. big=\'{"gan": {"n_latent": 32}}\' -> method garage@big')
    ap.add_argument("--scvi-epochs", type=int, default=None, help="default: scvi-tools' own schedule")
    ap.add_argument("--tag", default="")
    ap.add_argument("--targets-for", default="garage", metavar="METHOD",
                    help="the method whose rows are the defaults in the issue-13 targets section, and "
                         "whose evaluations give the real-vs-real control row (e.g. a variant run "
                         "with today's default options)")
    ap.add_argument("--force", action="store_true", help="recompute cached rows")
    ap.add_argument("--code-rev", default=None,
                    help="with --report-only: the commit whose GARAGE rows to report (default HEAD)")
    ap.add_argument("--any-code", action="store_true",
                    help="with --report-only: every cached row, whatever commit made it")
    ap.add_argument("--report-only", action="store_true",
                    help="write the table from the cached rows of the current code; compute nothing")
    ap.add_argument("--join", action="append", default=[], metavar="CSV=METHOD[,METHOD]",
                    help="add these methods' summary rows from an earlier table's CSV (same split and "
                         "evaluation; e.g. the peers' rows, which do not depend on GARAGE's code); the "
                         "report names where each joined row came from")
    args = ap.parse_args(argv)

    if (args.code_rev or args.any_code) and not args.report_only:
        ap.error("--code-rev and --any-code report cached rows: use them with --report-only")
    global CODE_REV, ANY_CODE
    CODE_REV, ANY_CODE = args.code_rev, args.any_code
    variants = {}
    for v in args.variant:
        n, js = v.split("=", 1)
        variants[n] = json.loads(js)
    methods = args.methods.split(",") + [f"garage@{n}" for n in variants if f"garage@{n}" not in args.methods]
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    t0 = time.time()
    for name in args.datasets.split(","):
        for method in methods:
            for seed in (seeds if method != "control" else seeds[:1]):
                t1 = time.time()
                row = run_one(name, args.split, method, seed, variants, args.scvi_epochs, args.force,
                              args.report_only)
                if row:
                    rows.append(row)
                    if row.get("status") == "ok":
                        m = row["metrics"]
                        print(f"{name:16s} {method:22s} s{seed}  c2st {m['c2st_auc']['value']:.3f} "
                              f"(ctrl {m['c2st_auc']['control']:.3f})  rare {_fmt(_value(row, 'rare_agreement'))}  "
                              f"tstr_rare {_fmt(_value(row, 'tstr_rare_f1'))}  dcr {_fmt(_value(row, 'dcr_ratio'))}  "
                              f"[{time.time() - t1:.0f}s]", flush=True)
    if args.targets_for not in methods:
        print(f"warning: --targets-for {args.targets_for} is not among --methods: the report has no "
              "control row and no targets", file=sys.stderr)
    summary = summarise(rows, control_from=args.targets_for)
    joined = []
    for spec in args.join:
        summary, note = join_rows(summary, spec, args.split)
        joined.append(note)
    cmd = "python -m bench.fidelity " + shlex.join(argv if argv is not None else sys.argv[1:])  # pastable
    path = write_report(summary, args.split, cmd, args.tag, args.targets_for, joined)
    print(path.read_text())
    print(f"total {time.time() - t0:.0f}s")


def _fmt(v):
    return "NA" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.3f}"


if __name__ == "__main__":
    main()
