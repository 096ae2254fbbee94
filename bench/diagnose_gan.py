"""Where does GARAGE's C2ST gap come from?  (issue 13.2)

Trains one GARAGE model in-process on the train cells of a preprocessed file
(validation split by default) and scores, against the file's holdout cells:

- ``latent``: kNN C2ST in the model's standardised latent space between
  generated codes and the holdout cells' encoded codes (control: train codes vs
  holdout codes), pooled and per type; generated codes split into seeded and
  unseeded ones.  This isolates the latent GAN.
- ``shape`` (round 28): per type, the skewness of the train codes and of the generated codes
  along the train codes' first principal axis (sign set so the train skew is >= 0), the R^2 of
  the train cells' log library size on their codes, and that regression's predicted log size
  for the generated and the train codes (5th, 50th, 95th percentiles): does the GAN reproduce a
  type's skewed, depth-driven spread?
- ``decoded_train``: the train cells' own posterior-mean codes decoded and
  NB-sampled at library sizes drawn as generation draws them (no GAN): the
  ceiling the decoder and noise model allow, scored by ``garage evaluate``.
- ``decoded_train_ownlib``: the same at each train cell's own library size
  (isolates the library-size model).
- density references (3 draws each): codes drawn, with the train composition, from a Gaussian
  (``gauss_codes_condlib``) or a mixture of at most 4 Gaussians (``gmm4_codes_condlib``) fit per type
  x condition group to the train cells' posterior means, decoded like the GAN's codes: is the GAN
  better than a plain density model of the same codes?
- ``garage``: the model's own synthetic cells, scored by ``garage evaluate``.
- posterior spread (3 draws each): the train cells decoded from posterior *samples* vs
  posterior *means* (own library sizes), and the generated codes decoded as generation does
  vs with the train cells' mean posterior sd added (a test of whether the GAN's targets, the
  posterior means, are too tight).
- conditional library (3 draws each): library sizes from a log-normal whose mean moves with
  the code (``fit_cond_library``: a ridge regression of log size on the code within each type x
  condition group, fit on the train cells), for the train cells' posterior means and for the
  generated codes: does a size model that follows the cell's state close the gap between the
  cells' own sizes and the per-group log-normal?

Run:  python -m bench.diagnose_gan \
        --seeds-from bench/_work/fidelity/sc_mixology/val/garage_s0/sc_mixology.seeds.h5ad [--gan '{"n_latent": 32}'] \
        [--threads 2] [--out diag.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from ._common import depth_input, generated_codes, train_in_process


def knn_c2st(a: np.ndarray, b: np.ndarray, seed: int = 0) -> float:
    from garage.evaluate._metrics import c2st_auc

    n = min(len(a), len(b))
    if n < 10:
        return float("nan")
    rng = np.random.default_rng(seed)
    return c2st_auc(a[rng.permutation(len(a))[:n]], b[rng.permutation(len(b))[:n]], seed=seed)


def _group_centred_fit(z, loglib, groups, min_group: int, ridge: float):
    """The part both size refits share: codes and log sizes in float64, per-group counts, which
    groups are under *min_group* cells (they take the pooled means), the group means, the centred
    codes and sizes, and the shared ridge vector *w* fit on them."""
    import torch

    z = z.double()
    y = loglib.double()
    n_g = int(groups.max()) + 1
    cnt = torch.bincount(groups, minlength=n_g).double()
    zbar = torch.zeros(n_g, z.shape[1], dtype=torch.float64).index_add_(0, groups, z) / cnt.clamp_min(1)[:, None]
    ybar = torch.zeros(n_g, dtype=torch.float64).index_add_(0, groups, y) / cnt.clamp_min(1)
    small = cnt < min_group
    zbar[small], ybar[small] = z.mean(0), y.mean()
    zc, yc = z - zbar[groups], y - ybar[groups]
    w = torch.linalg.solve(zc.T @ zc + ridge * torch.eye(z.shape[1], dtype=torch.float64), zc.T @ yc)
    return z, y, cnt, small, zbar, ybar, zc, yc, w


def fit_cond_library(z, loglib, groups, min_group: int = 10, ridge: float = 1.0):
    """A log-normal library size whose mean moves with the code: within-group ridge regression.

    ``loglib = mean_g + (z - zbar_g) . w + sd_g * eps``, with one *w* shared by all groups (fit on
    codes and log sizes centred by group) and per-group intercepts and residual sds; groups under
    *min_group* cells use the pooled ones.  Returns a sampler ``(z, groups, gen) -> sizes``.
    """
    import torch

    z, y, cnt, small, zbar, ybar, zc, yc, w = _group_centred_fit(z, loglib, groups, min_group, ridge)
    n_g = len(cnt)
    r = yc - zc @ w
    sd = (torch.zeros(n_g, dtype=torch.float64).index_add_(0, groups, r * r) / cnt.clamp_min(1)).sqrt()
    sd[small] = r.std()
    r2 = 1 - float((r * r).sum() / (yc * yc).sum())

    def sample(zs, gs, gen):
        mean = ybar[gs] + (zs.double() - zbar[gs]) @ w
        eps = torch.randn(len(gs), generator=gen, dtype=torch.float64)
        return (mean + sd[gs] * eps).exp().clamp_min(1.0).float()

    return sample, r2


def fit_group_library(z, loglib, groups, min_group: int = 10, shrink: float = 20.0, ridge: float = 1.0):
    """Like :func:`fit_cond_library` (groups under *min_group* cells use the pooled intercept and
    mean code), with a regression vector per group: ``w_g`` is the group's own ridge fit pulled
    towards the shared *w* with *shrink* cells' worth of the codes' mean within-group variance per
    dimension, and its residual sd is pooled with the shared residual sd over *shrink*
    pseudo-cells.  Returns ``(sampler, within-group R^2)``; both the R^2 and the residual sds are
    in-sample, so with d coefficients per group they flatter it against fit_cond_library's."""
    import torch

    z, y, cnt, _, zbar, ybar, zc, yc, w = _group_centred_fit(z, loglib, groups, min_group, ridge)
    n_g, d = len(cnt), z.shape[1]
    eye = torch.eye(d, dtype=torch.float64)
    kappa = shrink * float((zc * zc).sum()) / (len(y) * d)  # per dimension, shrink cells' worth
    r_shared = yc - zc @ w
    var_shared = float((r_shared ** 2).mean())
    wg = w.repeat(n_g, 1)
    sd = torch.full((n_g,), var_shared ** 0.5, dtype=torch.float64)
    res = torch.empty_like(y)
    for g in range(n_g):
        m = groups == g
        if not bool(m.any()):
            continue
        a, b = zc[m], yc[m]
        wg[g] = torch.linalg.solve(a.T @ a + (kappa + ridge) * eye, a.T @ b + kappa * w)
        res[m] = b - a @ wg[g]
        n = float(m.sum())
        sd[g] = ((float((res[m] ** 2).sum()) + shrink * var_shared) / (n + shrink)) ** 0.5
    r2 = 1 - float((res * res).sum() / (yc * yc).sum())

    def sample(zs, gs, gen):
        mean = ybar[gs] + ((zs.double() - zbar[gs]) * wg[gs]).sum(1)
        eps = torch.randn(len(gs), generator=gen, dtype=torch.float64)
        return (mean + sd[gs] * eps).exp().clamp_min(1.0).float()

    return sample, r2


