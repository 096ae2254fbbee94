"""Does the latent GAN put its codes where the train codes are, type by type?  (issue 13, round 12)

Trains one GARAGE model in-process on the train cells of a GAT output (a validation split by
default, as ``bench.fidelity --split val`` writes it) and compares, per type, the generated codes
(train composition, seeded and unseeded as generation draws them) with the fit cells' codes in
the model's standardised latent space: the shift of the mean in units of the fit cells' sd, and
the ratio of sds (generated / fit), per dimension.  Then it scores with ``garage evaluate`` (3
holdout draws) the cells decoded from

- ``garage``: the generated codes as they are (the model's own cells, up to the redraw of exact
  copies);
- ``calib_mean``: the same codes shifted so every type's mean is the fit cells' mean;
- ``calib_diag``: shifted and rescaled per dimension so every type's mean and sd are the fit
  cells' (a moment match; small types are shrunk towards no change with *k* pseudo-cells);
- ``fit_means``: the fit cells' own posterior means (the decoder's ceiling, no GAN);

all with the model's library-size model (code-conditional) and NB noise.  If the calibrated rows
are much closer to the ceiling than ``garage``, the latent GAN misplaces whole types and a
per-type moment match (aggregate statistics, no single cell) is a candidate generation step.

Run:  python -m bench.calibrate_probe --seeds-from bench/_work/fidelity/DS/val/garage_s0/DS.seeds.h5ad \
        --seed 0 --threads 1 --out bench/_work/calib/DS_s0.json
      python -m bench.calibrate_probe --report bench/_work/calib/*.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ._common import generated_codes, train_in_process

#: pseudo-cells that shrink a small type's calibration towards no change
SHRINK = 10


def moments(z: np.ndarray):
    return z.mean(0), z.std(0) + 1e-6


def calibrate(gz: np.ndarray, gt: np.ndarray, fz: np.ndarray, ft: np.ndarray, scale: bool,
              k: int = SHRINK) -> np.ndarray:
    """Per type: move the generated codes' mean (and sd, if *scale*) to the fit codes', shrunk."""
    out = gz.copy()
    for t in np.unique(gt):
        g, f = gt == t, ft == t
        n = int(f.sum())
        if n < 2 or g.sum() < 2:
            continue
        mg, sg = moments(gz[g])
        mf, sf = moments(fz[f])
        w = n / (n + k)
        target_m = w * mf + (1 - w) * mg
        target_s = np.sqrt(w * sf**2 + (1 - w) * sg**2) if scale else sg
        out[g] = target_m + (gz[g] - mg) * (target_s / sg)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds-from", type=Path)
    ap.add_argument("--gan", default="{}", help="GANConfig overrides as JSON")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--report", nargs="*", type=Path)
    args = ap.parse_args(argv)
    if args.report:
        return report(args.report)

    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp
    import torch

    from garage import constants as C
    from garage.evaluate import EvaluateConfig, evaluate_adata
    from garage.gan._nn import sample_counts
    from garage.gan._train import sample_library_conditional

    real, model = train_in_process(args.seeds_from, args.seed, args.threads, json.loads(args.gan))
    net, data, meta = model.net, model.data, model.meta
    cats = meta["categories"]
    nc = data.n_conds > 1
    gen = torch.Generator().manual_seed(1000 + args.seed)
    fit = np.asarray(data.fit_rows)
    fz = data.codes.numpy()[fit]
    ft = data.types.numpy()[fit]
    # generated codes with the train composition, as generation draws them
    gz, mask = generated_codes(model, data.types, data.conds, gen)
    gt = data.types.numpy()

    per_type = {}
    for k, t in enumerate(cats):
        f, gg = ft == k, gt == k
        if f.sum() < 3:
            continue
        mf, sf = moments(fz[f])
        mg, sg = moments(gz[gg])
        per_type[t] = {"n_fit": int(f.sum()),
                       "mean_shift_sd": float(np.linalg.norm((mg - mf) / sf) / np.sqrt(len(mf))),
                       "sd_ratio_median": float(np.median(sg / sf)),
                       "sd_ratio_min": float(np.min(sg / sf)), "sd_ratio_max": float(np.max(sg / sf)),
                       "seeded_fraction": float(mask[gg].mean())}
    print(pd.DataFrame(per_type).T.round(3).to_string(), flush=True)

    groups = data.group(data.types, data.conds)
    lib_params = data.lib_params.float()
    coef, cmean = meta["lib_coef"].float(), meta["lib_code_mean"].float()
    scale = float(meta["lib_resid_scale"])
    theta = net.vae.theta.detach()
    codes_all = data.codes.numpy()
    variants = {
        "garage": (gz, gt, groups),
        "calib_mean": (calibrate(gz, gt, fz, ft, scale=False), gt, groups),
        "calib_diag": (calibrate(gz, gt, fz, ft, scale=True), gt, groups),
        "fit_means": (codes_all[fit], ft, groups[torch.from_numpy(fit)]),
    }
    ev = {}
    for name, (z, types, grp) in variants.items():
        zt = torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32))
        conds = data.conds[: len(z)] if name != "fit_means" else data.conds[torch.from_numpy(fit)]
        with torch.no_grad():
            prop, _ = net.decode(zt, conds if nc else None)
            lib = sample_library_conditional(lib_params, grp, zt, coef, cmean, scale, gen)
            x = sample_counts(prop * lib[:, None], "nb", theta=theta, generator=gen).numpy()
        syn = ad.AnnData(sp.csr_matrix(x), obs=pd.DataFrame(
            {C.OBS_CELL_TYPE: pd.Categorical([cats[i] for i in types], categories=cats)},
            index=[f"c{i}" for i in range(len(x))]), var=pd.DataFrame(index=real.var_names))
        if nc:
            cn = meta["conditions"]
            syn.obs[C.OBS_CONDITION] = pd.Categorical([cn[i] for i in conds.numpy()], categories=cn)
        doc = evaluate_adata(real, syn, EvaluateConfig(plots=False, n_repeats=args.draws))
        m = doc["metrics"]
        ev[name] = {k: m[k]["value"] for k in ("c2st_auc", "rare_agreement", "dcr_ratio", "mia_auc",
                                               "libsize_ks") if k in m}
        ev[name]["control_c2st"] = m["c2st_auc"]["control"]
        print(name, json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in ev[name].items()}),
              flush=True)
    out = {"seeds_from": str(args.seeds_from), "seed": args.seed, "gan": json.loads(args.gan),
           "per_type": per_type, "evaluate": ev}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1, default=float))


def report(paths):
    rows = []
    for p in paths:
        d = json.loads(Path(p).read_text())
        name = Path(d["seeds_from"]).name.split(".")[0]
        for v, m in d["evaluate"].items():
            rows.append({"dataset": name, "seed": d["seed"], "variant": v,
                         "gap": m["c2st_auc"] - m["control_c2st"], "mia": m.get("mia_auc"),
                         "dcr": m.get("dcr_ratio"), "rare_agreement": m.get("rare_agreement")})
    import pandas as pd

    df = pd.DataFrame(rows)
    print(df.groupby(["dataset", "variant"])[["gap", "mia", "dcr", "rare_agreement"]].agg(["mean", "std", "count"])
          .round(3).to_string())


if __name__ == "__main__":
    main()
