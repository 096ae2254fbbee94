"""Side-by-side benchmark of GARAGE against the methods a user would pick instead.

Every method trains on the same train split (from one `garage preprocess` run,
fixed seed) and is scored by the same `garage evaluate` against the same real
holdout cells.  Each method runs in its own child process so its wall time and
peak memory are its own.

Methods
-------
garage            GARAGE defaults (GAT seeds + conditional hybrid-input GAN)
garage_noseed     ablation: --seed-mix 0 (no seed cells in the generator input)
garage_original   the prototype's setting (unconditional GAN, real seeds fed in, label-smoothed BCE)
scvi              scvi-tools SCVI (NB likelihood) trained on train-split HVG counts; cells are
                  posterior-predictive samples of train cells, drawn per type in train proportions
knn_interp        within-type SMOTE-like interpolation in count space + Poisson sampling
control           the real holdout itself (the reference row)

Run:  python -m bench [--data PATH --label-key KEY --name NAME] [--methods a,b,...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ._common import PBMC3K, REPO, RESULTS, WORK, machine, measure

METHODS = ("garage", "garage_noseed", "garage_original", "scvi", "knn_interp", "control")
TABLE_METRICS = (
    "c2st_auc", "mmd_rbf", "wasserstein_pca", "rare_agreement", "type_agreement",
    "tstr_macro_f1", "tstr_rare_f1", "mean_corr", "zero_frac_corr", "libsize_ks",
    "dcr_ratio", "exact_copies", "mia_auc",
)


# ------------------------------------------------------------ child process
def _train_method(method: str, seeds_h5ad: Path, out: Path, seed: int, scvi_epochs: int) -> Path:
    """Train *method* on the train split of *seeds_h5ad*; write OUT/method.synthetic.h5ad."""
    import anndata as ad
    import numpy as np

    from garage import constants as C

    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{method}{C.SUFFIX_SYNTHETIC}"
    if method.startswith("garage"):
        from garage.gan import GANConfig, run_gan

        over = {"garage": {}, "garage_noseed": {"seed_mix": 0.0},
                "garage_original": {"mode": "original"}}[method]
        res = run_gan(seeds_h5ad, out, method, GANConfig(seed=seed, **over))
        return Path(res["h5ad"])

    real = ad.read_h5ad(seeds_h5ad)
    train = real[real.obs[C.OBS_SPLIT] == C.SPLIT_TRAIN].copy()
    labels = train.obs[C.OBS_LABEL].astype(str)
    n_per_type = labels.value_counts().to_dict()  # same composition as the train split
    # a condition (preprocess --condition-key): baselines keep it, so evaluate can score per condition
    cond = train.obs[C.OBS_CONDITION].astype(str) if C.OBS_CONDITION in train.obs.columns else None
    if method == "knn_interp":
        import pandas as pd

        from garage.baselines import knn_interpolation

        sep = "\x1f"  # interpolate within type x condition when there is a condition
        groups = labels if cond is None else labels + sep + cond
        syn = knn_interpolation(
            ad.AnnData(train.layers[C.LAYER_COUNTS], obs=train.obs[[]], var=train.var[[]]),
            groups, groups.value_counts().to_dict(), seed=seed,
        )
        if cond is not None:
            parts = syn.obs[C.OBS_CELL_TYPE].astype(str).str.split(sep, n=1, expand=True)
            syn.obs[C.OBS_CELL_TYPE] = pd.Categorical(parts[0])
            syn.obs[C.OBS_SYN_CONDITION] = pd.Categorical(parts[1])
    elif method == "scvi":
        import pandas as pd
        import scipy.sparse as sp
        import scvi

        scvi.settings.seed = seed
        a = ad.AnnData(sp.csr_matrix(train.layers[C.LAYER_COUNTS]), obs=pd.DataFrame(index=train.obs_names),
                       var=pd.DataFrame(index=train.var_names))
        if cond is not None:  # scVI's own covariate mechanism: the condition as batch
            a.obs["condition"] = cond.to_numpy()
        scvi.model.SCVI.setup_anndata(a, batch_key="condition" if cond is not None else None)
        model = scvi.model.SCVI(a)
        model.train(max_epochs=scvi_epochs, accelerator="cpu", enable_progress_bar=False)
        rng = np.random.default_rng(seed)
        idx, cts = [], []
        for ct, n in n_per_type.items():
            pool = np.flatnonzero(labels.to_numpy() == ct)
            idx.append(rng.choice(pool, size=n, replace=len(pool) < n))
            cts += [ct] * n
        idx = np.concatenate(idx)
        samples = model.posterior_predictive_sample(indices=idx, n_samples=1)
        X = samples.to_scipy_sparse() if hasattr(samples, "to_scipy_sparse") else sp.csr_matrix(np.asarray(samples.todense() if hasattr(samples, "todense") else samples))
        X = sp.csr_matrix(X, dtype=np.float32)
        syn = ad.AnnData(X, obs=pd.DataFrame({
            C.OBS_CELL_TYPE: pd.Categorical(cts), C.OBS_SYNTHETIC: True,
            C.OBS_SEED_ID: train.obs_names[idx].astype(str)}, index=[f"scvi_{i}" for i in range(len(idx))]),
            var=pd.DataFrame(index=train.var_names))
        if cond is not None:  # each posterior sample keeps its train cell's condition
            syn.obs[C.OBS_SYN_CONDITION] = pd.Categorical(cond.to_numpy()[idx])
    elif method == "control":
        import pandas as pd
        import scipy.sparse as sp

        hold = real[real.obs[C.OBS_SPLIT] == C.SPLIT_HOLDOUT]
        syn = ad.AnnData(sp.csr_matrix(hold.layers[C.LAYER_COUNTS]), obs=pd.DataFrame({
            C.OBS_CELL_TYPE: pd.Categorical(hold.obs[C.OBS_LABEL].astype(str)), C.OBS_SYNTHETIC: True,
            C.OBS_SEED_ID: ""}, index=hold.obs_names), var=pd.DataFrame(index=hold.var_names))
    else:
        raise SystemExit(f"unknown method {method}")
    syn.write_h5ad(target)
    return target


# ------------------------------------------------------------------ driver
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench")
    ap.add_argument("--data", type=Path, default=PBMC3K)
    ap.add_argument("--label-key", default="cell_type")
    ap.add_argument("--name", default=None)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scvi-epochs", type=int, default=400)
    ap.add_argument("--_train", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_seeds", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_out", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._train:  # child mode: one method, timed by the parent
        _train_method(args._train, args._seeds, args._out, args.seed, args.scvi_epochs)
        return

    name = args.name or args.data.name.split(".")[0]
    work = WORK / f"compare_{name}"
    work.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    pp = work / f"{name}.preprocessed.h5ad"
    seeds = work / f"{name}.seeds.h5ad"
    stage_times = {}
    if not pp.exists():
        m = measure([py, "-m", "garage.cli", "-q", "preprocess", "--input", args.data, "--label-key",
                     args.label_key, "--prefix", name, "--outdir", work, "--seed", args.seed])
        assert m["rc"] == 0, "preprocess failed"
        stage_times["preprocess"] = m
    if not seeds.exists():
        m = measure([py, "-m", "garage.cli", "-q", "gat", "--input", pp, "--prefix", name,
                     "--outdir", work, "--seed", args.seed])
        assert m["rc"] == 0, "gat failed"
        stage_times["gat"] = m
    gat_time = stage_times.get("gat", {}).get("wall_s")

    rows = []
    for method in args.methods.split(","):
        out = work / method
        t0 = time.time()
        m = measure([py, "-m", "bench", "--_train", method, "--_seeds", seeds, "--_out", out,
                     "--seed", args.seed, "--scvi-epochs", args.scvi_epochs])
        if m["rc"] != 0:
            print(f"{method}: FAILED (rc {m['rc']})", flush=True)
            rows.append({"method": method, "status": "failed"})
            continue
        syn = next(out.glob("*.synthetic.h5ad"))
        e = measure([py, "-m", "garage.cli", "-q", "evaluate", "--real", pp, "--synthetic", syn,
                     "--prefix", method, "--outdir", out / "evaluate", "--seed", args.seed])
        if e["rc"] != 0:
            rows.append({"method": method, "status": "evaluate failed"})
            continue
        metrics = json.loads((out / "evaluate" / f"{method}.garage_metrics.json").read_text())
        row = {"method": method, "status": "ok", "train_s": round(m["wall_s"], 1),
               "peak_mb": round(m["peak_mb"])}
        if method.startswith("garage") and gat_time is not None:
            row["train_s_incl_gat"] = round(m["wall_s"] + gat_time, 1)
        for k in TABLE_METRICS:
            v = metrics["metrics"].get(k, {})
            row[k] = v.get("value")
            if method == "control":
                row[k + "_control"] = v.get("control")
        row["n_synthetic"] = metrics["n_cells"]["synthetic"]
        rows.append(row)
        print(f"{method}: done in {time.time() - t0:.0f}s", flush=True)

    _write_tables(name, rows, args, stage_times)


def _write_tables(name, rows, args, stage_times):
    import pandas as pd

    RESULTS.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    df.to_csv(RESULTS / f"compare_{name}.csv", index=False)
    rows = df.astype(object).where(df.notna(), None).to_dict("records")
    cmd = f"python -m bench --data {args.data} --label-key {args.label_key} --methods {args.methods}"
    ctrl = {}
    try:
        cj = json.loads((WORK / f"compare_{name}" / "control" / "evaluate" / "control.garage_metrics.json").read_text())
        ctrl = {k: v.get("control") for k, v in cj["metrics"].items()}
    except (OSError, KeyError, ValueError):
        pass
    cols = ["method", "train_s", "train_s_incl_gat", "peak_mb"] + [c for c in TABLE_METRICS if c in df.columns]
    lines = [f"# Method comparison: {name}", "", f"Command: `{cmd}`", "",
             f"Machine: {machine()}", "",
             "Every method trains on the same train split and is evaluated by `garage evaluate` "
             "against the same real holdout. `control` is the real holdout itself; the "
             "`real-vs-real` row is each metric's control value (holdout vs train). "
             "`train_s` is the method's own training + generation in a child process; "
             "`train_s_incl_gat` adds GARAGE's stage 1 (GAT) run.", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    def fmt(v):
        if v is None or (isinstance(v, float) and v != v):
            return ""
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(c)) for c in cols) + " |")
    if ctrl:
        lines.append("| real-vs-real | | | | " + " | ".join(fmt(ctrl.get(c)) for c in cols[4:]) + " |")
    (RESULTS / f"compare_{name}.md").write_text("\n".join(lines) + "\n")
    _plot(df, name)
    print("\n".join(lines))


def _plot(df, name):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = df[df.get("status", "ok") == "ok"] if "status" in df else df
    panels = [("c2st_auc", "C2ST AUC (0.5 ideal)"), ("rare_agreement", "rare-type agreement (higher)"),
              ("dcr_ratio", "DCR ratio (~1 ideal)"), ("train_s", "train time, s")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6))
    for ax, (col, title) in zip(axes, panels):
        if col in ok:
            ax.barh(ok["method"], ok[col].astype(float), color="#4C72B0")
        ax.set_title(title, fontsize=10)
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(RESULTS / f"compare_{name}.png", dpi=110)


if __name__ == "__main__":
    main()
