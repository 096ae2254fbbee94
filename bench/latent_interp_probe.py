"""Could seeded cells placed *between* a seed and its real neighbours beat the GAN's codes? (round 26)

Round 5d named, and never built, one change to the seeded path: a seeded cell generated as an
offset from its seed *towards a real latent neighbour of the seed*, so it stays on the type's
manifold instead of filling the space between sub-states as one Gaussian per type does (round 21).
Before building it, this probe asks what such codes are worth when nothing is learned: it trains
one default model in-process (``train_in_process``, as ``bench.diagnose_gan``) and decodes, with the
same decoder, code-conditional library sizes (``fit_cond_library``) and NB noise, codes drawn with
the train cells' type composition from:

- ``train_means``: the train cells' own posterior means (the decoder's ceiling, and a copy of
  the train cells: its attack score is what memorisation looks like);
- ``gan``: the model's generated codes, seeded and unseeded as generation draws them;
- ``interp_all``: a random fit cell of the type, moved a uniform fraction of the way towards one
  of its *k* nearest fit cells of the same type (standardised code space);
- ``interp_seeds``: the same from a random GAT seed of the type (the seeded path's anchors);
- ``interp_random_seeds``: the same from as many random fit cells per type as the type has GAT
  seeds (the random-seed ablation's anchors: are the GAT's seeds, or any sparse set, the limit?);
- ``interp_random_fF`` (``--anchor-fractions``): from a random share F of each type's fit cells
  (how fast the cost of sparse anchors falls as they get denser);
- ``gan_unseeded+interp_seeds`` (and ``+interp_random_seeds``): the GAN's unseeded codes where
  generation leaves a cell unseeded, the interpolated codes where it seeds one (today's mix of
  0.5 with the seeded path replaced).

One row is a single draw of its codes, library sizes and counts: two rows built the same way
(``interp_all`` and ``interp_random_f1``) differed by up to 0.036 in round 26, so read contrasts
well above that.  Each row is scored by ``garage evaluate``'s metrics (C2ST gap to the control, rare agreement,
DCR ratio, MIA AUC) with ``--draws`` evaluation draws.  Codes are never written anywhere.

Run:  python -m bench.latent_interp_probe \\
        --seeds-from bench/_work/fidelity/baron_mouse/val2/garage_s24/baron_mouse.seeds.h5ad --seed 24 \\
        [--k 15] [--draws 5] [--anchor-fractions 0.1,0.3,0.6] [--rows ...] [--threads 1] [--out probe.json]
"""

from __future__ import annotations

import argparse
import json
import zlib
from pathlib import Path

import numpy as np

from ._common import generated_codes, train_in_process


def interpolate(codes: np.ndarray, anchors: np.ndarray, pool: dict, k: int, rng) -> np.ndarray:
    """For each row index in *anchors*: its code moved a fraction U(0, 1) of the way towards one of
    its *k* nearest rows of the same type (``pool[type]``: (rows, fitted NearestNeighbors), the
    anchor itself excluded when it is in the pool); an anchor of a type without a pool stays where it is."""
    out = codes[anchors].copy()
    for t, (rows, nn_t, types_a) in pool.items():
        at = np.flatnonzero(types_a)
        if not len(at):
            continue
        kk = min(k + 1, len(rows))
        _, idx = nn_t.kneighbors(codes[anchors[at]], n_neighbors=kk)
        nb = rows[idx]
        own = nb == anchors[at][:, None]
        pick = np.empty(len(at), dtype=np.int64)
        for i in range(len(at)):  # a uniform choice among the neighbours that are not the anchor
            cand = nb[i][~own[i]][:k]
            pick[i] = cand[rng.integers(len(cand))] if len(cand) else anchors[at][i]
        lam = rng.random((len(at), 1))
        out[at] = codes[anchors[at]] + lam * (codes[pick] - codes[anchors[at]])
    return out


