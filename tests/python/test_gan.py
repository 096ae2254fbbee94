"""Stage 2 (garage.gan): outputs, composition, round trip, determinism, quality, CLI, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from garage import constants as C
from garage.errors import GarageError, ResourceError
from garage.gan import (
    TEST_OVERRIDES,
    GANConfig,
    GarageGAN,
    composition_counts,
    group_composition,
    run_gan,
    run_generate,
)

REPO = Path(__file__).resolve().parents[2]
GARAGE = [sys.executable, "-m", "garage.cli"] if (REPO / "src/garage/cli/__main__.py").exists() else ["garage"]
TINY = {"gan_steps": 6, "ae_steps": 4, "decoder_steps": 2, "hidden": 32, "checkpoint_every": 0, "patience": 0}


def _fallback_seeds(pp: Path, out: Path) -> Path:
    """FALLBACK seed marking, used only while garage.gat.run_gat is not importable:
    10% of every type's train cells (at least one) and every cell of a rare type."""
    from garage._utils import write_h5ad_atomic

    a = ad.read_h5ad(pp)
    rng = np.random.default_rng(0)
    train = np.asarray(a.obs[C.OBS_SPLIT] == C.SPLIT_TRAIN)
    lab = a.obs[C.OBS_LABEL].astype(str).to_numpy()
    seed = np.zeros(a.n_obs, dtype=bool)
    for t in np.unique(lab[train]):
        idx = np.flatnonzero(train & (lab == t))
        k = len(idx) if len(idx) / train.sum() < 0.05 else max(1, round(0.1 * len(idx)))
        seed[rng.choice(idx, k, replace=False)] = True
    a.obs[C.OBS_SEED] = seed
    a.obs[C.OBS_SCORE] = rng.random(a.n_obs).astype(np.float32)
    return write_h5ad_atomic(a, out / "small.seeds.h5ad")


@pytest.fixture(scope="session")
def seeds_small(preprocessed_small, tmp_path_factory) -> Path:
    """PREFIX.seeds.h5ad of the bundled subset: stage 1 with its test settings (or the fallback)."""
    out = tmp_path_factory.mktemp("seeds_small")
    try:
        from garage.gat import TEST_OVERRIDES as GAT_TEST
        from garage.gat import GATConfig, run_gat
    except ImportError:
        return _fallback_seeds(preprocessed_small, out)
    return run_gat(preprocessed_small, out, "small", GATConfig(**GAT_TEST, seed=0))["h5ad"]


@pytest.fixture(scope="session")
def real_small(seeds_small):
    return ad.read_h5ad(seeds_small)


@pytest.fixture(scope="session")
def trained_small(seeds_small, tmp_path_factory):
    """The test-profile GAN on the bundled subset (trained once per session)."""
    out = tmp_path_factory.mktemp("gan_small")
    cfg = GANConfig(**TEST_OVERRIDES, seed=0)
    t0 = time.perf_counter()
    res = run_gan(seeds_small, out, "small", cfg, threads=1)
    res["seconds"] = time.perf_counter() - t0
    res["config"] = cfg
    return res


# ----------------------------------------------------------------------------- config / composition
@pytest.mark.parametrize(
    "kw, match",
    [
        ({"epochs": -1}, "epochs"),
        ({"gan_steps": 0}, "gan-steps"),
        ({"val_fraction": 0.7}, "val-fraction"),
        ({"library": "quantile"}, "library"),
        ({"seed_mix": 1.5}, "seed-mix"),
        ({"seed_mix": -0.1}, "seed-mix"),
        ({"batch_size": 1}, "batch-size"),
        ({"n_cells": 0}, "n-cells"),
        ({"composition": "rare"}, "composition"),
        ({"space": "gene", "count_dist": "nb"}, "count-dist nb"),
        ({"ema_decay": 1.0}, "ema-decay"),
        ({"decoder_epochs": -1}, "decoder-epochs"),
        ({"cells_per_group": "B=3"}, "TYPE|CONDITION"),
        ({"decoder_dropout": 1.0}, "decoder-dropout"),
        ({"calibrate": "full"}, "calibrate"),
        ({"calibrate": "Diag"}, "calibrate"),
    ],
)
def test_config_rejects_bad_options(kw, match):
    with pytest.raises(GarageError, match=match):
        GANConfig(**kw).validate()


def test_cells_per_type_parsing():
    assert GANConfig(cells_per_type="DC=20, CD14+ Mono=3").cells_per_type == (("CD14+ Mono", 3), ("DC", 20))
    assert GANConfig(cells_per_type={"DC": 2}).cells_per_type == (("DC", 2),)
    for bad in ("DC", "DC=x", "DC=-1", "DC=1,DC=2"):
        with pytest.raises(GarageError):
            GANConfig(cells_per_type=bad)


def test_composition_counts():
    cats, n = ["A", "B", "R1", "R2"], [600, 380, 15, 5]
    orig = composition_counts(cats, n, None, "original")
    assert orig == {"A": 600, "B": 380, "R1": 15, "R2": 5}
    bal = composition_counts(cats, n, 100, "balanced")
    assert bal == {"A": 25, "B": 25, "R1": 25, "R2": 25}
    boost = composition_counts(cats, n, 1000, "uniform-rare-boost", rare_threshold=0.05)
    assert boost["R1"] == boost["R2"] == 250 and sum(boost.values()) == 1000
    assert boost["A"] / boost["B"] == pytest.approx(600 / 380, rel=0.01)
    fixed = composition_counts(cats, n, 200, "original", "R2=50")
    assert fixed["R2"] == 50 and sum(fixed.values()) == 200
    assert fixed["A"] > fixed["B"] > fixed["R1"]
    with pytest.raises(GarageError, match="unknown cell type"):
        composition_counts(cats, n, 100, "original", {"Neuron": 3})
    with pytest.raises(GarageError, match="--n-cells is 10"):
        composition_counts(cats, n, 10, "original", {"A": 11})


# ----------------------------------------------------------------------------- outputs
def test_outputs_schema_counts_and_labels(trained_small, real_small):
    syn = ad.read_h5ad(trained_small["h5ad"])
    train = real_small[real_small.obs[C.OBS_SPLIT] == C.SPLIT_TRAIN]
    assert syn.n_obs == train.n_obs  # default n_cells = train cells
    assert list(syn.var_names) == list(real_small.var_names)
    assert sp.issparse(syn.X) and syn.X.dtype == np.float32
    assert np.array_equal(syn.X.data, np.rint(syn.X.data)) and syn.X.data.min() >= 0
    assert syn.obs[C.OBS_SYNTHETIC].all()
    assert isinstance(syn.obs[C.OBS_CELL_TYPE].dtype, pd.CategoricalDtype)
    # original composition: same per-type numbers as the train split
    want = train.obs[C.OBS_LABEL].astype(str).value_counts().sort_index()
    got = syn.obs[C.OBS_CELL_TYPE].astype(str).value_counts().sort_index()
    assert got.to_dict() == want.to_dict()
    # shareable: no real cell is named anywhere in the file (obs names, obs columns, uns)
    real_names = set(real_small.obs_names.astype(str))
    assert not real_names & set(syn.obs_names.astype(str))
    assert all(n.startswith("small-syn0-") for n in syn.obs_names)
    for col in syn.obs.columns:
        assert not real_names & set(syn.obs[col].astype(str)), col
    assert not any(name in repr(dict(syn.uns)) for name in list(real_names)[:200])
    assert list(syn.obs.columns[:2]) == [C.OBS_CELL_TYPE, C.OBS_SYNTHETIC]
    assert (syn.obs["cell_type"] == syn.obs[real_small.uns["garage"]["label_key"]]).all()  # user's name too
    assert (syn.layers[C.LAYER_COUNTS] != syn.X).nnz == 0
    # the seed provenance is in its own PRIVATE file, naming seeds of the same type
    prov_path = Path(trained_small["provenance"])
    head = prov_path.read_text().splitlines()[0]
    assert head.startswith("# PRIVATE")
    prov = pd.read_csv(prov_path, sep="\t", comment="#", keep_default_na=False)
    assert list(prov.columns) == list(C.PROVENANCE_COLUMNS)
    assert (prov["synthetic_cell"] == syn.obs_names).all()
    seeded = prov[C.OBS_SEED_ID] != ""
    assert 0.2 < seeded.mean() < 0.8  # seed_mix 0.5
    seeds = real_small.obs.loc[real_small.obs[C.OBS_SEED].astype(bool)]
    assert set(prov.loc[seeded, C.OBS_SEED_ID]) <= set(seeds.index)
    assert (seeds.loc[prov.loc[seeded, C.OBS_SEED_ID], C.OBS_LABEL].astype(str).to_numpy()
            == prov.loc[seeded, "cell_type"].to_numpy()).all()
    # count-level realism: zero fraction and library size near the real train cells
    real = train.layers[C.LAYER_COUNTS]
    zf_syn = 1 - syn.X.nnz / np.prod(syn.shape)
    zf_real = 1 - real.nnz / np.prod(real.shape)
    assert abs(zf_syn - zf_real) < 0.05
    lib_syn, lib_real = np.asarray(syn.X.sum(1)).ravel(), np.asarray(real.sum(1)).ravel()
    assert 0.8 < np.median(lib_syn) / np.median(lib_real) < 1.25
    # provenance and privacy
    g = syn.uns[C.UNS_KEY]
    assert g["seed"] == 0 and g["gan"]["seed_mix"] == 0.5 and "torch" in g["versions"]
    assert g["exact_copies"] == 0
    from garage.baselines import exact_copy_mask

    assert exact_copy_mask(syn.X, real).sum() == 0


def test_log_and_no_checkpoint_left(trained_small):
    log = pd.read_csv(trained_small["log"], sep="\t")
    cfg = trained_small["config"]
    ae, gan = log[log.phase == "ae"], log[log.phase == "gan"]
    assert ae["step"].iloc[-1] == cfg.ae_steps and gan["step"].iloc[-1] == cfg.gan_steps  # patience 0: no stop
    assert np.isfinite(gan[["critic_loss", "gp", "generator_loss", "val_score"]].to_numpy()).all()
    assert np.isfinite(ae["val_score"].to_numpy()).all()  # the stopping rule's validation loss
    # the dispersion refit runs once, then the decoder is fine-tuned on posterior means and its
    # NB loss falls below the refit's (same codes, same cells: a decoder that got worse fails this)
    disp, dec = log[log.phase == "disp"], log[log.phase == "decoder"]
    assert len(disp) == 1 and dec["step"].iloc[-1] == cfg.decoder_steps
    assert dec["ae_nll"].iloc[-1] < disp["ae_nll"].iloc[0]
    assert not list(Path(trained_small["h5ad"]).parent.glob("*.ckpt.pt"))
    # the synthetic file took its final name (the last output written); no staging file is left
    assert not [p for p in Path(trained_small["h5ad"]).parent.iterdir() if p.name.startswith(".")]


