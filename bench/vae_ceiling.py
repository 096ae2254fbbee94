"""The autoencoder's ceiling: how real do decoded train cells look? (issue 13, diagnosis inner loop)

GARAGE's cells are decoded latent codes, so no latent GAN can beat what the
count-VAE makes of the train cells' own codes.  This trains only the
autoencoder phases (one adversarial step) for each variant and training seed,
decodes the train cells' posterior means (and posterior samples) at their own
library sizes with NB noise, and scores them with ``garage evaluate`` against
the split's holdout (3 holdout draws).  A variant that lowers this ceiling
without raising the membership-attack AUC is worth a full ``bench.fidelity``
run; one that does not can be dropped in minutes instead of an hour.

With ``{"full": true}`` the adversarial phase is trained too, and the rows add the model's own
cells (``generated``), the train means at the model's own code-conditional sizes
(``means_modellib``) and at the sizes of two bench refits of that size model on the train codes:
one regression vector with per-group residual sds (``means_groupsd``) and one vector per group,
shrunk to the shared one (``means_grouplib``; round 28).  Every row has its per-type C2ST.

``python -m bench.vae_ceiling --report A.json B.json`` prints the rows as one table.

Run on validation splits only (the GAT output of ``bench.fidelity --split val``):

    python -m bench.vae_ceiling --input bench/_work/fidelity/pbmc3k/val/garage_s0/pbmc3k.seeds.h5ad \\
        --variant base='{}' --variant lat10='{"n_latent": 10}' --seeds 0,1 --out ceiling_pbmc3k.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def _type_theta(net, data, mu, lam: float, steps: int = 300):
    """log theta[type, gene] = log theta[gene] + delta[type, gene], the decoder fixed at the
    posterior means; a ridge of *lam* pseudo-cells pulls every type's delta to 0."""
    import torch

    from garage.gan._nn import nb_log_likelihood

    with torch.no_grad():
        x = torch.from_numpy(data.counts.toarray().astype(np.float32))
        lib = x.sum(1, keepdim=True)
        m = net.vae.proportions(mu, data.conds if net.vae.n_conds > 1 else None) * lib
        base = net.vae.log_theta.detach()
    types = data.types
    n_t = int(types.max()) + 1
    delta = torch.zeros(n_t, x.shape[1], requires_grad=True)
    opt = torch.optim.Adam([delta], lr=0.05)
    for _ in range(steps):
        th = (base + delta[types]).exp()
        loss = -nb_log_likelihood(x, m, th).sum() / len(x) + lam * delta.pow(2).sum() / len(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (base + delta.detach()).exp()


def train_posteriors(net, data):
    """(posterior means, posterior sds, HVG library sizes) of every train cell (CPU, eval mode)."""
    import torch

    nc = net.vae.n_conds > 1
    with torch.no_grad():
        mus, lvs = [], []
        for lo in range(0, data.n, 4096):
            idx = torch.arange(lo, min(lo + 4096, data.n))
            m_, lv_ = net.vae.encode(data.batch_counts(idx, "cpu"), data.conds[idx] if nc else None)
            mus.append(m_), lvs.append(lv_)
    lib = torch.from_numpy(np.asarray(data.counts.sum(1)).ravel().astype(np.float32))
    return torch.cat(mus), (0.5 * torch.cat(lvs)).exp(), lib


def ceiling(real, overrides: dict, seed: int, draws: int = 3) -> dict:
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp
    import torch

    from garage import constants as C
    from garage._utils import set_seed
    from garage.evaluate import EvaluateConfig, evaluate_adata
    from garage.gan import GANConfig, GarageGAN
    from garage.gan._nn import sample_counts

    set_seed(seed)
    t0 = time.time()
    full = overrides.pop("full", False)  # train the adversarial phase too (its default length)
    type_theta = overrides.pop("type_theta", 0)  # prototype row: per-type dispersion, this ridge
    # prototype against the decoder memorising small inputs (round 10): L2 weight decay in the
    # autoencoder's and decoder's optimisers (not the GAN's); the dropout it was screened beside is
    # the GANConfig option decoder_dropout (default 0.2: pass {"decoder_dropout": 0} for none)
    weight_decay = overrides.pop("weight_decay", 0.0)
    cfg = GANConfig(seed=seed, checkpoint_every=0, **({} if full else {"gan_steps": 1}), **overrides)
    model = GarageGAN.setup(real, cfg)
    adam = torch.optim.Adam
    if weight_decay:  # the autoencoder's optimisers are the ones built without betas
        torch.optim.Adam = lambda params, lr, **kw: adam(params, lr=lr, **kw) if "betas" in kw else \
            adam(params, lr=lr, weight_decay=weight_decay)
    try:
        model.train(torch.device("cpu"))
    finally:
        torch.optim.Adam = adam
    train_s = time.time() - t0
    net, data = model.net, model.data
    net.eval()
    cats = model.meta["categories"]
    nc = net.vae.n_conds > 1
    gen = torch.Generator().manual_seed(seed + 7)
    mu, sd, lib = train_posteriors(net, data)
    theta = net.vae.theta.detach()
    out = {"train_s": round(train_s, 1), "steps": model.meta.get("steps_run")}
    variants = [("means", mu, lib), ("samples", mu + torch.randn(mu.shape, generator=gen) * sd, lib)]
    thetas = {}
    if type_theta:  # prototype: NB dispersion per type x gene, refitted at the posterior means
        thetas["means_typetheta"] = _type_theta(net, data, mu, type_theta)
        variants.append(("means_typetheta", mu, lib))
    meta = model.meta
    if full and "lib_coef" in meta:  # the train means at the model's own (code-conditional) library sizes
        from garage.gan._model import _lib_params_of
        from garage.gan._train import sample_library_conditional

        with torch.no_grad():
            mlib = sample_library_conditional(_lib_params_of(meta), data.group(data.types, data.conds),
                                              data.codes, meta["lib_coef"].float(),
                                              meta["lib_code_mean"].float(), float(meta["lib_resid_scale"]), gen)
        variants.append(("means_modellib", mu, mlib))
    if full:  # the train means at sizes from two bench refits of the size model (fit on the train codes)
        from .diagnose_gan import fit_cond_library, fit_group_library

        groups = data.group(data.types, data.conds)
        lib_gen = torch.Generator().manual_seed(seed + 11)  # its own: the rows above keep their draws
        for name, fit in (("means_groupsd", fit_cond_library), ("means_grouplib", fit_group_library)):
            sampler, r2 = fit(data.codes.cpu(), data.loglib, groups)
            with torch.no_grad():
                variants.append((name, mu, sampler(data.codes.cpu(), groups, lib_gen)))
            out[f"{name}_r2"] = round(r2, 4)
        variants.append(("generated", None, None))
    for name, z, lb in variants:
        if z is None:
            syn = model.generate(None, "original", None, seed=seed)
        else:
            with torch.no_grad():
                prop = net.vae.proportions(z, data.conds if nc else None)
                th = thetas[name][data.types] if name in thetas else theta
                x = sample_counts(prop * lb[:, None], "nb", theta=th, generator=gen).numpy()
            syn = ad.AnnData(sp.csr_matrix(x), obs=pd.DataFrame(
                {C.OBS_CELL_TYPE: pd.Categorical([cats[i] for i in data.types.numpy()])},
                index=[f"c{i}" for i in range(len(x))]), var=pd.DataFrame(index=real.var_names))
        doc = evaluate_adata(real, syn, EvaluateConfig(plots=False, n_repeats=draws))
        m = doc["metrics"]
        out[name] = {"c2st_gap": m["c2st_auc"]["value"] - m["c2st_auc"]["control"],
                     "c2st": m["c2st_auc"]["value"], "control": m["c2st_auc"]["control"],
                     "mia_auc": m["mia_auc"]["value"], "dcr_ratio": m["dcr_ratio"]["value"],
                     "libsize_ks": m["libsize_ks"]["value"]}
        pt = doc.get("per_type")
        if pt is not None and "c2st" in pt:  # per type: (C2ST, its control), where both were scored
            out[name]["per_type_c2st"] = {
                str(r["cell_type"]): [float(r["c2st"]), float(r["c2st_control"])]
                for _, r in pt.iterrows() if np.isfinite(r["c2st"]) and np.isfinite(r["c2st_control"])}
    return out


def report(paths: list[Path]) -> str:
    """Markdown: per input and variant, mean (and range over seeds) of each scored row."""
    import pandas as pd

    recs = []
    for p in paths:
        for r in json.loads(Path(p).read_text()):
            for kind, v in r.items():
                if isinstance(v, dict) and "c2st_gap" in v:
                    recs.append({"input": Path(r["input"]).name.split(".")[0], "variant": r["variant"],
                                 "ae_steps": (r.get("steps") or {}).get("ae"), "row": kind,
                                 "seed": r["seed"], "c2st_gap": v["c2st_gap"], "mia_auc": v["mia_auc"]})
    df = pd.DataFrame(recs)
    lines = ["| dataset | variant | AE steps | cells scored | seeds | C2ST gap (range) | MIA AUC (range) |",
             "|---|---|---|---|---|---|---|"]
    for (ds, var, row), g in df.groupby(["input", "variant", "row"], sort=False):
        def cell(c):
            return f"{g[c].mean():+.3f} ({g[c].min():+.3f} – {g[c].max():+.3f})" if len(g) > 1 else f"{g[c].mean():+.3f}"
        lines.append(f"| {ds} | {var} | {int(g['ae_steps'].iloc[0]) if g['ae_steps'].notna().all() else ''} | "
                     f"{row} | {len(g)} | {cell('c2st_gap')} | {cell('mia_auc').replace('+', '')} |")
    return "\n".join(lines)


def main(argv=None):
    import anndata as ad
    import torch

    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--report":
        print(report(sys.argv[2:]))
        return

    ap = argparse.ArgumentParser(prog="python -m bench.vae_ceiling", description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", type=Path, required=True, help="a PREFIX.seeds.h5ad of a validation split")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                    help="GANConfig overrides, e.g. lat10='{\"n_latent\": 10}'; \"full\": true also trains "
                         "the adversarial phase and scores the means at the model's library sizes and the "
                         "model's own cells")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--draws", type=int, default=3, help="holdout draws per evaluation")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="JSON of every row (appended to if it exists)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    real = ad.read_h5ad(args.input)
    rows = json.loads(args.out.read_text()) if args.out and args.out.exists() else []
    for v in args.variant or ["base={}"]:
        name, js = v.split("=", 1)
        for s in (int(x) for x in args.seeds.split(",")):
            r = ceiling(real, json.loads(js), s, args.draws)
            rows.append({"input": str(args.input), "variant": name, "overrides": json.loads(js), "seed": s, **r})
            parts = [f"{k} gap {v['c2st_gap']:+.3f} mia {v['mia_auc']:.3f}" for k, v in r.items()
                     if isinstance(v, dict) and "c2st_gap" in v]
            print(f"{name:12s} s{s} " + " | ".join(parts) + f" | train {r['train_s']:.0f}s", flush=True)
            if args.out:
                args.out.write_text(json.dumps(rows, indent=1, default=float))


if __name__ == "__main__":
    main()