def main(argv=None):
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp
    import torch
    from sklearn.neighbors import NearestNeighbors

    from garage import constants as C
    from garage.evaluate import EvaluateConfig, evaluate_adata
    from garage.gan._nn import sample_counts

    from .diagnose_gan import fit_cond_library
    from .vae_ceiling import train_posteriors

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds-from", type=Path, required=True, help="a PREFIX.seeds.h5ad (GAT output)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--k", type=int, default=15, help="neighbours an interpolated code may move towards")
    ap.add_argument("--draws", type=int, default=5, help="evaluation draws per row")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--anchor-fractions", default="", help="e.g. 0.1,0.3,0.6: rows interpolated from a random "
                    "share F of each type's fit cells")
    ap.add_argument("--rows", default="", help="comma-separated row names to score (default: all)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    real, model = train_in_process(args.seeds_from, args.seed, args.threads, {})
    cfg, net, data = model.config, model.net, model.data
    cats = model.meta["categories"]
    if cfg.effective_type_states > 1 or cfg.joint_library or model.data.n_conds > 1:
        raise SystemExit("bench.latent_interp_probe: default models without conditions only (one state per "
                         "type, no joint library; its anchors and neighbours ignore conditions)")
    nl = cfg.n_latent
    gen = torch.Generator().manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    mu, _, own_lib = train_posteriors(net, data)  # unstandardised posterior means of every train cell
    z_mean, z_std = net.z_mean[:nl].numpy(), net.z_std[:nl].numpy()
    codes = (mu.numpy() - z_mean) / z_std  # the standardised space the GAN plays in (= data.codes)
    types = data.types.numpy()
    fit = data.fit_rows
    n = data.n
    # every row is its own anchor until one is drawn for it: a type too small for a pool stays as it is
    anchors_all, anchors_seed, anchors_rand = np.arange(n), np.arange(n), np.arange(n)
    seed_rows = data.seed_rows.numpy()
    pool = {}
    for t in range(len(cats)):
        want = types == t  # rows drawn for type t: as many as the type has train cells
        ref = fit[types[fit] == t]
        if not want.any() or len(ref) < 2:
            continue
        nn_t = NearestNeighbors().fit(codes[ref])
        anchors_all[want] = rng.choice(ref, int(want.sum()))
        s_t = seed_rows[types[seed_rows] == t]
        anchors_seed[want] = rng.choice(s_t if len(s_t) else ref, int(want.sum()))
        # as many random cells as seeds (a type without seeds: all its fit cells, as for interp_seeds)
        r_t = rng.choice(ref, len(s_t), replace=False) if 0 < len(s_t) <= len(ref) else ref
        anchors_rand[want] = rng.choice(r_t, int(want.sum()))
        pool[t] = (ref, nn_t, want)
    z_interp_all = interpolate(codes, anchors_all, pool, args.k, rng)
    z_interp_seed = interpolate(codes, anchors_seed, pool, args.k, rng)
    z_interp_rand = interpolate(codes, anchors_rand, pool, args.k, rng)
    # the GAN's codes with the train composition, as generation draws them
    gz, m = generated_codes(model, data.types, data.conds, gen)
    gz = gz[:, :nl]
    mixed = np.where(m[:, None], z_interp_seed, gz)  # seeded half replaced by seed interpolation
    mixed_rand = np.where(m[:, None], z_interp_rand, gz)

    groups = data.group(data.types, data.conds)
    cond_lib, _ = fit_cond_library(mu, own_lib.log(), groups)
    rows = {"train_means": codes, "gan": gz, "interp_all": z_interp_all, "interp_seeds": z_interp_seed,
            "interp_random_seeds": z_interp_rand, "gan_unseeded+interp_seeds": mixed,
            "gan_unseeded+interp_random_seeds": mixed_rand}
    for f in (float(v) for v in args.anchor_fractions.split(",") if v):
        anchors_f = np.arange(n)
        for ref, _, want in pool.values():
            r_t = rng.choice(ref, min(len(ref), max(1, int(round(f * len(ref))))), replace=False)
            anchors_f[want] = rng.choice(r_t, int(want.sum()))
        rows[f"interp_random_f{f:g}"] = interpolate(codes, anchors_f, pool, args.k, rng)
    if args.rows:
        rows = {k: v for k, v in rows.items() if k in args.rows.split(",")}
    theta = net.vae.theta.detach()
    out = {"seeds_from": str(args.seeds_from), "seed": args.seed, "k": args.k, "draws": args.draws,
           "seeded_share": float(m.mean()), "train_cells": int(n), "fit_cells": int(len(fit)),
           "gat_seeds": int(len(seed_rows)), "rows": {}}
    for name, z in rows.items():
        # one generator per row, seeded by its name: --rows does not change the rows it keeps
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + zlib.crc32(name.encode()))
        zt = torch.from_numpy((z * z_std + z_mean).astype(np.float32))
        with torch.no_grad():
            prop = net.vae.proportions(zt, None)  # no conditions: refused above
            lib = cond_lib(zt, groups, gen)
            x = sample_counts(prop * lib[:, None], "nb", theta=theta, generator=gen).numpy()
        syn = ad.AnnData(sp.csr_matrix(x), obs=pd.DataFrame(
            {C.OBS_CELL_TYPE: pd.Categorical([cats[i] for i in types], categories=cats)},
            index=[f"p{i}" for i in range(len(x))]), var=pd.DataFrame(index=real.var_names))
        doc = evaluate_adata(real, syn, EvaluateConfig(plots=False, n_repeats=args.draws))
        met = doc["metrics"]
        rec = {k: met[k]["value"] for k in ("c2st_auc", "rare_agreement", "dcr_ratio", "mia_auc", "tstr_rare_f1")
               if k in met}
        rec["c2st_control"] = met["c2st_auc"]["control"]
        rec["c2st_gap"] = rec["c2st_auc"] - rec["c2st_control"]
        out["rows"][name] = rec
        print(f"{name:28s} gap {rec['c2st_gap']:+.3f}  " + "  ".join(
            f"{k} {v:.3f}" for k, v in rec.items() if k not in ("c2st_gap",) and v is not None), flush=True)
    if args.out:
        args.out.write_text(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