def test_schedule_scales_with_cells_and_stops_on_validation(seeds_small, tmp_path):
    """Steps come from the data size (bounded at both ends), and a phase whose validation score
    stops improving ends early with its best state kept."""
    cfg = GANConfig()
    small, big, huge = cfg.schedule(800), cfg.schedule(100_000), cfg.schedule(1_000_000)
    assert small["gan"] == big["gan"] == 6000  # the adversarial phase: fixed
    # the autoencoder: 60 passes, at least 1,000 steps, but never more than AE_MAX_PASSES passes
    # (small inputs would otherwise be memorised); the decoder fine-tuning a third of that
    from garage.gan._config import AE_MAX_PASSES

    assert cfg.schedule(50)["ae"] == AE_MAX_PASSES  # fewer cells than a batch: a step is a pass
    for n in (300, 800, 1500, 2500, 5000):
        s = cfg.schedule(n)
        passes = s["ae"] * cfg.batch_size / n
        assert passes <= AE_MAX_PASSES + 1 and s["decoder"] * cfg.batch_size / n <= AE_MAX_PASSES / 3 + 1
        assert s["ae"] >= 1000 or passes >= AE_MAX_PASSES - 1
    assert small["ae"] < 1000 and cfg.schedule(1500)["ae"] == 1000 and cfg.schedule(5000)["ae"] == 60 * (5000 // 128)
    assert big == huge  # bounded: 1M cells cost no more steps than 100k
    assert big["ae"] > small["ae"]
    assert GANConfig(epochs=10, ae_epochs=5).schedule(1280) == {"ae": 50, "decoder": 300, "gan": 20}
    res = run_gan(seeds_small, tmp_path, "p", GANConfig(**{**TINY, "gan_steps": 400, "patience": 1}, n_cells=20))
    gan = pd.read_csv(res["log"], sep="\t").query("phase == 'gan'")
    assert gan["step"].iloc[-1] < 400  # stopped after one check without improvement
    assert gan["val_score"].min() <= gan["val_score"].iloc[-1]


def test_generation_does_not_collapse(trained_small, real_small):
    """A classifier trained on real cells must recognise most types among synthetic cells."""
    from sklearn.decomposition import PCA
    from sklearn.neighbors import KNeighborsClassifier

    from garage._norm import log_normalize

    train = real_small[real_small.obs[C.OBS_SPLIT] == C.SPLIT_TRAIN]
    pca = PCA(30, random_state=0).fit(log_normalize(train.layers[C.LAYER_COUNTS]).toarray())
    clf = KNeighborsClassifier(15).fit(pca.transform(log_normalize(train.layers[C.LAYER_COUNTS]).toarray()),
                                       train.obs[C.OBS_LABEL].astype(str))
    syn = ad.read_h5ad(trained_small["h5ad"])
    pred = clf.predict(pca.transform(log_normalize(syn.X).toarray()))
    lab = syn.obs[C.OBS_CELL_TYPE].astype(str).to_numpy()
    n_types = train.obs[C.OBS_LABEL].nunique()
    assert len(set(pred)) >= n_types - 2, f"synthetic cells look like only {sorted(set(pred))}"
    assert (pred == lab).mean() > 0.6


# ----------------------------------------------------------------------------- generate / load
def test_generate_round_trip_reproduces_training_output(trained_small, tmp_path):
    out = run_generate(trained_small["model"], tmp_path, "again", seed=0)
    a, b = ad.read_h5ad(trained_small["h5ad"]), ad.read_h5ad(out["h5ad"])
    assert (a.X != b.X).nnz == 0
    assert (a.obs[C.OBS_CELL_TYPE].astype(str) == b.obs[C.OBS_CELL_TYPE].astype(str)).all()
    c = ad.read_h5ad(run_generate(trained_small["model"], tmp_path, "other", seed=1)["h5ad"])
    assert (a.X != c.X).nnz > 0


def test_generate_composition_options(trained_small, tmp_path):
    m = trained_small["model"]
    syn = ad.read_h5ad(run_generate(m, tmp_path, "cpt", n_cells=90, cells_per_type="DC=40,Platelet=20",
                                    seed=2)["h5ad"])
    vc = syn.obs[C.OBS_CELL_TYPE].value_counts()
    assert syn.n_obs == 90 and vc["DC"] == 40 and vc["Platelet"] == 20
    bal = ad.read_h5ad(run_generate(m, tmp_path, "bal", n_cells=80, composition="balanced")["h5ad"])
    vcl = bal.obs[C.OBS_CELL_TYPE].value_counts()
    assert bal.n_obs == 80 and vcl.max() - vcl.min() <= 1
    boost = ad.read_h5ad(run_generate(m, tmp_path, "boost", n_cells=300, composition="uniform-rare-boost")["h5ad"])
    vcb = boost.obs[C.OBS_CELL_TYPE].value_counts()
    assert vcb["Platelet"] >= 300 // boost.obs[C.OBS_CELL_TYPE].nunique() - 1
    with pytest.raises(GarageError, match="unknown cell type"):
        run_generate(m, tmp_path, "bad", cells_per_type="Neuron=5")


def test_model_file_holds_no_encoder_or_critic(trained_small):
    import torch

    payload = torch.load(trained_small["model"], weights_only=True)
    keys = payload["state_dict"].keys()
    assert not any(k.startswith(("critic.", "vae.encoder.")) for k in keys)
    assert payload["config"]["seed_mix"] == 0.5 and payload["categories"]
    assert "lib_quantiles" not in payload  # library sizes come from a model, not a table of real cells
    m = GarageGAN.load(trained_small["model"])
    assert m.generate(n_cells=5, seed=0).n_obs == 5


def test_shareable_model_has_no_seed_or_cell_identity(seeds_small, real_small, tmp_path):
    import torch

    res = run_gan(seeds_small, tmp_path, "sh", GANConfig(**TINY, n_cells=40), shareable_model=True)
    payload = torch.load(res["model"], weights_only=True)
    for key in ("seed_codes", "seed_names", "train_hashes"):
        assert key not in payload, key
    assert payload["shareable"] and int(payload["seed_count"].sum()) == 0
    text = repr({k: v for k, v in payload.items() if k != "state_dict"})
    assert not any(n in text for n in real_small.obs_names[:300])
    # library sizes: a small group's own (mean, sd) with its count would give its cells' exact
    # mean log library size, so small groups get the pooled parameters; large groups keep theirs
    from garage.gan._model import LIB_SHARE_MIN_GROUP

    counts = np.asarray(payload["group_counts"])
    small = counts < LIB_SHARE_MIN_GROUP
    assert small.any() and (~small).any(), counts  # Platelet: ~10 train cells
    lib, pooled = payload["lib_params"], payload["lib_pooled"]
    assert torch.equal(lib[torch.from_numpy(small)], pooled.expand(int(small.sum()), 2))
    assert "train_type_counts" not in payload
    own = GarageGAN.setup(real_small, GANConfig(**TINY, n_cells=40)).data.lib_params
    assert torch.equal(lib[torch.from_numpy(~small)], own[torch.from_numpy(~small)])
    assert not torch.equal(own[torch.from_numpy(small)], lib[torch.from_numpy(small)])
    out = run_generate(res["model"], tmp_path, "g", n_cells=30, seed=1, provenance=True)
    prov = pd.read_csv(out["provenance"], sep="\t", comment="#", keep_default_na=False)
    assert (prov[C.OBS_SEED_ID] == "").all()  # unseeded cells only
    syn = ad.read_h5ad(out["h5ad"])
    assert syn.n_obs == 30 and syn.uns["garage"]["shareable_model"]


@pytest.mark.parametrize("on", [True, False])
def test_critic_path_judges_seeded_and_unseeded_fakes_apart(seeds_small, real_small, monkeypatch, on):
    """--critic-path: every critic call gets a 0/1 flag per sample (1: a seeded fake); the real cells
    of a critic step are judged with the flags of the fakes they are paired with, and the generator
    step passes its own fakes' flags. Without it the critic takes no flag (the mixture is judged)."""
    import torch

    from garage.gan._module import ConditionalCritic

    from garage.gan import _train

    calls, masks = [], []
    forward, fake = ConditionalCritic.forward, _train.Trainer._fake

    def spy(self, x, types, conds=None, path=None):
        calls.append((x.detach().clone(), None if path is None else path.detach().clone(), x.requires_grad))
        return forward(self, x, types, conds, path)

    def spy_fake(self, *args, seeds_out=None, **kwargs):  # the seeded mask of every adversarial fake batch
        out = fake(self, *args, seeds_out=seeds_out, **kwargs)
        if seeds_out is not None:
            masks.append(seeds_out[0].clone())
        return out

    monkeypatch.setattr(ConditionalCritic, "forward", spy)
    monkeypatch.setattr(_train.Trainer, "_fake", spy_fake)
    m = GarageGAN.setup(real_small, GANConfig(**TINY, critic_path="on" if on else "off", seed=3))
    width = m.net.critic.net[0].in_features
    m.train(torch.device("cpu"))
    assert calls
    if not on:
        assert all(p is None for _, p, _ in calls)
        assert not m.net.critic.path_input
        return
    assert m.net.critic.path_input and width == m.net.critic.type_emb.embedding_dim + m.net.code_dim + 1
    flags = [p for _, p, _ in calls]
    assert all(p is not None and set(p.unique().tolist()) <= {0.0, 1.0} for p in flags)
    allf = torch.cat(flags)
    assert 0.2 < allf.mean() < 0.8  # seed_mix 0.5: both paths are judged
    # critic steps call (real, fake, interpolates) with one flag tensor: real cell i gets fake i's flag
    triples = [calls[i: i + 3] for i in range(0, len(calls) - 2)
               if not calls[i][2] and not calls[i + 1][2] and calls[i + 2][2]]
    assert len(triples) == TINY["gan_steps"] * GANConfig().n_critic  # every critic step
    for (_, pr, _), (_, pf, _), (_, pi, _) in triples:
        assert torch.equal(pr, pf) and torch.equal(pr, pi)
    # and that flag is the fake batch's own seeded mask, sample by sample: the n_critic critic
    # batches of a step, then the generator's fakes (the critic's call after the triples)
    gen_calls = [calls[i] for i in range(2, len(calls)) if calls[i][2] and calls[i - 1][2]]
    assert len(masks) == len(triples) + len(gen_calls) == TINY["gan_steps"] * (GANConfig().n_critic + 1)
    judged = []
    for i in range(len(calls)):
        if i + 2 < len(calls) and not calls[i][2] and not calls[i + 1][2] and calls[i + 2][2]:
            judged.append(calls[i][1])  # a critic step's flags (the real pass)
        elif i >= 2 and calls[i][2] and calls[i - 1][2]:
            judged.append(calls[i][1])  # a generator step's flags
    assert len(judged) == len(masks)
    for flags, mask in zip(judged, masks):
        assert torch.equal(flags, mask.to(flags.dtype))


def test_critic_path_auto_is_on_for_a_shareable_model_only(seeds_small, tmp_path, monkeypatch):
    """--critic-path auto (the default) resolves before training: on when the model is written with
    --shareable-model (it generates unseeded cells only), off otherwise; the saved model records
    the resolved value. Explicit values are kept; a config of the flag era (bool) maps to on/off; an
    unknown value is refused in one line."""
    import torch

    from garage.gan._module import ConditionalCritic

    built = []
    init = ConditionalCritic.__init__

    def spy(self, *args, **kwargs):  # the critic that training builds
        init(self, *args, **kwargs)
        built.append(self.path_input)

    monkeypatch.setattr(ConditionalCritic, "__init__", spy)
    assert GANConfig().critic_path == "auto" and not GANConfig().critic_path_on
    for shareable, want in ((True, "on"), (False, "off")):
        built.clear()
        out = run_gan(seeds_small, tmp_path / str(shareable), "s", GANConfig(**TINY, n_cells=20),
                      shareable_model=shareable)
        assert built and built[0] is shareable  # trained with the flag iff shareable
        assert torch.load(out["model"], weights_only=True)["config"]["critic_path"] == want
        assert GarageGAN.load(out["model"]).config.critic_path == want
    # a model built without run_gan (auto unresolved) trained without the flag and says so when saved
    m = GarageGAN.setup(ad.read_h5ad(seeds_small), GANConfig(**TINY))
    m.save(tmp_path / "direct.generator.pt")
    assert torch.load(tmp_path / "direct.generator.pt", weights_only=True)["config"]["critic_path"] == "off"
    assert GANConfig(critic_path="off").for_output(True).critic_path == "off"
    assert GANConfig(critic_path="on").for_output(False).critic_path == "on"
    assert GANConfig(critic_path=True).critic_path == "on" and GANConfig(critic_path=False).critic_path == "off"
    with pytest.raises(GarageError, match="critic-path"):
        GANConfig(critic_path="sometimes").validate()


def test_calibration_gives_generated_codes_the_fit_cells_moments(seeds_small, real_small, monkeypatch):
    """--calibrate diag: the codes that generation decodes have, per type, the fit cells' mean and
    per-dimension sd (up to the shrinkage); without it they keep the generator's; --calibrate mean
    moves the mean only."""
    import torch

    from garage.gan._model import CALIB_SHRINK

    def trained(mode):
        m = GarageGAN.setup(real_small, GANConfig(**TINY, calibrate=mode, seed=2))
        m.train(torch.device("cpu"))
        return m

    def target(m: GarageGAN):
        """The largest type, its fit cells' code mean and sd, and its shrinkage weight."""
        fit = torch.from_numpy(m.data.fit_rows)
        fz, ft = m.data.codes[fit].double(), m.data.types[fit]
        big = int(torch.bincount(ft).argmax())
        n = (ft == big).sum()
        return big, fz[ft == big].mean(0), fz[ft == big].std(0), n / (n + CALIB_SHRINK)

    def moments_of(m: GarageGAN, cal: bool, unseeded: bool = False):
        """Mean and sd of the largest type's decoded codes (*unseeded*: generated as a model without
        seeds generates, e.g. a shareable one)."""
        seen = []
        decode = m.net.decode

        def spy(z, c):
            seen.append(z.detach().clone())
            return decode(z, c)

        monkeypatch.setattr(m.net, "decode", spy)
        meta = {k: v for k, v in m.meta.items() if cal or not k.startswith("calib_")}
        if unseeded:
            meta["seed_codes"] = torch.zeros(0)
        syn = GarageGAN(m.config, m.net, meta).generate(n_cells=4000, composition="balanced", seed=4)
        monkeypatch.undo()
        z = torch.cat(seen)[: syn.n_obs].double()
        big = target(m)[0]
        own = torch.from_numpy((syn.obs[C.OBS_CELL_TYPE].astype(str) == m.meta["categories"][big]).to_numpy())
        return z[own].mean(0), z[own].std(0)

    model = trained("diag")
    assert model.meta["calib_a"].shape == (2, len(model.meta["categories"]), model.data.codes.shape[1])
    big, target_m, target_s, w = target(model)

    def err(m):
        return ((m - target_m) / target_s).pow(2).mean().sqrt()

    m_cal, s_cal = moments_of(model, True)
    m_raw, s_raw = moments_of(model, False)
    assert err(m_cal) < 0.15 + (1 - w) * err(m_raw), (err(m_cal), err(m_raw))  # only the shrinkage is left
    assert 0.85 < (s_cal / target_s).median() < 1.15, (s_cal / target_s).median()
    assert err(m_raw) > err(m_cal)  # the tiny model's codes are off; calibration moved them
    # a model that generates without seeds (shareable) has its own map, to the same moments
    m_cal, s_cal = moments_of(model, True, unseeded=True)
    m_raw, _ = moments_of(model, False, unseeded=True)
    assert err(m_cal) < 0.15 + (1 - w) * err(m_raw), (err(m_cal), err(m_raw))
    assert 0.85 < (s_cal / target_s).median() < 1.15, (s_cal / target_s).median()
    assert not torch.equal(model.meta["calib_b"][0], model.meta["calib_b"][1])

    mean_only = trained("mean")
    assert (mean_only.meta["calib_a"] == 1).all() and (mean_only.meta["calib_b"] != 0).any()
    big, target_m, target_s, w = target(mean_only)
    m_cal, s_cal = moments_of(mean_only, True)
    m_raw, s_raw = moments_of(mean_only, False)
    assert err(m_cal) < 0.15 + (1 - w) * err(m_raw) and err(m_raw) > err(m_cal)
    assert torch.allclose(s_cal, s_raw, rtol=1e-4)  # one shift per type: its spread is the generator's


def test_shareable_model_has_no_calibration_for_small_types_or_seeded_draws(seeds_small, tmp_path):
    import torch

    from garage.gan._model import LIB_SHARE_MIN_GROUP, GarageGAN

    res = run_gan(seeds_small, tmp_path, "cal", GANConfig(**TINY, calibrate="diag", n_cells=40),
                  shareable_model=True)
    payload = torch.load(res["model"], weights_only=True)
    a, b = payload["calib_a"], payload["calib_b"]
    per_type = np.asarray(payload["group_counts"]).reshape(a.shape[1], -1).sum(1)
    small = torch.from_numpy(per_type < LIB_SHARE_MIN_GROUP)
    assert small.any() and (~small).any(), per_type
    assert (a[:, small] == 1).all() and (b[:, small] == 0).all()  # a few cells' moments stay out
    assert (a[1] == 1).all() and (b[1] == 0).all()  # no map for seeded generation: it would tell the seeds' mean
    assert not (a[0, ~small] == 1).all()  # larger types keep theirs
    assert "calib_shift_sd" not in payload and "calib_scale_median" not in payload
    # the saved shareable model generates what the run generated (its unseeded map applied)
    again = run_generate(res["model"], tmp_path, "again", n_cells=40, seed=0)
    assert (ad.read_h5ad(again["h5ad"]).X != ad.read_h5ad(res["h5ad"]).X).nnz == 0
    # the private model of the same run keeps both maps for every type it could fit
    private = GarageGAN.setup(ad.read_h5ad(seeds_small), GANConfig(**TINY, calibrate="diag", n_cells=40))
    private.train(torch.device("cpu"))
    assert not (private.meta["calib_a"][1] == 1).all()


def test_calibration_row_follows_whether_the_model_has_seeds(seeds_small, real_small, monkeypatch):
    """Row 1 maps every cell of a seeded model, row 0 those of a model without seeds; a map of
    another layout (no calib_version) is not applied."""
    import torch

    # library sizes that do not follow the code: a +100 code shift would overflow code-conditional sizes
    model = GarageGAN.setup(real_small, GANConfig(**TINY, calibrate="mean", library="lognormal", seed=1))
    model.train(torch.device("cpu"))
    d = model.meta["calib_a"].shape[2]

    def mean_code(meta):
        seen = []
        decode = model.net.decode
        monkeypatch.setattr(model.net, "decode", lambda z, c: (seen.append(z.detach().clone()), decode(z, c))[1])
        GarageGAN(model.config, model.net, meta).generate(n_cells=300, seed=3)
        monkeypatch.undo()
        return float(torch.cat(seen).mean())

    fake = dict(model.meta, calib_a=torch.ones(2, model.meta["calib_a"].shape[1], d),
                calib_b=torch.stack([torch.full(model.meta["calib_b"].shape[1:], 100.0),
                                     torch.zeros(model.meta["calib_b"].shape[1:])]))
    raw = mean_code({k: v for k, v in model.meta.items() if not k.startswith("calib_")})
    assert abs(mean_code(fake) - raw) < 1e-4  # seeded model: row 1 (no shift)
    unseeded = dict(fake, seed_codes=torch.zeros(0))
    assert abs(mean_code(unseeded) - 100) < 5  # no seeds: row 0 (+100)
    old_layout = {k: v for k, v in unseeded.items() if k != "calib_version"}
    assert abs(mean_code(old_layout)) < 5  # unknown layout: not applied


def test_calibrate_outside_the_latent_space_is_not_applied(seeds_small, real_small, caplog):
    import torch

    model = GarageGAN.setup(real_small, GANConfig(**TINY, space="gene", calibrate="mean"))
    with caplog.at_level("WARNING"):
        model.train(torch.device("cpu"))
    assert "calib_a" not in model.meta and "--calibrate applies to --space latent" in caplog.text


@pytest.mark.parametrize("opts", [{"space": "gene"}, {"mode": "original"}])
def test_instance_noise_outside_the_latent_garage_mode_is_said_and_not_applied(real_small, caplog, opts):
    """--instance-noise blurs latent codes only: in gene space or the original mode it warns and the
    trainer's _blur hands every batch back untouched."""
    import torch

    from garage.gan._train import Trainer

    cfg = GANConfig(**TINY, instance_noise=0.5, **opts)
    model = GarageGAN.setup(real_small, cfg)
    with caplog.at_level("WARNING"):
        model.train(torch.device("cpu"))
    assert "--instance-noise applies to --space latent" in caplog.text
    t = Trainer(model.net, model.data, cfg, torch.device("cpu"), torch.Generator().manual_seed(0), None, {})
    x = torch.randn(4, 3)
    assert t._blur(x) is x


def test_shareable_calibration_leaves_types_with_a_small_condition_group_alone():
    import torch

    from garage.gan._model import LIB_SHARE_MIN_GROUP, shareable_library

    # 3 types x 2 conditions: type 0 large in both, type 1 with one small group, type 2 absent in one
    counts = np.array([[200, 150], [300, LIB_SHARE_MIN_GROUP - 1], [120, 0]])
    a = torch.full((2, 3, 4), 1.5)
    b = torch.full((2, 3, 4), 0.3)
    out = shareable_library({"calib_a": a, "calib_b": b, "group_counts": counts.ravel()})
    assert (out["calib_a"][0, [0, 2]] == 1.5).all() and (out["calib_b"][0, [0, 2]] == 0.3).all()
    assert (out["calib_a"][0, 1] == 1).all() and (out["calib_b"][0, 1] == 0).all()
    assert (out["calib_a"][1] == 1).all() and (out["calib_b"][1] == 0).all()
    assert (a == 1.5).all()  # the model's own maps are not modified in place


def test_dispersion_refit_and_ema_on_real_cells(seeds_small, tmp_path):
    """The refit moves only the NB dispersion (the decoder of the same autoencoder is untouched),
    and EMA weights are kept apart from the last generator weights."""
    import torch

    base = dict(TINY, ae_steps=300, hidden=64, decoder_steps=0)
    models = {}
    for name, kw in {"plain": {"refit_dispersion": False, "ema_decay": 0.0},
                     "refit": {"refit_dispersion": True, "ema_decay": 0.9}}.items():
        res = run_gan(seeds_small, tmp_path / name, "s", GANConfig(**base, **kw, n_cells=20, seed=3), threads=1)
        models[name] = torch.load(res["model"], weights_only=True)["state_dict"]
    dec = [k for k in models["plain"] if k.startswith(("vae.decoder.", "vae.px."))]
    assert dec and all(torch.equal(models["plain"][k], models["refit"][k]) for k in dec)
    assert not torch.allclose(models["plain"]["vae.log_theta"], models["refit"]["vae.log_theta"])
    assert not any(k.startswith("generator_ema.") for k in models["plain"])
    ema = {k[len("generator_ema."):]: v for k, v in models["refit"].items() if k.startswith("generator_ema.")}
    raw = {k[len("generator."):]: v for k, v in models["refit"].items() if k.startswith("generator.")}
    assert ema.keys() == raw.keys() and any(not torch.equal(ema[k], raw[k]) for k in ema)


def test_old_model_format_is_refused_clearly(trained_small, tmp_path):
    import torch

    payload = torch.load(trained_small["model"], weights_only=True)
    payload["format"] = "garage-generator/1"
    old = tmp_path / "old.generator.pt"
    torch.save(payload, old)
    with pytest.raises(GarageError, match="older GARAGE"):
        GarageGAN.load(old)


def test_model_saved_before_decoder_dropout_loads_and_generates_the_same(seeds_small, tmp_path):
    """A model saved before --decoder-dropout, --calibrate and --critic-path existed (no such keys in its config,
    decoder without dropout layers, no calibration) loads as trained without them and generates
    exactly what it generated before."""
    import torch

    out = run_gan(seeds_small, tmp_path, "nodrop", GANConfig(**TINY, decoder_dropout=0.0, calibrate="none",
                                                             n_cells=40))
    payload = torch.load(out["model"], weights_only=True)
    assert not any(k.startswith("calib_") for k in payload)
    del payload["config"]["decoder_dropout"], payload["config"]["calibrate"], payload["config"]["critic_path"]
    for key in ("gan_loss", "r1_weight", "lr_decay"):
        del payload["config"][key]
    old = tmp_path / "old.generator.pt"
    torch.save(payload, old)
    model = GarageGAN.load(old)
    assert model.config.decoder_dropout == 0.0 and model.config.calibrate == "none"
    assert model.config.critic_path == "off"  # trained before the option: a critic without the flag
    assert model.config.gan_loss == "wgan-gp" and not model.config.lr_decay
    again = model.generate(40, seed=0)
    first = ad.read_h5ad(out["h5ad"])
    assert (again.X != first.X).nnz == 0
    # a saved network of another shape is refused in one line, not a RuntimeError
    payload["config"]["decoder_dropout"] = 0.2
    torch.save(payload, old)
    with pytest.raises(GarageError, match="does not match this GARAGE version"):
        GarageGAN.load(old)


# ----------------------------------------------------------------------------- variants and errors
def test_fixed_seed_is_deterministic_on_cpu(seeds_small, tmp_path):
    cfg = GANConfig(**TINY, n_cells=50, seed=7)
    a = ad.read_h5ad(run_gan(seeds_small, tmp_path / "a", "s", cfg)["h5ad"])
    # b's outdir holds what a SIGKILLed earlier run of the same stage left: the rerun removes it
    (tmp_path / "b").mkdir()
    stale = [".s.synthetic.staged.h5ad", "..s.synthetic.staged.h5ad.k2j4.tmp.h5ad", ".s.generator.pt.x9.tmp.pt",
             ".s.gan.ckpt.pt.q1.tmp.pt"]
    others = [".keep.me", "s.notes.txt", ".t.synthetic.h5ad.zz.tmp.h5ad"]  # not this stage's: another sample's
    for name in [*stale, *others]:
        (tmp_path / "b" / name).write_text("left behind")
    b = ad.read_h5ad(run_gan(seeds_small, tmp_path / "b", "s", cfg)["h5ad"])
    assert (a.X != b.X).nnz == 0
    left = {p.name for p in (tmp_path / "b").iterdir()}
    assert not left & set(stale) and set(others) <= left


@pytest.mark.parametrize("kw", [{"space": "gene"}, {"mode": "original"}])
def test_other_variants_run(seeds_small, real_small, tmp_path, kw):
    syn = ad.read_h5ad(run_gan(seeds_small, tmp_path, "v", GANConfig(**TINY, **kw, n_cells=60))["h5ad"])
    assert syn.n_obs == 60 and np.array_equal(syn.X.data, np.rint(syn.X.data))
    if kw.get("mode") == "original":  # labels come from the seed cell fed to the generator
        prov = pd.read_csv(tmp_path / "v.provenance.tsv", sep="\t", comment="#", keep_default_na=False)
        assert (prov[C.OBS_SEED_ID] != "").all()
        lab = real_small.obs.loc[prov[C.OBS_SEED_ID], C.OBS_LABEL].astype(str).to_numpy()
        assert (lab == syn.obs[C.OBS_CELL_TYPE].astype(str).to_numpy()).all()


def test_cli_refuses_an_unknown_calibration_in_one_line(seeds_small, tmp_path):
    proc = subprocess.run([*GARAGE, "gan", "--input", str(seeds_small), "--outdir", str(tmp_path), "--prefix", "c",
                           "--calibrate", "full"], capture_output=True, text=True)
    assert proc.returncode == 2 and "--calibrate" in proc.stderr and "full" in proc.stderr
    assert not any(tmp_path.iterdir())  # nothing written


def test_missing_seeds_column(preprocessed_small, tmp_path):
    with pytest.raises(GarageError, match="garage gat"):
        run_gan(preprocessed_small, tmp_path, "x", GANConfig(**TINY))
    res = run_gan(preprocessed_small, tmp_path, "x", GANConfig(**TINY, seed_mix=0.0, n_cells=20))
    prov = pd.read_csv(res["provenance"], sep="\t", comment="#", keep_default_na=False)
    assert len(prov) == 20 and (prov[C.OBS_SEED_ID] == "").all()


def test_memory_guard(seeds_small, monkeypatch):
    import torch

    from garage.gan import _model

    m = GarageGAN.setup(ad.read_h5ad(seeds_small), GANConfig(**TINY, batch_size=4096))
    monkeypatch.setattr(_model, "_available_ram", lambda: 64 * 2**20)
    with pytest.raises(ResourceError, match="--batch-size"):  # exit 3: retried with more memory
        m.check_memory(torch.device("cpu"))
    # --max-memory-gb sets the budget whatever the machine has
    monkeypatch.setattr(_model, "_available_ram", lambda: 512 * 2**30)
    capped = GarageGAN.setup(ad.read_h5ad(seeds_small), GANConfig(**TINY, max_memory_gb=0.01))
    with pytest.raises(ResourceError, match="max-memory-gb"):
        capped.check_memory(torch.device("cpu"))
    est = GarageGAN.setup(ad.read_h5ad(seeds_small), GANConfig(**TINY)).check_memory(torch.device("cpu"))
    # the whole --max-memory-gb budget less what the process already holds (a Nextflow task's
    # task.memory covers the interpreter and the loaded cells too) is usable, with no hidden 80 %
    # margin: just above passes, just below fails
    held = 700 * 2**20
    import garage._utils as U

    monkeypatch.setattr(U, "process_rss_bytes", lambda: held)
    GarageGAN.setup(ad.read_h5ad(seeds_small), GANConfig(**TINY, max_memory_gb=(held + est * 1.01) / 2**30)) \
        .check_memory(torch.device("cpu"))
    with pytest.raises(ResourceError, match="more than the --max-memory-gb budget less the 0.68 GiB already held"):
        GarageGAN.setup(ad.read_h5ad(seeds_small), GANConfig(**TINY, max_memory_gb=(held + est * 0.99) / 2**30)) \
            .check_memory(torch.device("cpu"))
    with pytest.raises(ResourceError, match="already held"):  # a budget the process already spent
        GarageGAN.setup(ad.read_h5ad(seeds_small), GANConfig(**TINY, max_memory_gb=est * 1.01 / 2**30)) \
            .check_memory(torch.device("cpu"))


def test_memory_estimate_counts_the_synthetic_cells(seeds_small):
    """The GAN's pre-flight estimate includes the generated cells: their per-cell tables for every
    cell, and the counts of one chunk only (they are written to the file chunk by chunk), so asking
    for many more cells raises it by the tables alone once past one chunk."""
    from garage.gan._model import GEN_CHUNK, TABLE_BYTES_PER_CELL

    import torch

    few = GarageGAN.setup(ad.read_h5ad(seeds_small), GANConfig(**TINY, n_cells=100))
    many = GarageGAN.setup(ad.read_h5ad(seeds_small), GANConfig(**TINY, n_cells=100_100))
    counts = few.data.counts
    per_cell = counts.nnz / counts.shape[0]
    extra = many.check_memory(torch.device("cpu")) - few.check_memory(torch.device("cpu"))
    assert extra == pytest.approx(100_000 * TABLE_BYTES_PER_CELL + (GEN_CHUNK - 100) * per_cell * 16, rel=1e-6)
    # without --n-cells, --cells-per-type can ask for far more cells than the train cells: the
    # estimate follows the composition that will be generated
    default = GarageGAN.setup(ad.read_h5ad(seeds_small), GANConfig(**TINY))
    n_train = sum(default.meta["group_counts"])
    big = default.meta["categories"][int(np.argmax(default.meta["train_type_counts"]))]
    pinned = GarageGAN.setup(ad.read_h5ad(seeds_small), GANConfig(**TINY, cells_per_type={big: 50_000}))
    extra = pinned.check_memory(torch.device("cpu")) - default.check_memory(torch.device("cpu"))
    assert n_train < GEN_CHUNK
    assert extra == pytest.approx((50_000 - n_train) * TABLE_BYTES_PER_CELL + (GEN_CHUNK - n_train) * per_cell * 16, rel=1e-6)


def test_generate_refuses_what_will_not_fit_before_generating(trained_small, tmp_path, monkeypatch):
    """garage generate checks memory for the cells asked for (exit 3) and writes nothing."""
    from garage.gan import _model

    monkeypatch.setattr(_model, "_available_ram", lambda: 2**30)
    with pytest.raises(ResourceError, match="--n-cells"):
        run_generate(trained_small["model"], tmp_path, "huge", n_cells=10_000_000)
    assert not list(tmp_path.iterdir())
    out = run_generate(trained_small["model"], tmp_path, "ok", n_cells=200)  # a small request still runs
    assert ad.read_h5ad(out["h5ad"]).n_obs == 200


def test_memory_budget_follows_the_cgroup_limit(monkeypatch):
    """The GAN's budget is preprocess's cgroup-capped reading, so a task retried with more memory
    (Docker --memory, a SLURM job's cgroup) sees the larger limit."""
    from garage import preprocess
    from garage.gan import _model

    monkeypatch.setattr(preprocess, "available_memory_bytes", lambda: 123 * 2**20)
    assert _model._available_ram() == 123 * 2**20


# ----------------------------------------------------------------------------- CLI
def _cli(*args, **kw):
    return subprocess.run([*GARAGE, *map(str, args)], capture_output=True, text=True, **kw)


def test_cli_cuda_without_gpu_exits_3(seeds_small, tmp_path):
    """No visible GPU is not bad input: exit 3 (not enough resources), which the pipeline retries."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    r = _cli("gan", "--input", seeds_small, "--prefix", "c", "--outdir", tmp_path, "--device", "cuda")
    assert r.returncode == 3
    assert r.stderr.strip().count("\n") == 0 and "cuda" in r.stderr


def test_cli_unknown_cells_per_type_exits_2(trained_small, tmp_path):
    r = _cli("generate", "--model", trained_small["model"], "--prefix", "g", "--outdir", tmp_path,
             "--cells-per-type", "Neuron=3")
    assert r.returncode == 2 and "Neuron" in r.stderr and "Traceback" not in r.stderr


def test_cli_generate(trained_small, tmp_path):
    r = _cli("generate", "--model", trained_small["model"], "--prefix", "g", "--outdir", tmp_path,
             "--n-cells", 25, "--seed", 4)
    assert r.returncode == 0, r.stderr
    assert ad.read_h5ad(tmp_path / "g.generated.h5ad").n_obs == 25


def test_resume_after_sigkill(seeds_small, tmp_path):
    """Kill `garage gan` mid-training, resume, and reach the same final step."""
    args = ["gan", "--input", seeds_small, "--prefix", "r", "--outdir", tmp_path, "--ae-steps", 40,
            "--gan-steps", 400, "--decoder-steps", 5, "--hidden", 32, "--checkpoint-every", 10,
            "--patience", 0, "--n-cells", 30, "--threads", 1]
    ckpt = tmp_path / "r.gan.ckpt.pt"
    proc = subprocess.Popen([*GARAGE, *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists():  # killed in the AE or the GAN phase: resume must cross phases too
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpt.exists() and not (tmp_path / "r.synthetic.h5ad").exists()
    r = _cli(*args, "--resume")
    assert r.returncode == 0, r.stderr
    log = pd.read_csv(tmp_path / "r.gan_log.tsv", sep="\t")
    for phase, last in (("ae", 40), ("decoder", 5), ("gan", 400)):
        steps = log.loc[log.phase == phase, "step"].tolist()
        assert steps == sorted(set(steps)) and steps[-1] == last, (phase, steps)
    assert not ckpt.exists()
    assert ad.read_h5ad(tmp_path / "r.synthetic.h5ad").n_obs == 30


def test_cli_defaults_match_config():
    from garage.cli.gan import gan as gan_cmd

    cfg = GANConfig()
    for p in gan_cmd.params:
        if p.name in {f for f in cfg.__dataclass_fields__}:
            assert p.default == getattr(cfg, p.name), p.name


# ----------------------------------------------------------------------------- covariates
@pytest.fixture(scope="session")
def mix_seeds(tmp_path_factory) -> Path:
    """Bundled sc_mixology subset (cell lines x protocol; A549 and H838 only under CEL-seq2),
    preprocessed with --condition-key protocol, with GAT seeds."""
    from garage.datasets import dataset_path
    from garage.gat import TEST_OVERRIDES as GAT_TEST
    from garage.gat import GATConfig, run_gat
    from garage.preprocess import PreprocessConfig, run_preprocess

    out = tmp_path_factory.mktemp("mix")
    pp = run_preprocess(dataset_path("sc_mixology_small"), out, "mix",
                        PreprocessConfig(label_key="cell_type", condition_key="protocol", seed=0))["h5ad"]
    return run_gat(pp, out, "mix", GATConfig(**GAT_TEST, seed=0))["h5ad"]


@pytest.fixture(scope="session")
def mix_model(mix_seeds, tmp_path_factory):
    out = tmp_path_factory.mktemp("mix_gan")
    cfg = GANConfig(**{**TEST_OVERRIDES, "gan_steps": 300, "ae_steps": 300}, seed=0)
    return run_gan(mix_seeds, out, "mix", cfg, threads=1)


def test_condition_model_generates_every_group(mix_seeds, mix_model):
    real = ad.read_h5ad(mix_seeds)
    train = real[real.obs[C.OBS_SPLIT] == C.SPLIT_TRAIN]
    syn = ad.read_h5ad(mix_model["h5ad"])
    # default composition: every type x protocol group of the train cells, in its numbers
    want = train.obs.groupby([C.OBS_LABEL, C.OBS_CONDITION], observed=True).size()
    got = syn.obs.groupby([C.OBS_CELL_TYPE, C.OBS_SYN_CONDITION], observed=True).size()
    assert {(str(a), str(b)): int(v) for (a, b), v in got.items()} == \
        {(str(a), str(b)): int(v) for (a, b), v in want.items()}
    # the user's own column names are kept beside the fixed ones
    assert (syn.obs["protocol"].astype(str) == syn.obs[C.OBS_SYN_CONDITION].astype(str)).all()
    assert (syn.obs["cell_type"] == syn.obs[C.OBS_CELL_TYPE]).all()
    assert "counterfactual" not in syn.obs  # nothing unseen was asked for
    assert syn.uns["garage"]["condition_key"] == "protocol"


def test_cells_per_group_and_counterfactual(mix_model, tmp_path):
    m = mix_model["model"]
    out = run_generate(m, tmp_path, "g", cells_per_group="H1975|Drop-seq=30,A549|CEL-seq2=20", n_cells=80, seed=1)
    syn = ad.read_h5ad(out["h5ad"])
    grp = (syn.obs[C.OBS_CELL_TYPE].astype(str) + "|" + syn.obs[C.OBS_SYN_CONDITION].astype(str)).value_counts()
    assert syn.n_obs == 80 and grp["H1975|Drop-seq"] == 30 and grp["A549|CEL-seq2"] == 20
    assert "A549|Drop-seq" not in grp  # never generated unless asked for
    # A549 was never sequenced with Drop-seq: refused with a line naming it, unless allowed
    with pytest.raises(GarageError, match=r"A549\|Drop-seq"):
        run_generate(m, tmp_path, "cf", cells_per_group="A549|Drop-seq=10")
    cf = ad.read_h5ad(run_generate(m, tmp_path, "cf", cells_per_group="A549|Drop-seq=10", n_cells=10,
                                   allow_counterfactual=True)["h5ad"])
    assert cf.n_obs == 10 and cf.obs["counterfactual"].all()
    assert list(cf.uns["garage"]["counterfactual_groups"]) == ["A549|Drop-seq"]
    r = _cli("generate", "--model", m, "--prefix", "x", "--outdir", tmp_path, "--cells-per-group", "A549|Drop-seq=5")
    assert r.returncode == 2 and "A549|Drop-seq" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(GarageError, match="no condition"):  # a model without a covariate
        group_composition(["A"], [], [3], 5, cells_per_group="A|X=1")


def test_real_and_synthetic_of_two_samples_concat_and_run_scanpy(trained_small, mix_model, small_counts_path):
    """A scverse user concatenates real and synthetic files of two samples and runs scanpy: no renaming."""
    import scanpy as sc

    from garage.datasets import dataset_path

    parts = {
        "small_real": ad.read_h5ad(small_counts_path),
        "small_syn": ad.read_h5ad(trained_small["h5ad"]),
        "mix_real": ad.read_h5ad(dataset_path("sc_mixology_small")),
        "mix_syn": ad.read_h5ad(mix_model["h5ad"]),
    }
    both = ad.concat(parts, join="inner", label="source")  # obs names must already be unique
    assert both.obs_names.is_unique and both.n_vars > 50
    assert both.obs["cell_type"].notna().all()  # the user's label column lines up across files
    mix = ad.concat([parts["mix_real"], parts["mix_syn"]], join="inner")  # and so does the condition's
    assert mix.obs["protocol"].notna().all() and set(mix.obs["protocol"]) == {"CEL-seq2", "Drop-seq"}
    syn_mask = both.obs["source"].str.endswith("_syn").to_numpy()
    assert both.obs_names[syn_mask].str.contains("-syn").all() and not both.obs_names[~syn_mask].str.contains(
        "-syn").any()
    sc.pp.normalize_total(both, target_sum=1e4)
    sc.pp.log1p(both)
    sc.pp.pca(both, n_comps=20)
    sc.pp.neighbors(both, n_neighbors=10)
    sc.tl.leiden(both, flavor="igraph", n_iterations=2, directed=False, random_state=0)
    assert both.obs["leiden"].nunique() > 3


def test_group_names_with_commas_and_separators_parse():
    """Cell Ontology labels carry commas, and a type or condition may contain '|': the options
    still name them (a comma ends an item only after '=N'; the '|' split that names a known
    type x condition pair wins)."""
    from garage.gan._config import parse_cells_per_type
    from garage.gan._model import group_composition

    assert dict(parse_cells_per_type("CD4-positive, alpha-beta T cell=50,B=20")) == {
        "CD4-positive, alpha-beta T cell": 50, "B": 20}
    with pytest.raises(GarageError, match="is not NAME=N"):
        parse_cells_per_type("DC=200,Platelet")
    cats, conds = ["CD4|naive", "B"], ["ctrl", "IFN, 6h"]
    counts = np.array([[10, 10], [10, 10]])
    out = group_composition(cats, conds, counts, n_cells=100,
                            cells_per_group="CD4|naive|IFN, 6h=7,B|ctrl=3")
    assert out[0, 1] == 7 and out[1, 0] == 3


def test_validation_mmd_is_blockwise_and_exact():
    """The GAN's validation MMD^2 is summed over row blocks (bounded memory at any data size)
    and equals the full-matrix value, also when the sizes are not multiples of the block."""
    import torch

    from garage.gan import _train

    g = torch.Generator().manual_seed(0)
    a = torch.randn(2 * _train.MMD_BLOCK + 37, 6, generator=g)
    b = torch.randn(_train.MMD_BLOCK // 2 + 3, 6, generator=g) + 0.3
    scales = torch.tensor([0.25, 1.0, 4.0]) * 12.0

    def full(x, y):
        d = torch.cdist(x.double(), y.double()).pow(2)
        return sum(torch.exp(-d / s) for s in scales.double()).mean() / len(scales)

    want = float(full(a, a) + full(b, b) - 2 * full(a, b))
    got = _train.mmd2(a, b, scales)
    assert want > 1e-3  # the shift is detectable, so the comparison means something
    assert abs(got - want) < 1e-5 * max(1.0, abs(want)) + 1e-6
    assert abs(_train.mmd2(a, a, scales)) < 1e-5
    assert np.isnan(_train.mmd2(a[:0], b, scales))  # no codes on one side: no score, not a crash


# ----------------------------------------------------------------------------- within-type states
def test_within_type_states_on_real_cells(seeds_small, real_small, tmp_path):
    """type_states > 1: big types split into k-means states of >= state_min_cells fit cells, rare
    types stay one state, every seed is drawn from its own state, and the saved model generates
    the same cells as training did, with the train type composition."""
    k, min_cells = 3, 40
    cfg = GANConfig(**TINY, type_states=k, state_min_cells=min_cells, seed=0)
    model = GarageGAN.setup(real_small, cfg)
    model.train("cpu")
    d = model.data
    types, labels, fit = d.types.numpy(), d.labels.numpy(), d.fit_rows
    assert (labels // k == types).all()
    per_state = np.bincount(labels[fit], minlength=len(model.meta["categories"]) * k).reshape(-1, k)
    n_fit = np.bincount(types[fit], minlength=per_state.shape[0])
    for t in range(per_state.shape[0]):
        used = per_state[t][per_state[t] > 0]
        assert len(used) == 1 or (used >= min_cells).all(), (t, per_state[t])
        if n_fit[t] < 2 * min_cells:  # rare / small types: one state
            assert len(used) == 1
    assert (per_state > 0).sum(1).max() >= 2, "no type was split although some have > 2 x min_cells cells"
    assert (d.state_counts.numpy().sum(1) == per_state.ravel()).all()
    # seeds come from the state they serve
    rows, start, count = d.seed_rows.numpy(), d.seed_start.numpy(), d.seed_count.numpy()
    for g in range(len(start)):
        assert (labels[rows[start[g]:start[g] + count[g]]] == g // d.n_conds).all()
    assert count.sum() > 0
    # the networks see type x state labels
    assert model.net.generator.type_emb.num_embeddings == per_state.shape[0] * k
    # state draws follow the fit cells' state shares (inside a type)
    from garage.gan._train import draw_labels, state_probs

    big = int(np.argmax(n_fit))
    probs = state_probs(d.state_counts, k, d.n_conds)
    import torch

    drawn = draw_labels(torch.full((20000,), big), torch.zeros(20000, dtype=torch.long), probs, k, d.n_conds,
                        torch.Generator().manual_seed(0)).numpy()
    share = np.bincount(drawn - big * k, minlength=k) / len(drawn)
    assert np.abs(share - per_state[big] / per_state[big].sum()).max() < 0.02
    # save / load / generate: the saved model knows its states and reproduces generation
    path = model.save(tmp_path / "m.generator.pt")
    a = model.generate(n_cells=300, seed=3)
    b = GarageGAN.load(path).generate(n_cells=300, seed=3)
    assert (a.X != b.X).nnz == 0
    ref = np.bincount(types, minlength=per_state.shape[0]) / len(types)
    got = pd.Series(a.obs[C.OBS_CELL_TYPE].astype(str)).value_counts()
    for t, name in enumerate(model.meta["categories"]):
        assert abs(got.get(name, 0) - 300 * ref[t]) <= 1.5


def _gate_data(seed: int = 0):
    """Codes of three types in 8 dimensions, as ``_assign_states`` reads them: type 0 one Gaussian
    (600 cells), type 1 two Gaussians 6 sd apart on the first axis (300 + 300), type 2 too small to
    split (70); every tenth cell a seed, every cell a fit cell but every fifth (validation)."""
    from types import SimpleNamespace

    import torch

    from garage.gan._model import _seed_table

    rng = np.random.default_rng(seed)
    shift = np.zeros(8)
    shift[0] = 6.0
    z = np.concatenate([rng.normal(size=(600, 8)), rng.normal(size=(300, 8)), rng.normal(size=(300, 8)) + shift,
                        rng.normal(size=(70, 8))])
    types = np.repeat([0, 1, 1, 2], [600, 300, 300, 70])
    truth = np.repeat([0, 0, 1, 0], [600, 300, 300, 70])  # type 1's true sub-state
    n = len(types)
    seeds = np.arange(0, n, 10)
    is_seed = np.zeros(n, dtype=bool)
    is_seed[seeds] = True
    rows, start, count = _seed_table(is_seed, types, np.zeros(n, dtype=np.int64), 3, 1)
    data = SimpleNamespace(
        types=torch.from_numpy(types), codes=torch.from_numpy(z.astype(np.float32)),
        fit_rows=np.flatnonzero(np.arange(n) % 5 != 0), n_conds=1, conds=torch.zeros(n, dtype=torch.long),
        seed_rows=torch.from_numpy(rows), seed_start=torch.from_numpy(start), seed_count=torch.from_numpy(count),
        labels=None, state_counts=None, state_excess=None)
    return data, types, truth


def test_state_gate_splits_only_the_clustered_type():
    """--state-gate: of two big types, the one that is two clusters is split along them and the one
    Gaussian stays whole (without the gate k-means splits it too), the small type stays whole, and
    each big type's silhouette excess is recorded; an unreachable gate splits nothing."""
    from sklearn.metrics import adjusted_rand_score

    from garage.gan._model import _assign_states

    k_max = 4
    data, types, truth = _gate_data()
    _assign_states(data, k_max, 50, 0, gate=0.04)
    lab = data.labels.numpy()
    assert (lab // k_max == types).all()
    states = {t: np.unique(lab[types == t] % k_max) for t in range(3)}
    assert len(states[0]) == 1 and len(states[2]) == 1, states
    assert len(states[1]) == 2, states
    assert adjusted_rand_score(truth[types == 1], lab[types == 1]) > 0.95
    k1, ex1 = data.state_excess[1]
    k0, ex0 = data.state_excess[0]
    assert k1 == 2 and ex1 >= 0.04 > ex0, data.state_excess
    assert 2 not in data.state_excess  # fewer than 2 x 50 fit cells: no k to score
    # seeds are regrouped by state: every seed serves the state it lies in
    rows, start, count = data.seed_rows.numpy(), data.seed_start.numpy(), data.seed_count.numpy()
    for g in range(len(start)):
        assert (lab[rows[start[g]:start[g] + count[g]]] == g).all()
    # the gate is what keeps type 0 whole: off, k-means cuts the Gaussian into the largest k allowed
    off, _, _ = _gate_data()
    _assign_states(off, k_max, 50, 0, gate=0.0)
    assert len(np.unique(off.labels.numpy()[types == 0] % k_max)) == k_max
    assert off.state_excess == {}
    shut, _, _ = _gate_data()
    _assign_states(shut, k_max, 50, 0, gate=10.0)
    assert (shut.labels.numpy() == types * k_max).all()
    # the same seed finds the same states and excess (a resumed run must)
    again, _, _ = _gate_data()
    _assign_states(again, k_max, 50, 0, gate=0.04)
    assert (again.labels.numpy() == lab).all() and again.state_excess == data.state_excess


def test_bench_state_gate_noise_reestimates_on_fixed_codes_without_touching_them():
    """bench.state_gate_noise.excess_spread: one best excess per estimator seed for every type the size
    rule lets split, the clustered type far above the gate each time, and the caller's data as it was."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from bench.state_gate_noise import excess_spread

    data, types, _ = _gate_data()
    before = (data.seed_rows.clone(), data.seed_start.clone(), data.seed_count.clone())
    spread = excess_spread(data, 4, 50, 0.04, [1, 2, 3])
    assert sorted(spread) == [0, 1] and all(len(v) == 3 for v in spread.values())
    assert min(spread[1]) > 0.04 > max(spread[0])
    assert len(set(spread[0])) > 1  # the estimator seed does move the estimate
    assert data.labels is None and all(torch.equal(a, b) for a, b in
                                       zip(before, (data.seed_rows, data.seed_start, data.seed_count)))


def test_state_gate_is_checked_and_reaches_the_trainer(real_small, caplog, tmp_path):
    """--state-gate must be a number >= 0; a gated run logs each big type's best k and its excess."""
    import logging

    for bad in (-0.1, float("nan"), "x", True):
        with pytest.raises(GarageError, match="--state-gate must be a number >= 0"):
            GANConfig(**TINY, state_gate=bad).validate()
    with caplog.at_level(logging.WARNING, logger="garage"):  # without states the gate has nothing to gate
        GarageGAN.setup(real_small, GANConfig(**{**TINY, "gan_steps": 1}, state_gate=0.05)).train("cpu")
    assert "--state-gate applies with --type-states > 1" in caplog.text
    caplog.clear()
    cfg = GANConfig(**{**TINY, "gan_steps": 2}, type_states=3, state_min_cells=40, state_gate=0.01, seed=0)
    with caplog.at_level(logging.INFO, logger="garage"):
        model = GarageGAN.setup(real_small, cfg)
        model.train("cpu")
    assert model.data.state_excess, "no type was scored"
    cats = model.meta["categories"]
    assert model.meta["state_excess"] == {cats[t]: list(v) for t, v in model.data.state_excess.items()}
    import torch

    path = model.save(tmp_path / "g.generator.pt")  # loads as weights only, and keeps the record
    assert torch.load(path, weights_only=True)["state_excess"] == model.meta["state_excess"]
    assert GarageGAN.load(path).meta["state_excess"] == model.meta["state_excess"]
    assert "--state-gate 0.01: per type, the best k and its silhouette excess" in caplog.text


def test_state_probs_fall_back_to_the_type_for_a_group_without_cells():
    import torch

    from garage.gan._train import state_probs

    # 2 types x 2 states x 2 conditions; type 1 has no cell in condition 1
    counts = torch.tensor([[30, 10], [10, 30], [20, 0], [60, 0]])
    p = state_probs(counts, 2, 2).numpy()  # rows: type 0 cond 0, type 0 cond 1, type 1 cond 0, type 1 cond 1
    assert np.allclose(p[0], [0.75, 0.25]) and np.allclose(p[1], [0.25, 0.75])
    assert np.allclose(p[2], [0.25, 0.75]) and np.allclose(p[3], [0.25, 0.75])


def test_type_states_are_off_outside_the_latent_game():
    assert GANConfig(type_states=4).effective_type_states == 4
    assert GANConfig(type_states=4, space="gene").effective_type_states == 1
    assert GANConfig(type_states=4, mode="original").effective_type_states == 1
    with pytest.raises(GarageError, match="type-states"):
        GANConfig(type_states=0).validate()
    with pytest.raises(GarageError, match="state-min-cells"):
        GANConfig(type_states=4, state_min_cells=2).validate()


def test_within_type_states_with_a_condition_and_a_shareable_model(mix_seeds, tmp_path):
    """K > 1 with a condition covariate: every type x condition group is generated, and the
    shareable model keeps its states but no seed identity, and regenerates the run's own output."""
    out = run_gan(mix_seeds, tmp_path, "st", GANConfig(**TINY, type_states=2, state_min_cells=20, seed=0),
                  shareable_model=True)
    syn = ad.read_h5ad(out["h5ad"])
    real = ad.read_h5ad(mix_seeds)
    train = real[real.obs[C.OBS_SPLIT].astype(str) == C.SPLIT_TRAIN]
    want = set(zip(train.obs[C.OBS_LABEL].astype(str), train.obs[C.OBS_CONDITION].astype(str)))
    got = set(zip(syn.obs[C.OBS_CELL_TYPE].astype(str), syn.obs[C.OBS_SYN_CONDITION].astype(str)))
    assert got == want
    assert syn.uns[C.UNS_KEY]["seeded_cells"] == 0  # the shareable run generates unseeded cells only
    import torch

    payload = torch.load(out["model"], weights_only=True)
    assert "seed_names" not in payload and "seed_codes" not in payload and payload["k_states"] == 2
    again = ad.read_h5ad(run_generate(out["model"], tmp_path, "again", seed=0)["h5ad"])
    assert (again.X != syn.X).nnz == 0


# ----------------------------------------------------------------------------- conditional library sizes
def test_conditional_library_fit_recovers_a_known_slope():
    """Log size = group mean + 0.5 x code[0] + noise: the fit finds the slope inside groups (not the
    between-group difference), its R^2, and shrinks a tiny group's mean code towards its type's."""
    from types import SimpleNamespace

    import torch

    from garage.gan._model import LIB_SHRINK, _conditional_library

    rng = np.random.default_rng(0)
    n = 4000
    types = rng.integers(0, 2, n)
    types[:3] = 2  # a type of three cells
    conds = np.zeros(n, dtype=np.int64)
    z = rng.normal(size=(n, 4))
    z[:, 0] += 3.0 * types  # types differ in code ...
    y = 2.0 * types + 0.5 * z[:, 0] + rng.normal(scale=0.2, size=n)  # ... and in size, beyond the slope
    data = SimpleNamespace(fit_rows=np.arange(n), codes=torch.tensor(z, dtype=torch.float32),
                           loglib=torch.tensor(y, dtype=torch.float32), types=torch.from_numpy(types),
                           conds=torch.from_numpy(conds), n_conds=1)
    m = _conditional_library(data, 3)
    assert abs(float(m["lib_coef"][0]) - 0.5) < 0.02 and float(m["lib_coef"][1:].abs().max()) < 0.02
    assert 0.8 < m["lib_r2"] < 0.9  # var 0.25 explained of 0.25 + 0.04
    assert m["lib_resid_scale"] == pytest.approx(np.sqrt(1 - m["lib_r2"]))
    own = z[types == 2].mean(0)
    type_mean = own * 3 / (3 + LIB_SHRINK)  # the type's mean code, shrunk towards 0 (all cells')
    want = (3 * own + LIB_SHRINK * type_mean) / (3 + LIB_SHRINK)  # the group's, towards its type's
    assert torch.allclose(m["lib_code_mean"][2], torch.tensor(want, dtype=torch.float32), atol=1e-4)
    assert float(m["lib_code_mean"][2].norm()) < 0.5 * float(np.linalg.norm(own))


def test_conditional_library_without_slope_is_the_lognormal():
    import torch

    from garage.gan._train import sample_library, sample_library_conditional

    params = torch.tensor([[5.0, 0.3], [7.0, 0.5]])
    groups = torch.tensor([0, 1, 1, 0, 1])
    codes = torch.randn(5, 3)
    a = sample_library(params, groups, torch.Generator().manual_seed(1))
    b = sample_library_conditional(params, groups, codes, torch.zeros(3), torch.zeros(2, 3), 1.0,
                                   torch.Generator().manual_seed(1))
    assert torch.allclose(a, b)
    c = sample_library_conditional(params, groups, codes, torch.tensor([1.0, 0, 0]), torch.zeros(2, 3), 1.0,
                                   torch.Generator().manual_seed(1))
    assert torch.allclose(c.log(), a.log() + codes[:, 0], atol=1e-5)


def test_conditional_library_model_trains_saves_and_shares(seeds_small, tmp_path):
    import torch

    from garage.gan._model import LIB_SHARE_MIN_GROUP

    # critic path fixed, so the shareable run trains exactly as the normal one (auto differs between them)
    cfg = GANConfig(**TINY, library="conditional", n_cells=60, critic_path="off")
    res = run_gan(seeds_small, tmp_path / "c", "c", cfg)
    syn = ad.read_h5ad(res["h5ad"])
    assert syn.uns[C.UNS_KEY]["library"] == "conditional" and syn.n_obs == 60
    payload = torch.load(res["model"], weights_only=True)
    assert payload["lib_coef"].shape == (cfg.n_latent,) and 0 < payload["lib_resid_scale"] <= 1
    again = ad.read_h5ad(run_generate(res["model"], tmp_path / "g", "g", n_cells=60, seed=0)["h5ad"])
    assert (again.X != syn.X).nnz == 0  # generate from the file = the run's own cells
    shared = run_gan(seeds_small, tmp_path / "s", "s", cfg, shareable_model=True)
    p2 = torch.load(shared["model"], weights_only=True)
    small = torch.from_numpy(np.asarray(p2["group_counts"]) < LIB_SHARE_MIN_GROUP)
    assert small.any() and (p2["lib_code_mean"][small] == 0).all()
    assert torch.equal(p2["lib_code_mean"][~small], payload["lib_code_mean"][~small])
    # the shareable run's own cells are what its saved model generates (small groups pooled in both)
    mine = ad.read_h5ad(shared["h5ad"])
    regen = ad.read_h5ad(run_generate(shared["model"], tmp_path / "sg", "sg", n_cells=60, seed=0)["h5ad"])
    assert (regen.X != mine.X).nnz == 0
    assert GANConfig().library == "conditional"  # the default
    # lognormal models carry no conditional parameters
    plain = GANConfig(**TINY, library="lognormal", n_cells=20)
    assert "lib_coef" not in torch.load(run_gan(seeds_small, tmp_path / "l", "l", plain)["model"], weights_only=True)


def test_generation_is_written_chunk_by_chunk_and_equals_the_in_memory_cells(mix_model, monkeypatch, tmp_path):
    """More cells than one chunk: the file written block by block (memory: one block) holds
    exactly the cells generate() returns in memory, layers['counts'] is one stored copy linked
    to X, and the per-group counts survive group names with '/' (HDF5's path separator)."""
    import h5py

    import garage.gan._model as gm

    monkeypatch.setattr(gm, "GEN_CHUNK", 64)
    gan = GarageGAN.load(mix_model["model"])
    mem, prov_m = gan.generate(300, seed=3, with_provenance=True)
    out = tmp_path / "chunked.synthetic.h5ad"
    light, prov_c = gan.generate(300, seed=3, with_provenance=True, out=out, extra_uns={"note": "x"})
    assert light.X is None and light.n_obs == 300
    disk = ad.read_h5ad(out)
    assert disk.shape == mem.shape and (disk.X != mem.X).nnz == 0
    assert (disk.layers[C.LAYER_COUNTS] != mem.X).nnz == 0
    assert (disk.obs_names == mem.obs_names).all() and disk.obs.equals(mem.obs)
    assert prov_c.equals(prov_m)
    u = disk.uns[C.UNS_KEY]
    assert u["note"] == "x" and u["seeded_cells"] == mem.uns[C.UNS_KEY]["seeded_cells"] > 0
    assert int(u["n_per_group"]["n_cells"].sum()) == 300
    from garage.evaluate._memory import _element_bytes

    with h5py.File(out) as f:
        assert f["X"] == f["layers"][C.LAYER_COUNTS]  # a hard link, not a second copy
        assert f["X"]["indptr"].dtype == f["X"]["indices"].dtype == np.int32  # one index dtype (scipy)
        # evaluate's memory estimate reads the linked layer as the second copy it becomes in RAM
        assert _element_bytes(f) >= 2 * _element_bytes(f["X"]) > 0
    x = disk.X.copy()
    x.eliminate_zeros()  # scipy's sparse tools accept the file's X (one index dtype)
    # a file expected to pass 2**31 stored counts gets int64 indices from its first block
    from garage.baselines import synthetic_obs
    from garage.io import write_synthetic_chunked

    wide = tmp_path / "wide.h5ad"
    write_synthetic_chunked(wide, synthetic_obs(300, ["a"] * 300, ["a"]), disk.var, iter([mem.X[:100], mem.X[100:]]),
                            disk.n_vars, wide_index=True)
    w = ad.read_h5ad(wide)
    assert w.X.indptr.dtype == w.X.indices.dtype == np.int64 and (w.X != mem.X).nnz == 0
    w.X.eliminate_zeros()  # scipy's sparse tools accept it
    # a failure mid-generation leaves nothing under the final name
    def boom(*a, **k):
        raise RuntimeError("disk full")

    bad = tmp_path / "bad.synthetic.h5ad"
    monkeypatch.setattr(gm, "_bad_rows", boom)
    with pytest.raises(RuntimeError):
        gan.generate(300, seed=3, out=bad)
    assert not bad.exists() and not list(tmp_path.glob(".bad*"))


def test_type_names_with_a_slash_round_trip_in_uns(tmp_path):
    from garage.baselines import count_table, synthetic_anndata

    names = ["CD4+/CD45RA+/CD25- Naive T", "B"]
    a = synthetic_anndata(np.ones((3, 2), dtype=np.float32), [names[0], names[1], names[1]], names,
                          {"n_per_type": count_table({names[0]: 1, names[1]: 2}, "cell_type")},
                          var_names=["g1", "g2"])
    a.write_h5ad(tmp_path / "s.h5ad")
    t = ad.read_h5ad(tmp_path / "s.h5ad").uns[C.UNS_KEY]["n_per_type"]
    assert dict(zip(t["cell_type"], t["n_cells"])) == {names[0]: 1, names[1]: 2}


def test_checkpoint_of_another_version_is_refused(seeds_small, tmp_path):
    """--resume with a checkpoint of an older format (before the schedule was recorded) fails with
    one clear error, not a mismatched training run."""
    import torch

    torch.save({"format": "garage-gan-ckpt/2", "config": {}}, tmp_path / "old.gan.ckpt.pt")
    with pytest.raises(GarageError, match="another GARAGE version"):
        run_gan(seeds_small, tmp_path, "old", GANConfig(**{**TINY, "checkpoint_every": 10}), resume=True)
    # the current format, but written before an option existed: named as such, not "other options"
    from garage.gan._train import CKPT_FORMAT

    cfg = GANConfig(**{**TINY, "checkpoint_every": 10})
    old = {k: v for k, v in cfg.to_dict().items() if k != "decoder_dropout"}
    torch.save({"format": CKPT_FORMAT, "config": old}, tmp_path / "older.gan.ckpt.pt")
    with pytest.raises(GarageError, match="older GARAGE .*decoder_dropout"):
        run_gan(seeds_small, tmp_path, "older", cfg, resume=True)


def test_checkpoint_from_before_the_loss_options_resumes_as_wgan_gp(real_small, tmp_path):
    """A checkpoint written before --gan-loss, --r1-weight, --lr-decay and --instance-noise existed was
    trained with WGAN-GP, no decay and no instance noise: a run with those defaults resumes from it; one
    that asks for ns-r1 or instance noise is told which option differs."""
    import torch

    from garage.gan._train import Trainer

    def trainer(cfg, m):  # as GarageGAN.train builds it, from the model's config
        return Trainer(m.net, m.data, m.config, torch.device("cpu"), torch.Generator().manual_seed(0),
                       tmp_path / "c.gan.ckpt.pt", m.config.train_options())

    cfg = GANConfig(**{**TINY, "checkpoint_every": 10})
    m = GarageGAN.setup(real_small, cfg)
    trainer(cfg, m).save_checkpoint()
    ck = torch.load(tmp_path / "c.gan.ckpt.pt", weights_only=False)
    for key in ("gan_loss", "r1_weight", "lr_decay", "instance_noise", "critic_pack", "state_gate"):
        del ck["config"][key]
    torch.save(ck, tmp_path / "c.gan.ckpt.pt")
    assert trainer(cfg, m).load_checkpoint()
    ns = GANConfig(**{**TINY, "checkpoint_every": 10, "gan_loss": "ns-r1"})
    with pytest.raises(GarageError, match=r"different options .*\(gan_loss\)"):
        trainer(ns, GarageGAN.setup(real_small, ns)).load_checkpoint()
    blur = GANConfig(**{**TINY, "checkpoint_every": 10, "instance_noise": 0.2})
    with pytest.raises(GarageError, match=r"different options .*\(instance_noise\)"):
        trainer(blur, GarageGAN.setup(real_small, blur)).load_checkpoint()
    packed = GANConfig(**{**TINY, "checkpoint_every": 10, "critic_pack": 2})
    with pytest.raises(GarageError, match=r"different options .*\(critic_pack\)"):
        trainer(packed, GarageGAN.setup(real_small, packed)).load_checkpoint()
    gated = GANConfig(**{**TINY, "checkpoint_every": 10, "state_gate": 0.05})
    with pytest.raises(GarageError, match=r"different options .*\(state_gate\)"):
        trainer(gated, GarageGAN.setup(real_small, gated)).load_checkpoint()
    # written while the default rate was 4e-4 (rounds 16-17): the error names the rate to pass
    ck["config"]["lr_gan"] = 4e-4
    torch.save(ck, tmp_path / "c.gan.ckpt.pt")
    with pytest.raises(GarageError, match=r"\(lr_gan\).*--lr-gan 0.0004: pass that to resume it, or lr_gan: 0.0004 in the gan section"):
        trainer(cfg, m).load_checkpoint()
    old = GANConfig(**{**TINY, "checkpoint_every": 10, "lr_gan": 4e-4})
    assert trainer(old, GarageGAN.setup(real_small, old)).load_checkpoint()


def test_decoder_dropout_acts_in_training_only(real_small):
    """--decoder-dropout puts dropout in the decoder's hidden layers: random in train mode, and
    generation (eval mode) decodes deterministically."""
    import torch

    model = GarageGAN.setup(real_small, GANConfig(**TINY, decoder_dropout=0.5))
    vae = model.net.vae
    assert any(isinstance(m, torch.nn.Dropout) and m.p == 0.5 for m in vae.decoder.modules())
    z = torch.randn(8, vae.z_mean.out_features)
    vae.train()
    assert not torch.allclose(vae.proportions(z), vae.proportions(z))
    vae.eval()
    assert torch.equal(vae.proportions(z), vae.proportions(z))
    plain = GarageGAN.setup(real_small, GANConfig(**TINY, decoder_dropout=0.0)).net.vae
    assert not any(isinstance(m, torch.nn.Dropout) for m in plain.decoder.modules())
    default = GarageGAN.setup(real_small, GANConfig(**TINY)).net.vae  # the default: 0.2
    assert any(isinstance(m, torch.nn.Dropout) and m.p == 0.2 for m in default.decoder.modules())


def test_posterior_noise_is_capped_at_the_codes_spread(real_small):
    """--posterior-noise: the critic's real codes are drawn around the posterior means with at most one
    standardised sd per dimension, so a collapsed dimension cannot get noise of many of its sds."""
    import torch

    model = GarageGAN.setup(real_small, GANConfig(**TINY, posterior_noise=1.0))
    model.train(torch.device("cpu"))
    sd = model.data.code_sd
    assert sd is not None and sd.shape == model.data.codes.shape
    assert float(sd.max()) <= 1.0 and float(sd.min()) > 0


def test_ns_r1_losses_on_a_linear_critic():
    """--gan-loss ns-r1: the logistic critic loss is softplus(D(fake)) + softplus(-D(real)) plus
    r1_weight / 2 times E||grad D(real)||^2, which for a linear critic D(x) = w.x is ||w||^2;
    the generator loss is softplus(-D(fake))."""
    import torch
    import torch.nn.functional as F

    from garage.gan._module import ns_critic_loss, ns_generator_loss, r1_penalty

    w = torch.tensor([3.0, -4.0])

    def critic(x, types, conds=None, path=None):
        return x @ w

    real = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    fake = torch.tensor([[2.0, 2.0], [-1.0, 0.0], [0.0, 0.0]])
    types = torch.zeros(3, dtype=torch.long)
    assert float(r1_penalty(critic, real, types)) == pytest.approx(25.0)
    d = ns_critic_loss(critic, real, fake, types, 0.4)
    want = F.softplus(fake @ w).mean() + F.softplus(-(real @ w)).mean() + 0.2 * 25.0
    assert float(d.loss) == pytest.approx(float(want), rel=1e-6)
    assert float(d.gp) == pytest.approx(25.0)
    assert float(d.distance) == pytest.approx(float((real @ w).mean() - (fake @ w).mean()))
    assert float(ns_critic_loss(critic, real, fake, types, 0.0).loss) == pytest.approx(float(want) - 5.0, rel=1e-6)
    assert float(ns_generator_loss(critic, fake, types).loss) == pytest.approx(float(F.softplus(-(fake @ w)).mean()))


def test_r1_penalty_is_taken_at_the_real_cells_and_trains_the_critic():
    """On a nonlinear critic R1 is E||grad_x D(x)||^2 at the real cells (not the fakes or interpolates),
    and it is differentiable in the critic's weights (create_graph), so the penalty shapes the critic."""
    import torch

    from garage.gan._module import ConditionalCritic, ns_critic_loss, r1_penalty

    torch.manual_seed(0)
    critic = ConditionalCritic(3, 2, 4, 16)
    real, fake = torch.randn(8, 3), torch.randn(8, 3) * 3 + 2
    types = torch.tensor([0, 1] * 4)

    def r1_at(x):
        x = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(critic(x, types).sum(), x)
        return float(g.pow(2).sum(1).mean())

    got = r1_penalty(critic, real, types)
    assert float(got.detach()) == pytest.approx(r1_at(real), rel=1e-5)
    assert abs(r1_at(real) - r1_at(fake)) > 1e-3 * r1_at(real)  # the test can tell real from fake points
    grads = torch.autograd.grad(got, list(critic.net.parameters()), allow_unused=True)
    assert any(g is not None and float(g.abs().sum()) > 0 for g in grads)
    # in the loss: only the penalty's weight changes between these two, by 0.5 * 2 * R1
    diff = ns_critic_loss(critic, real, fake, types, 2.0).loss - ns_critic_loss(critic, real, fake, types, 0.0).loss
    assert float(diff.detach()) == pytest.approx(float(got.detach()), rel=1e-5)


@pytest.mark.parametrize("loss", ["wgan-gp", "ns-r1"])
def test_gan_loss_option_picks_the_losses_it_names(real_small, monkeypatch, loss):
    """Every critic and generator step of the adversarial phase uses the losses --gan-loss names
    (with --r1-weight for ns-r1, --gp-weight for wgan-gp), and never the other pair."""
    import torch

    from garage.gan import _train

    used = []

    def spy(name, fn):
        def wrapped(*args, **kwargs):
            used.append((name, args[4] if "critic" in name else None))
            return fn(*args, **kwargs)
        monkeypatch.setattr(_train, name, wrapped)

    spy("wgan_critic_loss", _train.wgan_critic_loss)
    spy("ns_critic_loss", _train.ns_critic_loss)
    spy("wgan_generator_loss", _train.wgan_generator_loss)
    spy("ns_generator_loss", _train.ns_generator_loss)
    m = GarageGAN.setup(real_small, GANConfig(**TINY, gan_loss=loss, r1_weight=0.7, gp_weight=9.0, seed=1))
    m.train(torch.device("cpu"))
    prefix = "ns" if loss == "ns-r1" else "wgan"
    n = TINY["gan_steps"]
    assert [u for u in used if "critic" in u[0]] == [(f"{prefix}_critic_loss",
                                                             0.7 if prefix == "ns" else 9.0)] * (n * GANConfig().n_critic)
    assert [u[0] for u in used if "generator" in u[0]] == [f"{prefix}_generator_loss"] * n
    cells = m.generate(30, seed=0)
    assert cells.n_obs == 30 and np.isfinite(cells.X.toarray()).all()
    with pytest.raises(GarageError, match="gan-loss"):
        GANConfig(gan_loss="hinge").validate()
    with pytest.raises(GarageError, match="r1-weight"):
        GANConfig(r1_weight=-1.0).validate()
    with pytest.raises(GarageError, match="lr_decay must be true or false, got 'false'"):
        GANConfig(lr_decay="false").validate()


@pytest.mark.parametrize("kw, want", [
    ({}, 2e-4),  # one default for every game (4e-4 in rounds 16-17 did not hold on fresh seeds)
    ({"space": "gene"}, 2e-4),
    ({"mode": "original"}, 2e-4),
    ({"gan_loss": "ns-r1"}, 2e-4),
    ({"lr_gan": None}, 2e-4),  # None, which meant "the game's default" in rounds 16-17, means the default
    ({"lr_gan": 1e-3}, 1e-3),  # an explicit rate wins everywhere
    ({"lr_gan": 1e-3, "mode": "original"}, 1e-3),
])
def test_adversarial_lr_reaches_both_optimisers_and_the_checkpoint_options(real_small, monkeypatch, kw, want):
    """The generator's and the critic's Adam both start at --lr-gan (2e-4 unless given), and a
    checkpoint's options record it."""
    import torch

    from garage.gan import _train

    assert GANConfig(**kw).lr_gan == want
    seen = {}
    init = _train.Trainer.__init__

    class Built(Exception):
        pass

    def keep(self, net, data, config, device, gen, ckpt_path, train_opts):
        init(self, net, data, config, device, gen, ckpt_path, train_opts)
        seen.update(g=self.opt_g.param_groups[0]["lr"], d=self.opt_d.param_groups[0]["lr"],
                    opts=train_opts["lr_gan"])
        raise Built  # the optimisers are all this test needs: no training

    monkeypatch.setattr(_train.Trainer, "__init__", keep)
    m = GarageGAN.setup(real_small, GANConfig(**{**TINY, **kw}, seed=0))
    with pytest.raises(Built):
        m.train(torch.device("cpu"))
    assert seen == {"g": want, "d": want, "opts": want}


def test_model_file_records_the_adversarial_lr_it_trained_with(trained_small):
    import torch

    assert trained_small["config"].lr_gan == 2e-4  # the test profile keeps the default
    payload = torch.load(trained_small["model"], weights_only=True)
    assert payload["config"]["lr_gan"] == 2e-4
    # the synthetic cells' own record of the run names the same rate (not None / "")
    syn = ad.read_h5ad(trained_small["h5ad"], backed="r")
    assert float(syn.uns["garage"]["gan"]["lr_gan"]) == 2e-4


@pytest.mark.parametrize("decay", [False, True])
@pytest.mark.parametrize("lr_gan, lr", [(1e-3, 1e-3), (None, 2e-4)])  # explicit, and None as the default
def test_lr_decay_is_linear_to_zero_over_the_adversarial_phase(real_small, monkeypatch, decay, lr_gan, lr):
    """--lr-decay: generator step t of T runs both adversarial optimisers at lr_gan * (1 - t / T);
    without it every step runs at lr_gan."""
    import torch

    seen = {"g": [], "d": []}
    m = GarageGAN.setup(real_small, GANConfig(**TINY, lr_decay=decay, lr_gan=lr_gan, seed=2))
    adam_step = torch.optim.Adam.step

    def spy(self, *args, **kwargs):  # the lr each optimiser step runs with, as it runs
        for key, opt in (("g", getattr(m, "_opt_g", None)), ("d", getattr(m, "_opt_d", None))):
            if self is opt:
                seen[key].append(self.param_groups[0]["lr"])
        return adam_step(self, *args, **kwargs)

    from garage.gan import _train

    init = _train.Trainer.__init__

    def keep(self, *args, **kwargs):
        init(self, *args, **kwargs)
        m._opt_g, m._opt_d = self.opt_g, self.opt_d

    monkeypatch.setattr(_train.Trainer, "__init__", keep)
    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    m.train(torch.device("cpu"))
    n, k = TINY["gan_steps"], GANConfig().n_critic
    want = [lr * (1 - t / n) if decay else lr for t in range(n)]
    assert seen["g"] == pytest.approx(want)
    assert seen["d"] == pytest.approx([lr for lr in want for _ in range(k)])  # every critic step of step t


@pytest.mark.parametrize("noise,loss", [(0.0, "wgan-gp"), (0.5, "wgan-gp"), (0.5, "ns-r1")])
def test_instance_noise_blurs_real_and_fake_codes_where_the_critic_sees_them(real_small, monkeypatch, noise, loss):
    """--instance-noise S: every critic step judges real and generated codes each plus fresh N(0, S^2)
    noise, the generator step judges its fakes blurred the same way, and the seed floor measures the
    unblurred fakes; at 0 the critic sees the codes themselves (the same tensors, no random draw)."""
    import torch

    from garage.gan import _train

    seen = {"real": [], "fake": [], "critic": [], "gen": [], "floor": []}
    real_fn, fake_fn, floor_fn = _train.Trainer._real, _train.Trainer._fake, _train.Trainer._seed_floor

    def real_spy(self, idx):
        out = real_fn(self, idx)
        seen["real"].append(out)
        return out

    def fake_spy(self, *args, **kwargs):
        out = fake_fn(self, *args, **kwargs)
        seen["fake"].append(out)
        return out

    def floor_spy(self, fake, *args):
        seen["floor"].append(fake)
        return floor_fn(self, fake, *args)

    def critic_spy(critic, real, fake, *args, **kwargs):
        seen["critic"].append((real, fake))
        return critic_fn(critic, real, fake, *args, **kwargs)

    def gen_spy(critic, fake, *args, **kwargs):
        seen["gen"].append(fake)
        return gen_fn(critic, fake, *args, **kwargs)

    prefix = "ns" if loss == "ns-r1" else "wgan"
    critic_fn, gen_fn = getattr(_train, f"{prefix}_critic_loss"), getattr(_train, f"{prefix}_generator_loss")
    monkeypatch.setattr(_train.Trainer, "_real", real_spy)
    monkeypatch.setattr(_train.Trainer, "_fake", fake_spy)
    monkeypatch.setattr(_train.Trainer, "_seed_floor", floor_spy)
    monkeypatch.setattr(_train, f"{prefix}_critic_loss", critic_spy)
    monkeypatch.setattr(_train, f"{prefix}_generator_loss", gen_spy)
    m = GarageGAN.setup(real_small, GANConfig(**{**TINY, "gan_steps": 20}, instance_noise=noise, gan_loss=loss,
                                              seed=3))
    m.train(torch.device("cpu"))
    n, k = 20, GANConfig().n_critic
    assert len(seen["critic"]) == n * k and len(seen["gen"]) == n and len(seen["floor"]) == n
    # the trainer's calls in order: per step k x (real, fake) for the critic, then one fake for the generator
    fakes = [f for f in seen["fake"] if f.shape[0] == seen["gen"][0].shape[0]]
    critic_fakes = [f for i, f in enumerate(fakes) if i % (k + 1) != k][: n * k]
    gen_fakes = [f for i, f in enumerate(fakes) if i % (k + 1) == k][:n]
    real_diff = torch.cat([c[0] - r for c, r in zip(seen["critic"], seen["real"][: n * k])])
    fake_diff = torch.cat([c[1] - f for c, f in zip(seen["critic"], critic_fakes)])
    gen_diff = torch.cat([g.detach() - f.detach() for g, f in zip(seen["gen"], gen_fakes)])
    for diff in (real_diff, fake_diff, gen_diff):
        if noise == 0:
            assert float(diff.abs().max()) == 0.0
        else:  # thousands of draws: sd within 5 % of S, mean near 0
            assert float(diff.std()) == pytest.approx(noise, rel=0.05)
            assert abs(float(diff.mean())) < 0.05
    assert all(fl is g for fl, g in zip(seen["floor"], gen_fakes))  # the floor sees the unblurred fakes
    if noise == 0:  # the very tensors: no draw was made
        assert all(c[0] is r for c, r in zip(seen["critic"], seen["real"][: n * k]))
        assert all(c[1] is f for c, f in zip(seen["critic"], critic_fakes))
        assert all(g is f for g, f in zip(seen["gen"], gen_fakes))
    else:  # real and fake get their own draws
        r, f = real_diff.flatten(), fake_diff.flatten()
        assert abs(float(torch.corrcoef(torch.stack([r, f]))[0, 1])) < 0.1
    with pytest.raises(GarageError, match="instance-noise"):
        GANConfig(instance_noise=3.0).validate()
    with pytest.raises(GarageError, match="instance-noise"):
        GANConfig(instance_noise=True).validate()


def test_critic_probe_records_every_check_and_leaves_training_unchanged(real_small):
    """bench.critic_probe reads the critic at every adversarial check with the trainer's random state
    saved and restored: the model trains to the same weights as without it, and each record's r_v is
    (D fit - D val) / (D fit - D fake)."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from bench.critic_probe import _probe_checks
    from garage._utils import set_seed
    from garage.gan import _train

    cfg = GANConfig(**{**TINY, "gan_steps": 12}, instance_noise=0.3, val_fraction=0.3, seed=4)
    set_seed(4)
    plain = GarageGAN.setup(real_small, cfg)
    plain.train(torch.device("cpu"))
    records: list = []
    orig, orig_batch = _probe_checks(records)
    try:
        set_seed(4)
        probed = GarageGAN.setup(real_small, cfg)
        probed.train(torch.device("cpu"))
    finally:
        _train.Trainer._gan_val, _train.Trainer._balanced_batch = orig, orig_batch
    assert _train.Trainer._gan_val is orig and _train.Trainer._balanced_batch is orig_batch
    assert len(records) == min(12, _train.N_CHECKS)
    assert all(np.isfinite([r["d_fit"], r["d_val"], r["d_fake"]]).all() and r["n"] > 0 for r in records)
    for a, b in zip(plain.net.generator.state_dict().values(), probed.net.generator.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(plain.net.critic.state_dict().values(), probed.net.critic.state_dict().values()):
        assert torch.equal(a, b)


def test_critic_probe_scores_type_matched_fit_and_validation_cells(real_small):
    """The probe's fit sample matches the validation cells' label and condition one for one (a
    validation cell of a group without fit cells is left out), and critic_means scores exactly those
    rows: with a critic that returns a code's first coordinate, D(fit) and D(val) are the means of
    that coordinate over the matched rows."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from bench.critic_probe import critic_means, matched_fit_rows, r_v, summarise
    from garage.gan._train import Trainer

    labels = np.array([0, 0, 1, 1, 2, 0, 1, 2, 3])
    conds = np.array([0, 1, 0, 0, 0, 0, 0, 0, 0])
    val, fit = matched_fit_rows(labels, conds, fit_rows=[0, 1, 2, 3, 4], val_rows=[5, 6, 7, 8], seed=0)
    assert val.tolist() == [5, 6, 7]  # row 8: type 3 has no fit cell
    assert (labels[val] == labels[fit]).all() and (conds[val] == conds[fit]).all()
    assert fit[0] == 0  # type 0 in condition 0: only row 0 (row 1 is condition 1)

    cfg = GANConfig(**TINY, val_fraction=0.3, seed=5)
    m = GarageGAN.setup(real_small, cfg)
    m.train(torch.device("cpu"))
    t = Trainer(m.net, m.data, cfg, torch.device("cpu"), torch.Generator().manual_seed(0), None, {})
    t._set_labels()

    class First(torch.nn.Module):
        path_input = False

        def forward(self, x, types, conds=None, path=None):
            return x[:, 0]

    m.net.critic = First()
    got = critic_means(t)
    v, f = matched_fit_rows(t._labels.numpy(), t._conds.numpy(), m.data.fit_rows, m.data.val_rows, 5)
    codes = m.data.codes[:, 0]
    assert got["n"] == len(v) > 0
    assert got["d_val"] == pytest.approx(float(codes[torch.from_numpy(v)].mean()), rel=1e-5)
    assert got["d_fit"] == pytest.approx(float(codes[torch.from_numpy(f)].mean()), rel=1e-5)
    # r_v over a window: the ratio of mean outputs, nan when the critic does not rank fit above fake
    recs = [{"d_fit": 1.0, "d_val": 0.5, "d_fake": 0.0}, {"d_fit": 3.0, "d_val": 2.5, "d_fake": 2.9}]
    assert summarise(recs)["r_v"] == pytest.approx(r_v(3.0, 2.5, 2.9)) == pytest.approx(5.0)
    assert summarise(recs * 3)["r_v"] == pytest.approx((2.0 - 1.5) / (2.0 - 1.45))
    assert np.isnan(r_v(1.0, 0.5, 1.2))


def test_critic_probe_holdout_keeps_cells_from_the_critic_and_splits_r_v(real_small):
    """--critic-holdout: the held fit cells (a share of every group, rounded down) never appear in an
    adversarial real batch, every check scores them, and r_mem + r_enc = r_v."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from bench.critic_probe import _probe_checks, critic_holdout_rows, summarise
    from garage.gan import _train

    labels = np.array([0] * 10 + [1] * 4 + [2] * 25)
    conds = np.zeros(len(labels), dtype=int)
    held = critic_holdout_rows(labels, conds, np.arange(len(labels)), 0.2, seed=0)
    assert np.bincount(labels[held], minlength=3).tolist() == [2, 0, 5]

    drawn = []
    batch = _train.Trainer._balanced_batch

    def spy(self, balance):
        out = batch(self, balance)
        drawn.append(out.clone())
        return out

    records: list = []
    _train.Trainer._balanced_batch = spy  # under the probe's own patch: sees what the probe hands out
    try:
        orig, orig_batch = _probe_checks(records, held_fraction=0.3)
        m = GarageGAN.setup(real_small, GANConfig(**{**TINY, "gan_steps": 12}, val_fraction=0.3, seed=6))
        m.train(torch.device("cpu"))
        t_labels = (m.data.labels if m.data.labels is not None else m.data.types).numpy()
        want = critic_holdout_rows(t_labels, m.data.conds.numpy(), m.data.fit_rows, 0.3, 6)
    finally:
        _train.Trainer._gan_val, _train.Trainer._balanced_batch = orig, batch
    # the probe's first call only sets up the weights over all fit rows (its draw is discarded)
    assert len(want) > 0 and len(drawn) == 12 * GANConfig().n_critic + 1
    assert np.isin(drawn[0].numpy(), want).any()  # the test can see a held cell when one is drawn
    assert not np.isin(torch.cat(drawn[1:]).numpy(), want).any()
    assert all("d_held" in r for r in records)
    s = summarise(records)
    if np.isfinite(s["r_v"]):
        assert s["r_mem"] + s["r_enc"] == pytest.approx(s["r_v"])


# --------------------------------------------------------------------------- --critic-pack
@pytest.mark.parametrize("fixture", ["seeds_small", "mix_seeds"])
def test_packed_batches_hold_one_label_and_condition_per_pack(fixture, request, caplog):
    """--critic-pack P: a drawn adversarial batch of B cells becomes B // P anchors, each followed by
    P - 1 other fit cells of its own label and condition (never the anchor itself when its group has
    another fit cell; a one-cell group repeats its cell), so the critic can read each pack under one
    label. On sc_mixology's subset (two protocols) a label's cells span both conditions, so grouping
    by label alone would mix them; groups with fewer than P fit cells are warned about."""
    import torch

    from garage.gan._train import Trainer

    data = ad.read_h5ad(request.getfixturevalue(fixture))
    cfg = GANConfig(**TINY, critic_pack=3)
    model = GarageGAN.setup(data, cfg)
    t = Trainer(model.net, model.data, cfg, torch.device("cpu"), torch.Generator().manual_seed(1), None, {})
    fit = set(model.data.fit_rows.tolist())
    labels, conds = t._labels.cpu().numpy(), model.data.conds.numpy()
    key = labels * model.data.n_conds + conds
    sizes = np.bincount(key[model.data.fit_rows])
    if fixture == "mix_seeds":  # the condition half of the key is exercised
        fr = model.data.fit_rows
        assert model.data.n_conds > 1
        assert any(len(set(conds[fr][labels[fr] == lab])) > 1 for lab in set(labels[fr]))
    n_small = int(((sizes > 0) & (sizes < 3)).sum())
    n_other = 0
    with caplog.at_level("WARNING"):
        for _ in range(20):
            idx = t._balanced_batch(cfg.type_balance)
            out = t._packed_rows(idx, 3)
            assert len(out) == 3 * (len(idx) // 3) and len(out) >= len(idx) - 2
            packs = out.view(-1, 3).numpy()
            assert (packs[:, 0] == idx[: len(packs)].numpy()).all()  # the anchors, in their drawn order
            assert set(out.tolist()) <= fit
            assert (key[packs] == key[packs[:, :1]]).all()  # one label and condition per pack
            for pk in packs:
                if sizes[key[pk[0]]] >= 3:
                    assert len(set(pk)) == 3  # drawn without replacement
                    n_other += 1
                elif sizes[key[pk[0]]] == 2:
                    assert pk[0] not in pk[1:]
                else:
                    assert (pk == pk[0]).all()  # a one-cell group: its cell, repeated
    assert n_other > 0 and len(set(key[model.data.fit_rows])) > 2  # the checks above covered several groups
    assert ("fewer than 3 fit cells" in caplog.text) == (n_small > 0)
    # groups too small for a pack (neither fixture has one): relabel one fit cell alone and two together
    caplog.clear()
    fr = model.data.fit_rows
    t2 = Trainer(model.net, model.data, cfg, torch.device("cpu"), torch.Generator().manual_seed(2), None, {})
    t2._labels = t._labels.clone()
    lone, a, b = (int(r) for r in fr[:3])
    top = int(t2._labels.max())
    t2._labels[lone], t2._labels[a], t2._labels[b] = top + 1, top + 2, top + 2
    with caplog.at_level("WARNING"):
        for _ in range(5):
            out = t2._packed_rows(torch.tensor([lone, a, *(int(r) for r in fr[3:7])]), 3).view(-1, 3).tolist()
            assert out[0] == [lone] * 3  # one cell, three times
            assert out[1][0] == a and out[1][1:] == [b, b]  # the only other cell, twice
    assert "--critic-pack 3: 2 label x condition group(s) with 3 fit cell(s) in all" in caplog.text
    assert caplog.text.count("--critic-pack 3:") == 1  # warned once


def test_the_gradient_penalty_mixes_each_pack_with_one_weight():
    """Each interpolate x_hat = eps * real + (1 - eps) * fake takes one eps per pack (the same for
    both cells and every dimension of a pack), and different packs draw different eps."""
    import torch

    from garage.gan._module import gradient_penalty

    seen = []

    class Spy(torch.nn.Module):
        pack = 2

        def packed(self, g):
            return g.reshape(g.shape[0] // 2, -1)

        def forward(self, x, types, conds=None, path=None):
            seen.append(x.detach().clone())
            return self.packed(x).sum(1)

    torch.manual_seed(3)
    real, fake = torch.randn(12, 5), torch.randn(12, 5)
    gradient_penalty(Spy(), real, fake, torch.zeros(12, dtype=torch.long))
    eps = ((seen[0] - fake) / (real - fake)).view(6, 2 * 5)
    assert torch.allclose(eps, eps[:, :1].expand_as(eps), atol=1e-5)
    assert eps[:, 0].unique().numel() == 6


def test_a_packed_critic_scores_packs_and_penalises_the_pack_gradient():
    """One score per pack, its label read from the pack's first row; the gradient penalty draws one
    mixing weight per pack and takes the norm over the whole pack (a linear critic with weight w on
    each of P cells has gradient norm sqrt(P) * |w|), and the R1 penalty likewise."""
    import torch

    from garage.gan._module import ConditionalCritic, gradient_penalty, r1_penalty

    torch.manual_seed(0)
    c = ConditionalCritic(4, 3, 8, 16, n_conds=2, pack=2, path_input=True)
    x = torch.randn(10, 4)
    types = torch.tensor([0, 0, 1, 1, 2, 2, 0, 0, 1, 1])
    conds = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1, 0, 0])
    assert c(x, types, conds).shape == (5,)
    assert c.net[0].in_features == 2 * (4 + 1) + 2 * 8
    with pytest.raises(ValueError, match="multiple of 2 rows"):
        c(x[:9], types[:9], conds[:9])
    # swapping the two cells of a pack changes the input (the critic sees them side by side)
    swapped = x.view(5, 2, 4).flip(1).reshape(10, 4)
    assert not torch.allclose(c(x, types, conds), c(swapped, types, conds))

    class Linear(torch.nn.Module):  # f(pack) = sum of w . x over its cells
        pack = 2

        def __init__(self, w):
            super().__init__()
            self.w = w

        def packed(self, g):
            return g.reshape(g.shape[0] // 2, -1)

        def forward(self, x, types, conds=None, path=None):
            return self.packed(x @ self.w.view(-1, 1)).sum(1)

    w = torch.tensor([0.6, 0.8, 0.0, 0.0])  # |w| = 1: one cell's norm 1, a pack's sqrt(2)
    lin = Linear(w)
    gp = gradient_penalty(lin, x, torch.randn(10, 4), types)
    assert gp.item() == pytest.approx((2 ** 0.5 - 1) ** 2, rel=1e-5)
    assert r1_penalty(lin, x, types).item() == pytest.approx(2.0, rel=1e-5)


def test_critic_pack_is_checked_and_applies_to_the_latent_garage_game_only(real_small, caplog):
    import torch

    for bad in (0, 9, True, 2.0):
        with pytest.raises(GarageError, match="--critic-pack must be an integer in"):
            GANConfig(**TINY, critic_pack=bad).validate()
    with pytest.raises(GarageError, match="larger than the adversarial batch"):
        GANConfig(**TINY, critic_pack=8, gan_batch_size=4).validate()
    # where the option is ignored (gene space), so is its size against the batch
    GANConfig(**TINY, critic_pack=8, gan_batch_size=4, space="gene", count_dist="poisson").validate()
    cfg = GANConfig(**TINY, critic_pack=2, space="gene", count_dist="poisson")
    model = GarageGAN.setup(real_small, cfg)
    assert model.net.critic.pack == 1
    with caplog.at_level("WARNING"):
        model.train(torch.device("cpu"))
    assert "--critic-pack applies to --space latent" in caplog.text


def test_critic_pack_trains_on_packs_of_one_label(real_small, monkeypatch):
    """A latent garage run with --critic-pack 2: every critic and generator loss is computed on batches
    whose consecutive pairs share type and condition, the critic takes two codes per input, and the run
    generates cells of the requested types."""
    import torch

    from garage.gan import _train

    seen = []
    critic_fn, gen_fn = _train.wgan_critic_loss, _train.wgan_generator_loss

    def critic_spy(critic, real, fake, types, *args, **kwargs):
        seen.append(("critic", types.clone(), real.shape[0]))
        return critic_fn(critic, real, fake, types, *args, **kwargs)

    def gen_spy(critic, fake, types, *args, **kwargs):
        seen.append(("gen", types.clone(), fake.shape[0]))
        return gen_fn(critic, fake, types, *args, **kwargs)

    monkeypatch.setattr(_train, "wgan_critic_loss", critic_spy)
    monkeypatch.setattr(_train, "wgan_generator_loss", gen_spy)
    cfg = GANConfig(**TINY, critic_pack=2)
    model = GarageGAN.setup(real_small, cfg)
    model.train(torch.device("cpu"))
    assert model.net.critic.net[0].in_features == 2 * model.net.code_dim + cfg.type_emb_dim
    assert {k for k, *_ in seen} == {"critic", "gen"}
    assert len(seen) == TINY["gan_steps"] * (cfg.n_critic + 1)
    for _, types, n in seen:
        assert n == 2 * (min(cfg.adversarial_batch_size, len(model.data.fit_rows)) // 2)
        assert (types.view(-1, 2)[:, 0] == types.view(-1, 2)[:, 1]).all()
        assert len(set(types.tolist())) > 1
    syn = model.generate(200, seed=0)
    assert syn.n_obs == 200 and np.isfinite(syn.X.sum())


def test_diagnose_gan_latent_only_stops_before_decoding(seeds_small, tmp_path, monkeypatch):
    """bench.diagnose_gan --latent-only: the latent rows and both spreads (generated / holdout and the
    train cells' own / holdout) per type, and nothing decoded or evaluated."""
    import json

    from bench import diagnose_gan

    def never(*a, **k):
        raise AssertionError("evaluated")

    monkeypatch.setattr("garage.evaluate.evaluate_adata", never)  # main imports it when it runs
    tiny = {k: v for k, v in TINY.items() if k != "checkpoint_every"}
    out = tmp_path / "diag.json"
    assert diagnose_gan.main(["--seeds-from", str(seeds_small), "--gan", json.dumps(tiny), "--threads", "1",
                              "--latent-only", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert set(doc) == {"latent", "spread", "spread_train", "shape"}
    whats = [r["what"] for r in doc["latent"]]
    assert "latent: train vs holdout codes (control)" in whats and "latent: generated vs holdout codes" in whats
    labels = set(ad.read_h5ad(seeds_small).obs[C.OBS_LABEL].astype(str))
    assert doc["spread_train"] and set(doc["spread_train"]) <= labels and set(doc["spread"]) <= labels
    assert all(np.isfinite(v) and v > 0 for v in doc["spread_train"].values())
    assert doc["spread_train"] != doc["spread"]  # the train cells' own codes, not the generated ones
    assert doc["shape"] and set(doc["shape"]) <= labels
    counts = ad.read_h5ad(seeds_small).obs.query(f"{C.OBS_SPLIT} == '{C.SPLIT_TRAIN}'")[C.OBS_LABEL].astype(str)
    assert all(r["n_train"] == int((counts == t).sum()) for t, r in doc["shape"].items())


def test_diagnose_code_shape_sees_a_lost_skew_and_a_depth_axis():
    """bench.diagnose_gan.code_shape: a skewed type whose generated codes are symmetric shows the
    skew on the train side only (sign set by the train codes), and a log size that is linear in
    the code gives R^2 near 1 with the generated codes' predicted sizes from their own spread."""
    from bench.diagnose_gan import code_shape

    rng = np.random.default_rng(0)
    n = 3000
    axis = -rng.gamma(1.5, 1.0, n)  # a long tail to the negative side: skew < 0 before orienting
    tz = np.c_[axis, 0.1 * rng.normal(size=n)]
    gz = np.c_[rng.normal(axis.mean(), axis.std(), n), 0.1 * rng.normal(size=n)]
    loglib = 7.0 + 0.5 * tz[:, 0]
    out = code_shape(tz, np.zeros(n, int), loglib, gz, np.zeros(n, int), ["A"])
    r = out["A"]
    assert r["skew_train"] > 1.2 and abs(r["skew_generated"]) < 0.2
    assert r["r2_loglib"] > 0.99
    assert abs(r["loglib_p50_train"] - np.median(loglib)) < 0.01
    assert r["loglib_p50_generated"] < r["loglib_p50_train"]  # the symmetric codes' median sits lower
    assert code_shape(tz[:10], np.zeros(10, int), loglib[:10], gz, np.zeros(n, int), ["A"]) == {}
    # 16 code dimensions and 40 cells, no relation: the in-sample R^2 is large, the adjusted one is not
    z16 = rng.normal(size=(40, 16))
    noise = code_shape(z16, np.zeros(40, int), rng.normal(size=40), rng.normal(size=(40, 16)), np.zeros(40, int),
                       ["A"])["A"]
    assert noise["n_train"] == 40 and noise["r2_loglib"] > 0.2 and noise["r2_loglib_adj"] < 0.15


def test_critic_probe_refuses_a_packed_critic_before_training(tmp_path, monkeypatch):
    """bench.critic_probe scores single cells; with --critic-pack > 1 it stops before any training."""
    from argparse import Namespace

    from bench import critic_probe

    def never(*a, **k):
        raise AssertionError("trained")

    monkeypatch.setattr(critic_probe, "train_in_process", never)
    args = Namespace(gan='{"critic_pack": 2}', seeds_from=str(tmp_path / "x.seeds.h5ad"), seed=0, threads=1,
                     critic_holdout=0.0)
    with pytest.raises(SystemExit, match="judges packs"):
        critic_probe.run(args)


def test_bench_generated_codes_draw_as_generation_does(real_small):
    """bench._common.generated_codes (shared by the probes): one code per requested cell, seeded with
    about the seed mix where the type has seeds, the same codes from the same generator state, and
    the same codes as the generator called by hand in the order the probes used (state, seed, noise)."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from bench._common import generated_codes
    from garage.gan._train import pick_seeds

    model = GarageGAN.setup(real_small, GANConfig(**TINY, seed=0))
    model.train("cpu")
    model.net.eval()
    d = model.data
    z, mask = generated_codes(model, d.types, d.conds, torch.Generator().manual_seed(5))
    assert z.shape == (d.n, model.config.n_latent) and mask.shape == (d.n,)
    z2, mask2 = generated_codes(model, d.types, d.conds, torch.Generator().manual_seed(5))
    assert np.array_equal(z, z2) and np.array_equal(mask, mask2)
    assert abs(mask.mean() - model.config.seed_mix) < 0.1
    gen = torch.Generator().manual_seed(5)  # by hand: no states, so the labels are the types
    m, pos = pick_seeds(d, d.types, d.conds, model.config.seed_mix, gen)
    with torch.no_grad():
        want = model.net.generator_ema(torch.randn(d.n, model.config.noise_dim, generator=gen), d.types, None,
                                       d.seed_codes[pos], m).numpy()
    assert np.allclose(z, want) and np.array_equal(mask, m.numpy())
    # with within-type states the state is drawn first, then the seed (of that state), then the noise
    from garage.gan._train import draw_labels, state_probs

    st = GarageGAN.setup(real_small, GANConfig(**TINY, type_states=2, state_min_cells=40, seed=0))
    st.train("cpu")
    st.net.eval()
    e = st.data
    assert e.k_states == 2
    z, mask = generated_codes(st, e.types, e.conds, torch.Generator().manual_seed(6))
    gen = torch.Generator().manual_seed(6)
    lab = draw_labels(e.types, e.conds, state_probs(e.state_counts, 2, e.n_conds), 2, e.n_conds, gen)
    m, pos = pick_seeds(e, lab, e.conds, st.config.seed_mix, gen)
    with torch.no_grad():
        want = st.net.generator_ema(torch.randn(e.n, st.config.noise_dim, generator=gen), lab, None,
                                    e.seed_codes[pos], m).numpy()
    assert np.allclose(z, want) and np.array_equal(mask, m.numpy())


def test_depth_table_draws_follow_the_group_quantiles():
    """--library depth: a big group's table is the smoothed quantiles of its sizes (no stored value
    is one of them), its draws reproduce the table (uniform levels, linear in between, half a level
    beyond both ends) and keep the skew; a small group gets its log-normal's quantiles."""
    import torch
    from scipy.stats import norm, skew

    from garage.gan._train import DEPTH_LEVELS, DEPTH_MIN_CELLS, depth_quantiles, sample_depth

    rng = np.random.default_rng(0)
    big = rng.gamma(2.0, 1.0, 4000) + 5.0  # skewed, as real log sizes often are inside a type
    edge = np.round(rng.gamma(2.0, 1.0, DEPTH_MIN_CELLS) + 5.0, 1)  # the smallest group with a table of its own
    small = rng.normal(3.0, 0.2, DEPTH_MIN_CELLS - 1)
    loglib = np.concatenate([big, edge, small])
    groups = np.repeat([0, 1, 2], [len(big), len(edge), len(small)])
    params = np.asarray([[6.0, 1.0], [6.0, 1.0], [3.1, 0.4]])
    table = depth_quantiles(loglib, groups, params)
    assert table.shape == (3, DEPTH_LEVELS)
    lev = (np.arange(DEPTH_LEVELS) + 0.5) / DEPTH_LEVELS
    emp = np.quantile(big, lev)
    # smoothed: close to the empirical quantiles inside, a little wider at the ends (the kernel)
    assert np.allclose(table[0][2:-2], emp[2:-2], atol=0.15) and np.allclose(table[0], emp, atol=0.3)
    assert not np.allclose(table[0], emp, atol=1e-3) and table[0][0] < emp[0]
    assert np.allclose(table[2], 3.1 + 0.4 * norm.ppf(lev), atol=1e-5)  # its log-normal for the small one
    # sizes on a 0.1 grid, so an unsmoothed quantile would hit them: no stored value is one of them
    assert not np.isin(np.round(table[1], 4), np.round(edge, 4)).any()
    assert np.all(np.diff(table[0]) > 0)
    # a tight bulk beside a few far cells: the end levels must not sit on those cells' sizes
    from garage.gan._train import DEPTH_MIN_BANDWIDTH, smoothed_quantiles
    far = np.array([312, 587, 801, 1102, 1333, 1460])
    sizes = np.log(np.concatenate([np.full(74, 2000), np.arange(1992, 2000).repeat(3)[:20], far]))
    q = smoothed_quantiles(sizes, lev)
    assert np.abs(q[:, None] - np.log(far)[None, :]).min() > 0.2 * DEPTH_MIN_BANDWIDTH
    same = smoothed_quantiles(np.full(150, np.log(3187.0)), lev)  # all equal: still a spread of 5 %
    assert same[-1] - same[0] > 2 * DEPTH_MIN_BANDWIDTH
    g = torch.zeros(50000, dtype=torch.long)
    d = sample_depth(torch.from_numpy(table), g, torch.Generator().manual_seed(0)).numpy()
    assert np.allclose(np.quantile(d, lev[1:-1]), table[0, 1:-1], atol=0.05)
    assert skew(d) > 1.0 and abs(skew(d) - skew(big)) < 0.5  # a log-normal draw would have none
    top, bottom = 0.5 * (table[0, -1] - table[0, -2]), 0.5 * (table[0, 1] - table[0, 0])
    assert table[0, -1] < d.max() <= table[0, -1] + top + 1e-5
    assert table[0, 0] - bottom - 1e-5 <= d.min() < table[0, 0]


def test_depth_library_refuses_what_it_cannot_pair():
    for bad in ({"type_states": 2}, {"calibrate": "mean"}):
        with pytest.raises(GarageError, match="--library depth does not combine"):
            GANConfig(library="depth", **bad).validate()


def test_depth_library_conditions_the_generator_and_sizes_the_cells(seeds_small, tmp_path, monkeypatch):
    """A --library depth model: in training the critic sees each real cell's own depth beside its
    code and the fake paired with it gets the same depth; the generator's output depends on the
    depth; the cells' sizes are the table's (a table set to one size gives cells of that size); the
    saved model generates the run's own cells; a shareable model pools the small groups' tables."""
    import torch

    import garage.gan._train as gt
    from garage.gan._model import LIB_SHARE_MIN_GROUP

    seen = []
    orig = gt.wgan_critic_loss

    def spy(critic, real, fake, types, *a, **k):
        seen.append((real.detach().clone(), fake.detach().clone()))
        return orig(critic, real, fake, types, *a, **k)

    monkeypatch.setattr(gt, "wgan_critic_loss", spy)
    cfg = GANConfig(**TINY, library="depth", n_cells=400, critic_path="off")
    inproc = GarageGAN.setup(ad.read_h5ad(seeds_small), cfg)
    inproc.train("cpu")
    assert seen and all(r.shape[1] == cfg.n_latent + 1 for r, _ in seen)
    d = inproc.data
    own = gt.depth_feature(d.loglib.float(), inproc.meta["depth_mean"], inproc.meta["depth_sd"]).squeeze(1)
    for real, fake in seen[-3:]:  # the adversarial phase's last batches (the codes are final then)
        idx = torch.cdist(real[:, :-1], d.codes).argmin(1)  # which train cell each real row is
        assert torch.allclose(real[:, :-1], d.codes[idx])
        assert torch.allclose(real[:, -1], own[idx])  # each real cell with its own depth
        assert torch.equal(real[:, -1], fake[:, -1])  # and the fake paired with it gets the same
    assert len(set(np.round(own.numpy(), 5).tolist())) > 50
    seen.clear()
    res = run_gan(seeds_small, tmp_path / "d", "d", cfg)
    syn = ad.read_h5ad(res["h5ad"])
    assert syn.uns[C.UNS_KEY]["library"] == "depth"
    model = GarageGAN.load(res["model"])
    assert model.net.generator.extra_dim == 1
    assert model.net.critic.net[0].in_features == cfg.n_latent + 1 + cfg.type_emb_dim
    n = 8
    args = (torch.zeros(n, cfg.noise_dim), torch.zeros(n, dtype=torch.long), None, None, torch.zeros(n))
    with pytest.raises(ValueError, match="extra input"):
        model.net.generator(*args)
    lo = model.net.generator(*args, extra=torch.full((n, 1), -2.0))
    hi = model.net.generator(*args, extra=torch.full((n, 1), 2.0))
    assert not torch.allclose(lo, hi)
    # the sizes are the table's: one type's table set to log(500) gives its cells about 500 counts
    k = int(np.argmax(model.meta["group_counts"]))
    model.meta["depth_q"] = model.meta["depth_q"].clone()
    model.meta["depth_q"][k] = float(np.log(500.0))
    out = model.generate(n_cells=400, seed=0)
    m = (out.obs[C.OBS_CELL_TYPE].astype(str) == model.meta["categories"][k]).to_numpy()
    tot = np.asarray(out.layers["counts"][m].sum(1)).ravel()
    assert m.sum() >= 30 and abs(np.median(tot) / 500 - 1) < 0.1
    others = np.asarray(out.layers["counts"][~m].sum(1)).ravel()
    assert abs(np.median(others) / 500 - 1) > 0.2  # the other types keep their own tables
    again = ad.read_h5ad(run_generate(res["model"], tmp_path / "g", "g", n_cells=400, seed=0)["h5ad"])
    assert (again.X != syn.X).nnz == 0
    shared = run_gan(seeds_small, tmp_path / "s", "s", cfg, shareable_model=True)
    p2 = torch.load(shared["model"], weights_only=True)
    small = torch.from_numpy(np.asarray(p2["group_counts"]) < LIB_SHARE_MIN_GROUP)
    assert small.any()
    from scipy.stats import norm

    from garage.gan._train import DEPTH_LEVELS
    lev = torch.from_numpy(norm.ppf((np.arange(DEPTH_LEVELS) + 0.5) / DEPTH_LEVELS).astype(np.float32))
    pooled = p2["lib_params"][small]  # the shareable model's pooled (mean, sd) for small groups
    assert torch.allclose(p2["depth_q"][small], pooled[:, :1] + pooled[:, 1:] * lev, atol=1e-5)
    full = torch.load(res["model"], weights_only=True)["depth_q"]
    assert not torch.allclose(full[small], p2["depth_q"][small])  # the small group's own table is not shared
    assert torch.equal(full[~small], p2["depth_q"][~small])  # the others keep theirs
    mine = ad.read_h5ad(shared["h5ad"])
    regen = ad.read_h5ad(run_generate(shared["model"], tmp_path / "sg", "sg", n_cells=400, seed=0)["h5ad"])
    assert (regen.X != mine.X).nnz == 0


def test_bench_generated_codes_of_a_depth_model_draw_the_depth_after_the_noise(real_small):
    """bench._common.generated_codes on a --library depth model: the generator gets a depth drawn from
    the model's tables after the noise (a default model draws none, so its codes are unchanged)."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from bench._common import depth_input, generated_codes
    from garage.gan._train import pick_seeds, sample_depth

    model = GarageGAN.setup(real_small, GANConfig(**TINY, library="depth", seed=0))
    model.train("cpu")
    model.net.eval()
    d = model.data
    z, mask = generated_codes(model, d.types, d.conds, torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)
    m, pos = pick_seeds(d, d.types, d.conds, model.config.seed_mix, gen)
    noise = torch.randn(d.n, model.config.noise_dim, generator=gen)
    logd = sample_depth(model.meta["depth_q"], d.types, gen)
    dep = ((logd - model.meta["depth_mean"]) / model.meta["depth_sd"]).unsqueeze(1)
    with torch.no_grad():
        want = model.net.generator_ema(noise, d.types, None, d.seed_codes[pos], m, dep).numpy()
        other = model.net.generator_ema(noise, d.types, None, d.seed_codes[pos], m, dep + 1.0).numpy()
    assert np.allclose(z, want) and not np.allclose(z, other)
    plain = GarageGAN.setup(real_small, GANConfig(**TINY, seed=0))
    g = torch.Generator().manual_seed(1)
    assert depth_input(plain, d.types, d.conds, g) is None
    assert torch.equal(g.get_state(), torch.Generator().manual_seed(1).get_state())  # nothing drawn


def test_vae_ceiling_rows_carry_per_type_c2st(real_small):
    """bench.vae_ceiling: each decoded row (train means at own sizes, the model's own cells with
    "full") carries its per-type C2ST beside its control, for types of the holdout only."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from bench.vae_ceiling import ceiling

    tiny = {k: v for k, v in TINY.items() if k != "checkpoint_every"}
    out = ceiling(real_small, {**tiny, "full": True}, seed=0, draws=1)
    labels = set(real_small.obs[C.OBS_LABEL].astype(str))
    for row in ("means", "generated"):
        pt = out[row]["per_type_c2st"]
        assert pt and set(pt) <= labels
        assert all(0 <= a <= 1 and 0 <= b <= 1 for a, b in pt.values())
    # both rows share the real-vs-real control (same holdout); a tiny model's cells are all separable
    for row in ("means_groupsd", "means_grouplib"):  # the train means at the two refitted size models
        assert out[row]["per_type_c2st"] and 0 <= out[f"{row}_r2"] <= 1
    m, g = out["means"]["per_type_c2st"], out["generated"]["per_type_c2st"]
    assert all(m[t][1] == g[t][1] for t in set(m) & set(g))
    assert all(a > b for a, b in g.values() if b < 0.9)


def test_group_library_refit_follows_each_groups_own_slope():
    """bench.diagnose_gan.fit_group_library: two groups whose log size moves with the code in
    opposite directions defeat one shared vector (fit_cond_library) and not one vector per group;
    a group of a few cells is pulled to the shared vector."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from bench.diagnose_gan import fit_cond_library, fit_group_library

    g = torch.Generator().manual_seed(0)
    n = 600
    z = torch.randn(2 * n + 4, 3, generator=g)
    groups = torch.cat([torch.zeros(n), torch.ones(n), torch.full((4,), 2)]).long()
    slope = torch.tensor([1.0, -1.0, 1.0])[groups]
    y = 6.0 + slope * z[:, 0] + 0.1 * torch.randn(len(z), generator=g)
    shared, r2_shared = fit_cond_library(z, y, groups)
    own, r2_own = fit_group_library(z, y, groups)
    assert r2_shared < 0.1 and r2_own > 0.95
    probe = torch.zeros(4, 3)
    probe[:, 0] = torch.tensor([2.0, 2.0, -2.0, -2.0])
    pg = torch.tensor([0, 1, 0, 1])
    sizes = torch.stack([own(probe, pg, torch.Generator().manual_seed(i)) for i in range(200)]).log().mean(0)
    assert torch.allclose(sizes, torch.tensor([8.0, 4.0, 4.0, 8.0], dtype=sizes.dtype), atol=0.1)
    logs = torch.stack([own(probe[:1], torch.tensor([0]), torch.Generator().manual_seed(i)) for i in range(400)]).log()
    # the group's residual sd (0.1) pooled with the shared fit's (about 1) over 20 pseudo-cells of 620:
    # sqrt((600 * 0.01 + 20 * 1) / 620) = 0.2, far from the shared 1
    assert 0.15 < float(logs.std()) < 0.26
    two = torch.tensor([2, 2])
    s2 = torch.stack([own(probe[:2] * torch.tensor([[1.0], [-1.0]]), two, torch.Generator().manual_seed(i))
                      for i in range(200)]).log().mean(0)
    assert 0 <= float(s2[0] - s2[1]) < 2.0  # its own slope (+1) would give 4; the shared one about 0