def gmm_codes(mu, groups, k_max: int, seed: int, min_per_component: int = 30):
    """One fresh code per train cell from a Gaussian mixture fit to its group's posterior means.

    A density-model reference for the latent GAN (same composition, same decoder): per type x
    condition group, sklearn's mixture with at most *k_max* components and one component per
    *min_per_component* cells of the group (at least one); full covariances for groups of at least
    2 x latent-size cells, diagonal below; a group of one cell draws from a Gaussian fit to all
    codes (never its own code).
    """
    import torch
    from sklearn.mixture import GaussianMixture

    x = mu.double().numpy()
    g = groups.numpy()
    out = np.empty_like(x)
    for grp in np.unique(g):
        idx = np.flatnonzero(g == grp)
        k = int(max(1, min(k_max, len(idx) // min_per_component)))
        cov = "full" if len(idx) >= 2 * x.shape[1] else "diag"
        if len(idx) < 2:
            rng = np.random.default_rng([seed, int(grp)])
            out[idx] = rng.multivariate_normal(x.mean(0), np.cov(x.T), size=len(idx))
            continue
        gm = GaussianMixture(k, covariance_type=cov, reg_covar=1e-3, random_state=seed).fit(x[idx])
        smp, _ = gm.sample(len(idx))
        out[idx] = smp[np.random.default_rng(seed).permutation(len(idx))]
    return torch.from_numpy(out).float()


def code_shape(tz, ttypes, loglib, gz, gt, cats, min_cells: int = 30) -> dict:
    """Per type with at least *min_cells* train codes: the skewness of the train and the generated
    codes along the train codes' first principal axis (oriented so the train skew is >= 0), the R^2
    (and adjusted R^2) of the train cells' log library size regressed on their codes, and the regression's predicted
    log size (percentiles 5, 50, 95) for the train and the generated codes."""
    from scipy.stats import skew
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LinearRegression

    out = {}
    for k, t in enumerate(cats):
        a, b = tz[ttypes == k], gz[gt == k]
        if len(a) < min_cells or len(b) < min_cells:
            continue
        pca = PCA(1).fit(a)
        pa, pb = pca.transform(a)[:, 0], pca.transform(b)[:, 0]
        sign = 1.0 if skew(pa) >= 0 else -1.0
        reg = LinearRegression().fit(a, loglib[ttypes == k])
        r2 = float(reg.score(a, loglib[ttypes == k]))
        n, d = a.shape
        out[t] = {"skew_train": float(sign * skew(pa)), "skew_generated": float(sign * skew(pb)),
                  "r2_loglib": r2, "n_train": int(n),
                  # in-sample R^2 of d predictors is about d / (n - 1) with no relation at all
                  "r2_loglib_adj": float(1 - (1 - r2) * (n - 1) / (n - d - 1)) if n > d + 1 else float("nan")}
        for name, z in (("train", a), ("generated", b)):
            for q, v in zip((5, 50, 95), np.percentile(reg.predict(z), [5, 50, 95])):
                out[t][f"loglib_p{q}_{name}"] = float(v)
    return out


def main(argv=None):
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp
    import torch

    from garage import constants as C
    from garage.evaluate import EvaluateConfig, evaluate_adata
    from garage.gan._nn import sample_counts

    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds-from", type=Path, required=True, help="a PREFIX.seeds.h5ad (GAT output)")
    ap.add_argument("--gan", default="{}", help="GANConfig overrides as JSON")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--latent-only", action="store_true",
                    help="stop after the latent rows and spreads (no decoding, no evaluate)")
    args = ap.parse_args(argv)
    if json.loads(args.gan).get("library") == "depth" and not args.latent_only:
        # the decoded rows draw sizes from the log-normal, not the depth that conditioned each code
        ap.error("--library depth models: use --latent-only")

    real, model = train_in_process(args.seeds_from, args.seed, args.threads, json.loads(args.gan))
    cfg = model.config
    net, data = model.net, model.data
    hold = real[real.obs[C.OBS_SPLIT].astype(str) == C.SPLIT_HOLDOUT]
    cats = model.meta["categories"]
    hold_types = np.asarray([cats.index(t) for t in hold.obs[C.OBS_LABEL].astype(str)])
    nl = cfg.n_latent
    conds_h = torch.zeros(hold.n_obs, dtype=torch.long)
    with torch.no_grad():
        hx = torch.from_numpy(sp.csr_matrix(hold.layers[C.LAYER_COUNTS]).toarray().astype(np.float32))
        hz = net.vae.encode(hx, conds_h if net.vae.n_conds > 1 else None)[0]
        if cfg.joint_library:
            hz = torch.cat([hz, hx.sum(1, keepdim=True).clamp_min(1).log()], 1)
        hz = ((hz - net.z_mean) / net.z_std).numpy()
    tz = data.codes.numpy()
    ttypes = data.types.numpy()
    # generated codes with the holdout's type composition, seeded / unseeded as generation does
    gen = torch.Generator().manual_seed(123)
    n = len(hold_types) * 4
    tt = torch.from_numpy(np.resize(hold_types, n))
    cc = torch.zeros(n, dtype=torch.long)
    noise = torch.randn(n, cfg.noise_dim, generator=gen)
    from garage.gan._train import draw_labels, pick_seeds, sample_library, state_probs

    probs = state_probs(data.state_counts, data.k_states, data.n_conds) if data.k_states > 1 else None
    lab = draw_labels(tt, cc, probs, data.k_states, data.n_conds, gen)  # type x within-type state
    mask, pos = pick_seeds(data, lab, cc, cfg.seed_mix, gen)
    code = data.seed_codes[pos] if data.seed_codes is not None else None
    g = net.generator_ema if net.generator_ema is not None else net.generator
    with torch.no_grad():
        gz = g(noise, lab, cc if data.n_conds > 1 else None, code, mask, depth_input(model, tt, cc, gen)).numpy()
    rows = []

    def add(name, a, b, types_a=None, types_b=None):
        rec = {"what": name, "pooled": knn_c2st(a, b)}
        if types_a is not None:
            for k, t in enumerate(cats):
                rec[t] = knn_c2st(a[types_a == k], b[types_b == k])
        rows.append(rec)

    gt = tt.numpy()
    m = mask.numpy()
    add("latent: generated vs holdout codes", gz, hz, gt, hold_types)
    add("latent: generated seeded vs holdout", gz[m], hz, gt[m], hold_types)
    add("latent: generated unseeded vs holdout", gz[~m], hz, gt[~m], hold_types)
    add("latent: train vs holdout codes (control)", tz, hz, ttypes, hold_types)
    if cfg.joint_library:
        add("latent without library dim: generated vs holdout", gz[:, :nl], hz[:, :nl], gt, hold_types)
        add("latent without library dim: train vs holdout", tz[:, :nl], hz[:, :nl], ttypes, hold_types)
    # spread: mean distance to the holdout's type centroid, codes / holdout (the generated codes',
    # and the train cells' own: what a generator that matched them would score)
    def centroid_spread(z, z_types):
        out = {}
        for k, t in enumerate(cats):
            h = hz[hold_types == k]
            if len(h) < 3 or not (z_types == k).any():
                continue
            c = h.mean(0)
            out[t] = float(np.linalg.norm(z[z_types == k] - c, axis=1).mean() / np.linalg.norm(h - c, axis=1).mean())
        return out

    spread = centroid_spread(gz, gt)
    spread_train = centroid_spread(tz, ttypes)
    shape = code_shape(tz, ttypes, data.loglib.cpu().numpy(), gz, gt, cats)
    lat = pd.DataFrame(rows)
    print(lat.round(3).to_string())
    print("latent spread generated/holdout per type:", {k: round(v, 3) for k, v in spread.items()})
    print("latent spread train/holdout per type:", {k: round(v, 3) for k, v in spread_train.items()})
    print("code shape per type:\n" + pd.DataFrame(shape).T.round(2).to_string())
    if args.latent_only:
        if args.out:
            args.out.write_text(json.dumps({"latent": rows, "spread": spread, "spread_train": spread_train,
                                            "shape": shape}, indent=1, default=float))
        return 0

    # decoded train codes: the decoder/noise ceiling
    theta = net.vae.theta.detach()
    ev = {}
    with tempfile.TemporaryDirectory() as td:
        for name, own in (("decoded_train", False), ("decoded_train_ownlib", True)):
            with torch.no_grad():
                prop, loglib = net.decode(data.codes, data.conds)
                if own:
                    lib = torch.from_numpy(np.asarray(data.counts.sum(1)).ravel().astype(np.float32))
                elif loglib is not None:
                    lib = loglib.exp()
                else:
                    lib = sample_library(data.lib_params, data.group(data.types, data.conds), gen)
                x = sample_counts(prop * lib[:, None], "nb", theta=theta, generator=gen).numpy()
            syn = ad.AnnData(sp.csr_matrix(x), obs=pd.DataFrame(
                {C.OBS_CELL_TYPE: pd.Categorical([cats[i] for i in data.types.numpy()])},
                index=[f"d{i}" for i in range(len(x))]), var=pd.DataFrame(index=real.var_names))
            doc = evaluate_adata(real, syn, EvaluateConfig(plots=False, n_repeats=1))
            ev[name] = {k: doc["metrics"][k]["value"] for k in ("c2st_auc", "rare_agreement", "libsize_ks")}
            ev[name]["control_c2st"] = doc["metrics"]["c2st_auc"]["control"]
        # posterior spread: the GAN learns (and generation decodes) posterior *means*; real cells
        # (and scVI's posterior-predictive samples) also carry the posterior's spread around them
        from .vae_ceiling import train_posteriors

        nc = net.vae.n_conds > 1
        mu, sd, own_lib = train_posteriors(net, data)
        with torch.no_grad():
            post_sd = sd.pow(2).mean(0).sqrt()  # per latent dimension, over the train cells
            # generated codes with the train cells' composition, as generation draws them
            gz_t = torch.from_numpy(generated_codes(model, data.types, data.conds, gen)[0])
            gz_t = (gz_t * net.z_std + net.z_mean)[:, :nl]
            gen_lib = sample_library(data.lib_params, data.group(data.types, data.conds), gen)
        # a library model conditioned on the code, fit on the train cells' posterior means
        groups_t = data.group(data.types, data.conds)
        cond_lib, r2 = fit_cond_library(mu, own_lib.log(), groups_t)
        ev["cond_library_within_group_r2"] = round(r2, 4)
        gmm_z = {k: gmm_codes(mu, groups_t, k, args.seed) for k in (1, 4)}
        variants = {
            "decoded_train_means_condlib": (mu, cond_lib(mu, groups_t, gen)),
            "gauss_codes_condlib": (gmm_z[1], cond_lib(gmm_z[1], groups_t, gen)),
            "gmm4_codes_condlib": (gmm_z[4], cond_lib(gmm_z[4], groups_t, gen)),
            "garage_codes_condlib": (gz_t, cond_lib(gz_t, groups_t, gen)),
            "decoded_train_sampled_ownlib": (mu + torch.randn(mu.shape, generator=gen) * sd, own_lib),
            "decoded_train_means_ownlib": (mu, own_lib),
            "garage_codes": (gz_t, gen_lib),
            "garage_codes_plus_posterior_sd": (gz_t + torch.randn(gz_t.shape, generator=gen) * post_sd, gen_lib),
        }
        for name, (z, lib) in variants.items():
            with torch.no_grad():
                prop = net.vae.proportions(z, data.conds if nc else None)
                x = sample_counts(prop * lib[:, None], "nb", theta=theta, generator=gen).numpy()
            syn = ad.AnnData(sp.csr_matrix(x), obs=pd.DataFrame(
                {C.OBS_CELL_TYPE: pd.Categorical([cats[i] for i in data.types.numpy()])},
                index=[f"p{i}" for i in range(len(x))]), var=pd.DataFrame(index=real.var_names))
            doc = evaluate_adata(real, syn, EvaluateConfig(plots=False, n_repeats=3))
            ev[name] = {k: doc["metrics"][k]["value"] for k in
                        ("c2st_auc", "rare_agreement", "libsize_ks", "dcr_ratio", "mia_auc")
                        if k in doc["metrics"]}
            ev[name]["control_c2st"] = doc["metrics"]["c2st_auc"]["control"]
        ev["posterior_sd_per_dim"] = [round(float(v), 4) for v in post_sd]
        synth = model.generate(None, "original", None, seed=args.seed)
        doc = evaluate_adata(real, synth, EvaluateConfig(plots=False, n_repeats=1))
        ev["garage"] = {k: doc["metrics"][k]["value"] for k in ("c2st_auc", "rare_agreement", "libsize_ks")}
        ev["garage"]["control_c2st"] = doc["metrics"]["c2st_auc"]["control"]
    print(json.dumps(ev, indent=1))
    if args.out:
        args.out.write_text(json.dumps({"latent": rows, "spread": spread, "spread_train": spread_train, "shape": shape,
                                        "evaluate": ev},
                                       indent=1, default=float))


if __name__ == "__main__":
    main()
