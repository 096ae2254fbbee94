"""Probe: does resampling the latent GAN's codes by a learned density ratio close the C2ST gap?

Trains a GARAGE model in-process on a GAT output (``PREFIX.seeds.h5ad``; a saved model has no
encoder, so the train cells' codes need the live model), draws K candidate codes per cell from the generator (the generation-time seed mixture), trains
a small classifier of real train codes against generated codes (type and condition as inputs;
early-stopped on the held-out validation rows' codes), and keeps for every cell one of its K
candidates with probability proportional to the clipped density ratio exp(logit) ** alpha.
The resampled codes are decoded, given code-conditional library sizes and NB counts, and
scored by ``garage evaluate`` against the holdout, beside the same cells without resampling
(K = 1) drawn the same way.  Validation splits only (this is for choosing a default).

    python -m bench.reweight_probe --input DIR/DS.seeds.h5ad --seed 0 \
        --k 1,8 --alpha 1 --draws 3 --out bench/_work/reweight/DS_s0.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def _onehot(idx, n):
    import torch

    return torch.nn.functional.one_hot(idx, n).float() if n > 1 else idx.new_zeros((len(idx), 0)).float()


def train_ratio(real, real_lab, fake, fake_lab, val_real, val_lab, fake_val, fake_val_lab, n_lab,
                seed=0, hidden=128, steps=3000, wd=1e-3):
    """Classifier real (1) vs generated (0) on (code, label one-hot); early-stopped on held-out codes."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    d = real.shape[1] + (n_lab if n_lab > 1 else 0)
    net = nn.Sequential(nn.Linear(d, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=wd)
    xr = torch.cat([real, _onehot(real_lab, n_lab)], 1)
    xf = torch.cat([fake, _onehot(fake_lab, n_lab)], 1)
    xvr = torch.cat([val_real, _onehot(val_lab, n_lab)], 1)
    xvf = torch.cat([fake_val, _onehot(fake_val_lab, n_lab)], 1)
    bce = nn.BCEWithLogitsLoss()
    g = torch.Generator().manual_seed(seed)
    best, best_state, bad = np.inf, None, 0
    for step in range(steps):
        ir = torch.randint(len(xr), (256,), generator=g)
        jf = torch.randint(len(xf), (256,), generator=g)
        logit = net(torch.cat([xr[ir], xf[jf]])).squeeze(1)
        y = torch.cat([torch.ones(256), torch.zeros(256)])
        loss = bce(logit, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 99:
            with torch.no_grad():
                v = 0.5 * (bce(net(xvr).squeeze(1), torch.ones(len(xvr))).item()
                           + bce(net(xvf).squeeze(1), torch.zeros(len(xvf))).item())
            if v < best - 1e-4:
                best, best_state, bad = v, {k: t.clone() for k, t in net.state_dict().items()}, 0
            else:
                bad += 1
                if bad >= 5:
                    break
    if best_state is not None:
        net.load_state_dict(best_state)
    return net, best


def main(argv=None):
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp
    import torch

    from garage import constants as C
    from garage.evaluate import EvaluateConfig, evaluate_adata
    from garage._utils import set_seed
    from garage.gan import GANConfig, GarageGAN
    from garage.gan._model import _lib_params_of
    from garage.gan._nn import sample_counts
    from garage.gan._train import pick_seeds, sample_library_conditional

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gan", default="{}", help="GANConfig overrides (JSON)")
    p.add_argument("--input", type=Path, required=True)
    p.add_argument("--k", default="1,8", help="candidates per cell, comma-separated (1 = no resampling)")
    p.add_argument("--alpha", default="1", help="exponent(s) of the ratio, comma-separated")
    p.add_argument("--clip", type=float, default=20.0, help="ratio clipped to this multiple of its median")
    p.add_argument("--clf", default="fit,val", help="classifier validation: fit (held-out fit rows), val")
    p.add_argument("--space", default="latent", choices=["latent", "decoded"], help="the classifier's input")
    p.add_argument("--draws", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    if json.loads(a.gan).get("library") == "depth":  # its generator call gives no depth input
        p.error("not for --library depth models")
    torch.set_num_threads(a.threads)
    t0 = time.time()
    real = ad.read_h5ad(a.input)
    set_seed(a.seed)
    cfg = GANConfig(seed=a.seed, checkpoint_every=0, **json.loads(a.gan))
    if cfg.effective_type_states > 1:
        p.error("within-type states (type_states > 1) are not drawn by this probe")
    model = GarageGAN.setup(real, cfg)
    model.train(torch.device("cpu"))
    train_s = time.time() - t0
    data, net = model.data, model.net
    net.eval()
    meta = model.meta
    n_conds = data.n_conds
    n_lab = len(meta["categories"]) * n_conds
    gen = torch.Generator().manual_seed(a.seed + 11)
    codes_seed = meta["seed_codes"]

    def draw(t, c):
        noise = torch.randn(len(t), cfg.noise_dim, generator=gen)
        # the trainer's seed choice (labels = types: within-type states are refused above)
        mask, pos = pick_seeds(data, t, c, cfg.seed_mix, gen)
        return net.generated(t, c, noise, codes_seed[pos], mask)

    fit = torch.from_numpy(data.fit_rows)
    val = torch.from_numpy(data.val_rows)
    types, conds = data.types, data.conds
    lab = types * n_conds + conds
    with torch.no_grad():
        fake_fit = draw(types[fit], conds[fit])
        fake_val = draw(types[val], conds[val])
    # "val": early-stopped on the validation rows' codes (held-out cells: the encoder places them a
    # little apart from train cells); "fit": on a fifth of the fit rows kept out of the classifier
    nc_ = net.vae.n_conds > 1
    if a.space == "decoded":  # the classifier sees decoded mean profiles (log1p of 1e4 x proportions) on 50 PCs
        with torch.no_grad():
            xd = torch.log1p(1e4 * net.decode(data.codes[fit], conds[fit] if nc_ else None)[0])
            mu_d = xd.mean(0)
            _, _, v = torch.pca_lowrank(xd - mu_d, q=50, center=False)

    def F(z, c):
        if a.space != "decoded":
            return z
        with torch.no_grad():
            xd = torch.log1p(1e4 * net.decode(z, c if nc_ else None)[0])
            return (xd - mu_d) @ v

    perm = fit[torch.randperm(len(fit), generator=torch.Generator().manual_seed(a.seed + 5))]
    f_in, f_out = perm[: int(0.8 * len(perm))], perm[int(0.8 * len(perm)):]
    clfs, vlosses = {}, {}
    with torch.no_grad():
        fake_out = draw(types[f_out], conds[f_out])
    for name in a.clf.split(","):
        if name == "val":
            clfs[name], vlosses[name] = train_ratio(F(data.codes[fit], conds[fit]), lab[fit], F(fake_fit, conds[fit]),
                                                    lab[fit], F(data.codes[val], conds[val]), lab[val],
                                                    F(fake_val, conds[val]), lab[val], n_lab, seed=a.seed)
        else:
            rows_in = torch.isin(fit, f_in)
            clfs[name], vlosses[name] = train_ratio(F(data.codes[f_in], conds[f_in]), lab[f_in],
                                                    F(fake_fit[rows_in], conds[fit][rows_in]), lab[fit][rows_in],
                                                    F(data.codes[f_out], conds[f_out]), lab[f_out],
                                                    F(fake_out, conds[f_out]), lab[f_out], n_lab, seed=a.seed)
    print("classifier validation BCE (ln 2 = 0.693 is chance):", vlosses, flush=True)
    out = {"input": str(a.input), "seed": a.seed, "gan": a.gan, "train_s": round(train_s, 1), "clf_val_bce": vlosses, "space": a.space,
           "rows": {}}
    cats = meta["categories"]
    lib_params = _lib_params_of(meta)
    theta = net.vae.theta.detach()
    nc = net.vae.n_conds > 1
    n = data.n  # one synthetic cell per train cell (the train composition)
    own_lib = torch.from_numpy(np.asarray(data.counts.sum(1)).ravel().astype(np.float32))
    # k = 0: the train cells' own codes (the decoder's ceiling); k = 1: generated, no resampling
    runs = [(0, 1.0, "means_ownlib"), (0, 1.0, "means_condlib"), (1, 1.0, None)]
    runs += [(k, float(al), c) for c in clfs for k in [int(x) for x in a.k.split(",")] if k > 1
             for al in a.alpha.split(",")]
    for k, alpha, cname in runs:
        gen.manual_seed(a.seed + 101)
        with torch.no_grad():
            cand = (data.codes.unsqueeze(1) if k == 0 else  # k = 0: the train cells' own codes (the ceiling)
                    torch.stack([draw(types, conds) for _ in range(k)], 1))  # n x k x d
            clf = clfs.get(cname) or next(iter(clfs.values()))
            if k > 1:
                lg = clf(torch.cat([F(cand.reshape(n * k, -1), conds.repeat_interleave(k)), _onehot(lab.repeat_interleave(k), n_lab)], 1))
                w = (alpha * lg.view(n, k)).exp()
                w = torch.minimum(w, a.clip * w.median())
                pick = torch.multinomial(w / w.sum(1, keepdim=True), 1, generator=gen).squeeze(1)
            else:
                pick = torch.zeros(n, dtype=torch.long)
            z = cand[torch.arange(n), pick]
            lg_all = clf(torch.cat([F(z, conds), _onehot(lab, n_lab)], 1)).squeeze(1)
            prop, _ = net.decode(z, conds if nc else None)
            lib = sample_library_conditional(lib_params, data.group(types, conds), z, meta["lib_coef"].float(),
                                             meta["lib_code_mean"].float(), float(meta["lib_resid_scale"]), gen)
            if cname == "means_ownlib":
                lib = own_lib
            x = sample_counts(prop * lib[:, None], "nb", theta=theta, generator=gen).numpy()
        obs = pd.DataFrame({C.OBS_CELL_TYPE: pd.Categorical([cats[i] for i in types.numpy()], categories=cats)},
                           index=[f"c{i}" for i in range(n)])
        if n_conds > 1:
            ck = meta.get("condition_key") or "condition"
            obs[ck] = pd.Categorical([meta["conditions"][i] for i in conds.numpy()])
        syn = ad.AnnData(sp.csr_matrix(x), obs=obs, var=pd.DataFrame(index=real.var_names))
        doc = evaluate_adata(real, syn, EvaluateConfig(plots=False, n_repeats=a.draws))
        m = doc["metrics"]
        row = {"c2st_gap": m["c2st_auc"]["value"] - m["c2st_auc"]["control"], "c2st": m["c2st_auc"]["value"],
               "control": m["c2st_auc"]["control"], "mia_auc": m["mia_auc"]["value"],
               "dcr_ratio": m["dcr_ratio"]["value"], "libsize_ks": m["libsize_ks"]["value"],
               "mean_logit": float(lg_all.mean())}
        for key in ("rare_agreement", "tstr_rare_f1", "rare_spread_ratio"):
            if key in m:
                row[key] = m[key]["value"]
        out["rows"][f"k{k}_a{alpha:g}_{cname}"] = row
        print(f"k={k} alpha={alpha:g} clf={cname}: " + ", ".join(f"{kk} {v:.3f}" for kk, v in row.items()
                                                     if isinstance(v, float)), flush=True)
    syn = model.generate(None, "original", None, seed=a.seed)  # the shipped path, for reference
    m = evaluate_adata(real, syn, EvaluateConfig(plots=False, n_repeats=a.draws))["metrics"]
    out["rows"]["generate"] = {"c2st_gap": m["c2st_auc"]["value"] - m["c2st_auc"]["control"],
                               "c2st": m["c2st_auc"]["value"], "mia_auc": m["mia_auc"]["value"]}
    print("generate:", out["rows"]["generate"], flush=True)
    out["seconds"] = round(time.time() - t0, 1)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
