"""AnnData-facing GAN model: setup from a seeds AnnData, train, save, load, generate.

What leaves this module, and how private it is
----------------------------------------------
- ``PREFIX.synthetic.h5ad`` (shareable): synthetic counts with their type (and
  condition) and the input's gene metadata.  Cell names are new
  (``{sample}-syn{seed}-{i}``); no real cell name, seed identity or training
  cell's library size is in it (library sizes are generated, see ``library``).
- ``PREFIX.provenance.tsv`` (PRIVATE): which seed cell each synthetic cell
  came from.  Written only when asked for, and marked private in its header.
- ``PREFIX.generator.pt`` (SENSITIVE by default): the generator, the VAE
  *decoder* (no encoder, no critic), the seeds' latent codes and names, and a
  16-byte BLAKE2 digest per training cell so ``garage generate`` can refuse
  exact copies.  The seeds' codes decode to denoised profiles of real training
  cells and the digests answer "was this exact cell in training?", so treat
  this file like the data.  ``save(..., shareable=True)`` (``garage gan
  --shareable-model``) writes a model without seed codes, seed names or
  digests, which can only generate unseeded cells.  Its library-size model
  gives every type x condition group of fewer than ``LIB_SHARE_MIN_GROUP`` train
  cells the pooled (all cells') log-normal: a small group's own parameters and
  its cell count invert the shrinkage of :func:`_library_model` to the group's
  exact mean log library size (for a singleton type, the cell's library size).
  It keeps ``group_counts`` (generation's composition needs them) and drops the
  redundant ``train_type_counts``.
- ``mode='original'`` feeds real seed profiles to its generator, so its model
  holds the seeds' log-normalised HVG profiles.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import fields
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from torch import nn

from .. import __version__
from .. import constants as C
from .._meta import condition_key_of, label_key_of, rare_types_of
from .._norm import log_normalize
from .._utils import budget_left_bytes, versions
from ..baselines import _row_hashes, count_table, synthetic_anndata, synthetic_obs
from ..errors import GarageError, ResourceError
from ._config import GROUP_SEP, PRE_LOSS_VALUES, GANConfig, parse_cells_per_group, parse_cells_per_type
from ._module import (
    ConditionalCritic,
    ConditionalGenerator,
    CountVAE,
    OriginalDiscriminator,
    OriginalGenerator,
)
from ._nn import sample_counts
from ._train import (TrainData, Trainer, depth_feature, depth_quantiles, depth_standardiser, draw_labels,
                     lognormal_quantiles, pick_seeds, sample_depth, sample_library, sample_library_conditional,
                     state_probs)

logger = logging.getLogger(__name__)

MODEL_FORMAT = "garage-generator/2"
GEN_CHUNK = 4096
#: state-dict prefixes that never leave the training process (critic, encoder)
PRIVATE_PREFIXES = ("critic.", "vae.encoder.", "vae.z_mean.", "vae.z_logvar.")
#: GANConfig options added after MODEL_FORMAT was fixed, with the value a model saved before them
#: was trained with (``load`` fills them in when the saved config lacks them)
PRE_OPTION_VALUES = {"decoder_dropout": 0.0, "calibrate": "none", "critic_path": "off", **PRE_LOSS_VALUES}
#: meta entries that identify training cells; a shareable model drops them
SENSITIVE_META = ("seed_codes", "seed_names", "train_hashes")
#: preprocess's own var columns (the rest of var is the input's gene metadata, kept in outputs)
_PREPROCESS_VAR = {"n_cells", "highly_variable", "highly_variable_rank", "means", "variances",
                   "variances_norm", "mean", "std", "dispersions", "dispersions_norm"}
#: library-size model: a group's log-normal is shrunk towards its type's (and a type's towards
#: all cells') with this many pseudo-cells, so a group of a few cells does not reproduce them
LIB_SHRINK = 10.0
#: a shareable model replaces the library-size parameters of every type x condition group with
#: fewer train cells than this by the pooled ones (all train cells): its own parameters and its
#: cell count would give its cells' exact mean log library size
LIB_SHARE_MIN_GROUP = 20
#: ridge penalty of the conditional library model's regression on standardised codes
LIB_RIDGE = 1.0
#: --calibrate mean|diag: a type's target moments are shrunk towards its generated ones with this many
#: pseudo-cells (a type of a few cells moves little), as the library-size model is (LIB_SHRINK)
CALIB_SHRINK = 10.0
#: --calibrate mean|diag: generated codes drawn per type (unseeded, and as a seeded model draws) to estimate
#: their moments (a type's train cells resampled to this many, at most CALIB_MAX_DRAWS)
CALIB_DRAWS = 2000
CALIB_MAX_DRAWS = 20000
#: --calibrate diag: the per-dimension scale is kept within [1 / CALIB_MAX_SCALE, CALIB_MAX_SCALE]
CALIB_MAX_SCALE = 4.0
#: layout of calib_a/calib_b: row 0 maps unseeded generation, row 1 a seeded model's cells; a
#: model without this version (a development build) carries maps of another meaning: not applied
CALIB_VERSION = 2
#: groups with fewer train cells than this give no validation cells
MIN_VAL_GROUP = 20
#: within-type states: k-means is fitted on at most this many fit cells of a type (then predicts all)
MAX_STATE_FIT = 20000
#: --state-gate: silhouettes (quadratic in cells) are scored on at most this many cells of a type
STATE_SIL_CELLS = 3000


# --------------------------------------------------------------------------- composition
def composition_counts(
    categories: list[str],
    train_counts: list[int],
    n_cells: int | None,
    composition: str = "original",
    cells_per_type=None,
    rare_threshold: float = C.RARE_THRESHOLD,
    rare_types: list[str] | None = None,
) -> dict[str, int]:
    """Number of synthetic cells per type.

    Types named in *cells_per_type* get exactly that many cells; the rest of
    *n_cells* (default: the number of train cells) is shared among the other
    types by *composition* (largest-remainder rounding):

    - ``original``: in proportion to the train cells;
    - ``balanced``: equally;
    - ``uniform-rare-boost``: every rare type (*rare_types*, the list preprocess
      decided; without it, types below *rare_threshold* of the train cells) gets
      an equal ``1 / n_types`` share, common types share the rest in proportion
      to the train cells.
    """
    from ._config import COMPOSITIONS

    if composition not in COMPOSITIONS:
        raise GarageError(f"unknown composition {composition!r}", f"use one of {', '.join(COMPOSITIONS)}")
    fixed = dict(parse_cells_per_type(cells_per_type) or ())
    unknown = sorted(set(fixed) - set(categories))
    if unknown:
        raise GarageError(
            f"--cells-per-type names unknown cell type(s) {unknown}",
            f"use types the model was trained on: {', '.join(categories)}",
        )
    counts = np.asarray(train_counts, dtype=float)
    total = int(counts.sum()) if n_cells is None else int(n_cells)
    if n_cells is not None and n_cells < 1:
        raise GarageError(f"--n-cells must be >= 1, got {n_cells}", "pass a positive number")
    n_fixed = sum(fixed.values())
    if n_cells is not None and n_fixed > n_cells:
        raise GarageError(
            f"--cells-per-type asks for {n_fixed} cells but --n-cells is {n_cells}",
            "raise --n-cells or lower the per-type numbers",
        )
    free = [i for i, t in enumerate(categories) if t not in fixed]
    rest = max(0, total - n_fixed)
    out = {t: 0 for t in categories}
    out.update(fixed)
    if free and rest > 0:
        frac = counts / max(counts.sum(), 1.0)
        if composition == "original":
            w = counts.copy()
        elif composition == "balanced":
            w = np.ones_like(counts)
        else:
            if rare_types is not None:
                rare = np.asarray([t in set(rare_types) for t in categories])
            else:
                rare = frac < rare_threshold
            k = len(categories)
            w = np.where(rare, 1.0 / k, 0.0)
            common = ~rare
            if common.any() and counts[common].sum() > 0:
                w[common] = (1.0 - rare.sum() / k) * counts[common] / counts[common].sum()
        w = w[free]
        if w.sum() <= 0:
            w = np.ones(len(free))
        base = _largest_remainder(w, rest)
        for j, i in enumerate(free):
            out[categories[i]] = int(base[j])
    if sum(out.values()) == 0:
        raise GarageError("the requested composition has zero cells", "ask for at least one cell")
    return out


def _largest_remainder(w: np.ndarray, total: int) -> np.ndarray:
    share = np.asarray(w, dtype=float) / np.sum(w) * total
    base = np.floor(share).astype(int)
    left = int(total - base.sum())
    order = np.argsort(-(share - base), kind="stable")[:left]
    base[order] += 1
    return base


def group_composition(
    categories: list[str],
    conditions: list[str],
    group_counts: np.ndarray,
    n_cells: int | None,
    composition: str = "original",
    cells_per_type=None,
    cells_per_group=None,
    rare_types: list[str] | None = None,
    allow_counterfactual: bool = False,
) -> np.ndarray:
    """Synthetic cells per type x condition (an ``n_types x n_conds`` integer array).

    *group_counts* holds the train cells per group (one column when the model
    has no condition).  Groups named in *cells_per_group* (``"B|STIM=300"``) get
    exactly that many cells; the rest of *n_cells* (default: the number of train
    cells) goes to the types by :func:`composition_counts` (with
    *cells_per_type*), and each type's cells to its other groups in proportion
    to their train cells.  A named group without train cells is a
    counterfactual: allowed only with *allow_counterfactual*, else an error that
    names it.
    """
    gc = np.asarray(group_counts, dtype=np.int64).reshape(len(categories), max(1, len(conditions)))
    pinned = np.zeros_like(gc)
    for name, n in parse_cells_per_group(cells_per_group) or ():
        if not conditions:
            raise GarageError(
                f"--cells-per-group asks for {name!r} but this model has no condition covariate",
                "use --cells-per-type, or train with a condition (garage preprocess --condition-key)",
            )
        # the type or the condition may itself contain the separator: take the split that names
        # a known (type, condition) pair, else the first
        splits = [(name[:k].strip(), name[k + 1:].strip()) for k, ch in enumerate(name) if ch == GROUP_SEP]
        if not splits:
            raise GarageError(f"--cells-per-group item {name!r} is not TYPE{GROUP_SEP}CONDITION=N",
                              'write e.g. --cells-per-group "B|STIM=300,DC|CTRL=50"')
        t, c = next((tc for tc in splits if tc[0] in categories and tc[1] in conditions), splits[0])
        if t not in categories:
            raise GarageError(f"--cells-per-group names unknown cell type {t!r}",
                              f"use types the model was trained on: {', '.join(categories)}")
        if c not in conditions:
            raise GarageError(f"--cells-per-group names unknown condition {c!r}",
                              f"use conditions the model was trained on: {', '.join(conditions)}")
        i, j = categories.index(t), conditions.index(c)
        if gc[i, j] == 0 and not allow_counterfactual:
            raise GarageError(
                f"type x condition {t}{GROUP_SEP}{c} has no training cell, so it can only be generated as a "
                "counterfactual (the type's cells decoded under that condition)",
                "add --allow-counterfactual to generate it anyway, or ask only for combinations seen in training",
            )
        pinned[i, j] = n
    free_mask = (gc > 0) & (pinned == 0)
    fixed_types = dict(parse_cells_per_type(cells_per_type) or ())
    types_free = [t for k, t in enumerate(categories) if free_mask[k].any() or t in fixed_types]
    for t in fixed_types:
        if t in categories and not free_mask[categories.index(t)].any():
            raise GarageError(f"--cells-per-type names {t!r}, all of whose groups are set by --cells-per-group",
                              "name the type in one option only")
    n_pinned = int(pinned.sum())
    if n_cells is not None and n_pinned > n_cells:
        raise GarageError(f"--cells-per-group asks for {n_pinned} cells but --n-cells is {n_cells}",
                          "raise --n-cells or lower the per-group numbers")
    out = pinned.copy()
    total = int(gc.sum()) if n_cells is None else int(n_cells)
    rest = total - n_pinned
    if types_free and (rest > 0 or fixed_types):
        per_type = composition_counts(
            types_free, [int((gc * free_mask)[categories.index(t)].sum()) for t in types_free],
            rest if (n_cells is not None or n_pinned) else None, composition, fixed_types or None,
            rare_types=rare_types if rare_types is not None else [],
        ) if rest > 0 or fixed_types else {}
        for t, n in per_type.items():
            k = categories.index(t)
            w = (gc[k] * free_mask[k]).astype(float)
            if n > 0 and w.sum() > 0:
                out[k] += _largest_remainder(w, n)
    if out.sum() == 0:
        raise GarageError("the requested composition has zero cells", "ask for at least one cell")
    return out


# --------------------------------------------------------------------------- network container
class GANNet(nn.Module):
    """Holds the VAE (latent space), the generator and the critic of one model."""

    def __init__(self, cfg: GANConfig, n_genes: int, n_types: int, seed_dim: int, n_conds: int = 1):
        super().__init__()
        self.cfg = cfg
        space = cfg.effective_space
        # the networks' labels: type x within-type state (one state per type unless type_states > 1)
        n_types = n_types * cfg.effective_type_states
        self.vae = None
        self.code_dim = cfg.n_latent + (1 if cfg.joint_library else 0)
        if cfg.mode == "original":
            self.generator = OriginalGenerator(n_genes, cfg.noise_dim, cfg.hidden)
            self.critic = OriginalDiscriminator(n_genes, cfg.hidden)
        elif space == "latent":
            self.vae = CountVAE(n_genes, cfg.n_latent, cfg.hidden, n_conds=n_conds, decoder_dropout=cfg.decoder_dropout)
            # --library depth: the generator takes each cell's standardised log size, and the critic
            # judges (code, that size) pairs
            extra = 1 if cfg.depth_library else 0
            self.generator = ConditionalGenerator(
                cfg.noise_dim, n_types, cfg.type_emb_dim, seed_dim, cfg.hidden, self.code_dim,
                residual=cfg.seed_residual, n_conds=n_conds, extra_dim=extra,
            )
            self.critic = ConditionalCritic(self.code_dim + extra, n_types, cfg.type_emb_dim, cfg.hidden,
                                            n_conds=n_conds, path_input=cfg.critic_path_on,
                                            pack=cfg.effective_critic_pack)
        else:
            self.generator = ConditionalGenerator(
                cfg.noise_dim, n_types, cfg.type_emb_dim, seed_dim, cfg.hidden, n_genes, n_conds=n_conds
            )
            self.critic = ConditionalCritic(n_genes, n_types, cfg.type_emb_dim, cfg.hidden, n_conds=n_conds,
                                            path_input=cfg.critic_path_on)
        # garage mode generates with an exponential moving average of the generator's
        # weights (smooths the last steps' oscillation; latent C2ST on PBMC 3k 0.66 -> 0.58)
        self.generator_ema = None
        if cfg.mode == "garage" and cfg.ema_decay > 0:
            self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False)
            self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        n_code = self.code_dim if self.vae is not None else 0
        self.register_buffer("z_mean", torch.zeros(n_code))
        self.register_buffer("z_std", torch.ones(n_code))

    @torch.no_grad()
    def update_ema(self, decay: float) -> None:
        # warm-up (decay (1+t)/(10+t) until it reaches *decay*): short runs are not dragged
        # back towards their first, untrained weights
        t = int(self.ema_updates)
        d = min(decay, (1.0 + t) / (10.0 + t))
        for pe, p in zip(self.generator_ema.parameters(), self.generator.parameters()):
            pe.lerp_(p, 1.0 - d)
        self.ema_updates += 1

    @torch.no_grad()
    def prepare_codes(self, data: TrainData, device) -> None:
        """Latent space: standardised codes of all train cells (and seeds) on *device*.

        A code is the posterior mean of the cell's latent variables, plus its log
        library size when the library is generated jointly; the standardisation
        (mean, sd per dimension) is taken over the fit cells.
        """
        if self.vae is None:
            if data.seed_codes is not None:
                data.seed_codes = data.seed_codes.to(device)
            return
        self.vae.eval()
        means, sds = [], []
        for lo in range(0, data.n, GEN_CHUNK):
            idx = torch.arange(lo, min(lo + GEN_CHUNK, data.n))
            m, lv = self.vae.encode(data.batch_counts(idx, device), data.conds[idx].to(device))
            means.append(m)
            sds.append((0.5 * lv).exp())
        z, sd = torch.cat(means), torch.cat(sds)
        if self.cfg.joint_library:
            z = torch.cat([z, data.loglib.to(device).unsqueeze(1)], dim=1)
            sd = torch.cat([sd, torch.zeros_like(sd[:, :1])], dim=1)
        fit = torch.from_numpy(data.fit_rows).to(device)
        self.z_mean.copy_(z[fit].mean(0))
        self.z_std.copy_(z[fit].std(0).clamp_min(1e-4) if len(fit) > 1 else torch.ones_like(self.z_mean))
        data.codes = ((z - self.z_mean) / self.z_std).float()
        # capped at one sd of the codes: a collapsed latent dimension (posterior sd ~ the prior's, means
        # nearly constant) would otherwise get noise of many of its own sds (up to ~13 on kang_ifnb validation:
        # C2ST 0.855 with --posterior-noise 1 uncapped)
        data.code_sd = (sd / self.z_std).clamp_max(1.0).float() if self.cfg.posterior_noise > 0 else None
        if data.labels is None:
            _assign_states(data, self.cfg.effective_type_states, self.cfg.state_min_cells, self.cfg.seed,
                           self.cfg.state_gate)
        data.seed_codes = data.codes[data.seed_rows.to(device)] if data.seed_rows.numel() else None
        data.seed_radius = _seed_radius(data, self.cfg.seed_floor_k) if data.seed_codes is not None else None
        self.vae.train()

    @torch.no_grad()
    def decode(self, out: torch.Tensor, conds: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Generator output -> (proportions, log library or None)."""
        if self.vae is None:
            return torch.softmax(out, dim=1), None
        z = out * self.z_std + self.z_mean
        n = self.cfg.n_latent
        loglib = z[:, n] if self.cfg.joint_library else None
        return self.vae.proportions(z[:, :n], conds if self.vae.n_conds > 1 else None), loglib

    @torch.no_grad()
    def generated(self, types, conds, noise, seed_code, seed_mask, extra=None) -> torch.Tensor:
        """The generator's output in eval mode (standardised codes in latent space); *extra*: the
        cells' standardised log sizes for ``--library depth``."""
        if self.cfg.mode == "original":
            return self.generator(noise, seed_code)
        g = self.generator_ema if self.generator_ema is not None else self.generator
        return g(noise, types, conds, seed_code, seed_mask, extra)


# --------------------------------------------------------------------------- model
class GarageGAN:
    """The AnnData-facing model: ``setup`` -> ``train`` -> ``generate`` / ``save`` / ``load``."""

    def __init__(self, config: GANConfig, net: GANNet, meta: dict, data: TrainData | None = None):
        self.config, self.net, self.meta, self.data = config, net, meta, data

    # ---------------------------------------------------------------- setup
    @classmethod
    def setup(cls, adata, config: GANConfig) -> "GarageGAN":
        """Check a seeds AnnData and prepare the train cells (only train-split cells are used)."""
        config.validate()
        for key, where in ((C.OBS_LABEL, "obs"), (C.OBS_SPLIT, "obs")):
            if key not in adata.obs:
                raise GarageError(
                    f"input has no {where}['{key}']", "run `garage preprocess` (then `garage gat`) on it first"
                )
        if C.LAYER_COUNTS not in adata.layers:
            raise GarageError(
                f"input has no layers['{C.LAYER_COUNTS}'] with raw counts",
                "run `garage preprocess` (then `garage gat`) on it first",
            )
        needs_seeds = config.mode == "original" or config.seed_mix > 0
        if needs_seeds and C.OBS_SEED not in adata.obs:
            raise GarageError(
                f"input has no obs['{C.OBS_SEED}'] (seed cells) but --seed-mix is {config.seed_mix}"
                + (" and --mode original feeds seeds" if config.mode == "original" else ""),
                "run `garage gat` first and pass its PREFIX.seeds.h5ad, or use --seed-mix 0",
            )
        train = np.asarray(adata.obs[C.OBS_SPLIT].astype(str) == C.SPLIT_TRAIN)
        if train.sum() < 2:
            raise GarageError("fewer than 2 train cells in the input", "check obs['garage_split']")
        counts = sp.csr_matrix(adata.layers[C.LAYER_COUNTS][train], dtype=np.float32)
        if counts.nnz and (counts.data.min() < 0 or not np.allclose(counts.data, np.rint(counts.data))):
            raise GarageError("layers['counts'] does not hold non-negative integer counts",
                              "run `garage preprocess` on raw counts")
        labels = adata.obs[C.OBS_LABEL].astype(str).to_numpy()[train]
        categories = sorted(set(labels))
        types = pd.Categorical(labels, categories=categories).codes.astype(np.int64)
        cond_key = condition_key_of(adata)
        if cond_key is not None:
            cvals = adata.obs[C.OBS_CONDITION].astype(str).to_numpy()[train]
            conditions = sorted(set(adata.obs[C.OBS_CONDITION].astype(str)))
            conds = pd.Categorical(cvals, categories=conditions).codes.astype(np.int64)
        else:
            conditions, conds = [], np.zeros(len(labels), dtype=np.int64)
        n_types, n_conds = len(categories), max(1, len(conditions))
        groups = types * n_conds + conds
        group_counts = np.bincount(groups, minlength=n_types * n_conds)
        names = np.asarray(adata.obs_names).astype(str)[train]

        fit_rows, val_rows = _validation_split(groups, config.val_fraction, config.seed)
        loglib = np.log(np.maximum(np.asarray(counts.sum(1)).ravel(), 1.0)).astype(np.float32)
        lib_params = _library_model(loglib[fit_rows], types[fit_rows], conds[fit_rows], n_types, n_conds)
        lib_pooled = _library_pooled(loglib[fit_rows])

        if needs_seeds:
            is_seed = np.asarray(adata.obs[C.OBS_SEED]).astype(bool)[train]
        else:
            is_seed = np.zeros(len(labels), dtype=bool)
        if needs_seeds and not is_seed.any():
            raise GarageError(
                "no train cell is marked in obs['garage_seed']",
                "rerun `garage gat` (it marks seeds), or use --seed-mix 0",
            )
        seed_rows, seed_start, seed_count = _seed_table(is_seed, types, conds, n_types, n_conds)
        no_seed = [categories[k] for k in range(n_types) if not (is_seed & (types == k)).any()]
        if needs_seeds and no_seed:
            logger.warning("types without seed cells (generated from noise + type only): %s", no_seed)

        seed_dim = 0
        space = config.effective_space
        seed_codes = None
        if config.mode == "original":
            seed_codes = torch.from_numpy(log_normalize(counts[seed_rows]).toarray())
            seed_dim = counts.shape[1]
        elif space == "gene" and config.seed_mix > 0:
            from sklearn.decomposition import TruncatedSVD

            logx = log_normalize(counts)
            n_pc = int(min(50, logx.shape[0] - 1, logx.shape[1] - 1))
            # a sparse-friendly PCA (centring folded in afterwards): no dense cells x genes copy
            pcs = TruncatedSVD(n_components=n_pc, random_state=config.seed).fit_transform(logx)
            pcs = (pcs - pcs.mean(0)) / pcs.std(0).clip(1e-6)
            seed_codes = torch.from_numpy(pcs[seed_rows].astype(np.float32))
            seed_dim = n_pc
        elif space == "latent" and config.seed_mix > 0:
            seed_dim = config.n_latent + (1 if config.joint_library else 0)

        data = TrainData(
            counts=counts,
            types=torch.from_numpy(types),
            conds=torch.from_numpy(conds),
            n_conds=n_conds,
            fit_rows=fit_rows,
            val_rows=val_rows,
            seed_rows=torch.from_numpy(seed_rows),
            seed_start=torch.from_numpy(seed_start),
            seed_count=torch.from_numpy(seed_count),
            lib_params=torch.from_numpy(lib_params),
            loglib=torch.from_numpy(loglib),
            seed_codes=seed_codes,
            k_states=config.effective_type_states,
            names=names,
        )
        net = GANNet(config, counts.shape[1], n_types, seed_dim, n_conds)
        uns = adata.uns.get(C.UNS_KEY, {})
        meta = {
            "var_names": [str(v) for v in adata.var_names],
            "var": _gene_metadata(adata.var),
            "categories": categories,
            "conditions": conditions,
            "train_type_counts": [int(v) for v in np.bincount(types, minlength=n_types)],
            "group_counts": [int(v) for v in group_counts],
            "lib_pooled": torch.from_numpy(lib_pooled),
            "rare_types": rare_types_of(adata, config.rare_threshold),
            "label_key": label_key_of(adata) or "",
            "condition_key": cond_key or "",
            "seed_names": names[seed_rows].tolist(),
            "seed_dim": int(seed_dim),
            "train_hashes": _hash_tensor(counts),
            "sample": str(uns.get("sample", "")),
            "n_val_cells": int(len(val_rows)),
            # stored non-zeros per train cell (a mean over all cells): sizes generation's memory check
            "nnz_per_cell": float(counts.nnz / max(1, counts.shape[0])),
        }
        return cls(config, net, meta, data)

    # ---------------------------------------------------------------- memory guard
    def check_memory(self, device: torch.device) -> int:
        """Estimate peak bytes; raise a ResourceError (exit 3) with advice if they won't fit.

        Two budgets: the networks and a minibatch (or a generation chunk) live on *device*; the
        train counts and the synthetic cells of the requested composition live in host memory on
        any device.  On the CPU both add up against one budget.  The host budget is
        ``--max-memory-gb`` when given (all of it), else 80 % of the available memory (capped by
        a cgroup limit); the cuda budget is 80 % of the device's free memory.  Returns the sum.
        """
        cfg, g = self.config, len(self.meta["var_names"])
        n_params = sum(p.numel() for p in self.net.parameters())
        per_batch = max(cfg.batch_size, cfg.adversarial_batch_size) * g * 4 * \
            (40 if cfg.effective_space == "gene" else 16)
        gen = GEN_CHUNK * g * 4 * 8
        dev_est = n_params * 4 * 4 + max(per_batch, gen)
        host_est = 0
        if self.data is not None:
            counts = self.data.counts
            host_est += counts.data.nbytes * 3
            # the synthetic cells of the requested composition (--n-cells, --cells-per-type,
            # --cells-per-group): one chunk of counts as dense as the train counts (the cells are
            # written chunk by chunk) and every cell's row in the tables
            meta = self.meta
            n_out = int(group_composition(
                meta["categories"], meta["conditions"], meta["group_counts"], cfg.n_cells, cfg.composition,
                cfg.cells_per_type, cfg.cells_per_group, meta["rare_types"], cfg.allow_counterfactual).sum())
            host_est += generation_bytes(n_out, counts.nnz / max(1, counts.shape[0]))
        advice = (f"lower --batch-size (now {cfg.batch_size}) or --hidden, ask for fewer cells, or use a larger "
                  "node")
        if device.type == "cuda":
            free_dev = torch.cuda.mem_get_info(device)[0]
            logger.info("GPU memory estimate: %.2f GiB (free: %.1f GiB)", dev_est / 2**30, free_dev / 2**30)
            if dev_est > 0.8 * free_dev:
                raise ResourceError(f"training needs about {dev_est / 2**30:.1f} GiB of GPU memory but only "
                                    f"{free_dev / 2**30:.1f} GiB is free on {device}", advice)
        else:
            host_est += dev_est
        _check_host_budget(host_est, cfg.max_memory_gb, "training and generation", advice)
        return host_est + (dev_est if device.type == "cuda" else 0)

    def check_generation_memory(self, n_out: int, *, to_file: bool = True) -> int:
        """``garage generate``: refuse (exit 3) before generating *n_out* cells that will not fit in RAM."""
        per_cell = float(self.meta.get("nnz_per_cell", 0.1 * len(self.meta["var_names"])))
        est = generation_bytes(n_out, per_cell, to_file=to_file) + GEN_CHUNK * len(self.meta["var_names"]) * 4 * 8
        _check_host_budget(est, None, f"generating {n_out} cells",
                           "ask for fewer cells (--n-cells) and run generate several times with different --seed, "
                           "or use a larger node")
        return est

    # ---------------------------------------------------------------- train
    def train(self, device, ckpt_path: Path | None = None, resume: bool = False) -> list:
        if self.data is None:
            raise GarageError("this model was loaded for generation only", "train a new model with `garage gan`")
        device = torch.device(device)
        if self.config.instance_noise and not self.config.instance_noise_applies:
            logger.warning("--instance-noise applies to --space latent with --mode garage only: not applied")
        if self.config.critic_pack > 1 and self.config.effective_critic_pack == 1:
            logger.warning("--critic-pack applies to --space latent with --mode garage only: not applied")
        if self.config.library == "depth" and not self.config.depth_library:
            logger.warning("--library depth applies to --space latent with --mode garage only: library sizes "
                           "from the per type x condition log-normal")
        if self.config.state_gate > 0 and self.config.effective_type_states <= 1:
            logger.warning("--state-gate applies with --type-states > 1 (--space latent, --mode garage): not applied")
        self.net.to(device)
        for name in ("seed_start", "seed_count", "lib_params"):
            setattr(self.data, name, getattr(self.data, name).to(device))
        if self.data.seed_codes is not None:
            self.data.seed_codes = self.data.seed_codes.to(device)
        gen = torch.Generator().manual_seed(int(self.config.seed))
        trainer = Trainer(self.net, self.data, self.config, device, gen, ckpt_path, self.config.train_options())
        if resume:
            trainer.load_checkpoint()
        rows = trainer.fit()
        self.net.eval()
        self.meta["seed_codes"] = (
            self.data.seed_codes.float().cpu() if self.data.seed_codes is not None else torch.zeros(0)
        )
        self.meta["seed_start"] = self.data.seed_start.cpu()
        self.meta["seed_count"] = self.data.seed_count.cpu()
        # within-type states regroup the seed table by state: the seed names follow it
        if self.data.names is not None:
            self.meta["seed_names"] = self.data.names[self.data.seed_rows.cpu().numpy()].tolist()
        if self.data.k_states > 1:
            self.meta["k_states"] = int(self.data.k_states)
            self.meta["state_counts"] = self.data.state_counts.cpu()
            logger.info("within-type states per type: %s", {
                c: int((self.data.state_counts.view(len(self.meta["categories"]), self.data.k_states, -1)[i]
                        .sum(1) > 0).sum()) for i, c in enumerate(self.meta["categories"])})
            if self.data.state_excess:  # saved: why each big type was (not) split
                self.meta["state_excess"] = {self.meta["categories"][t]: list(v)
                                             for t, v in self.data.state_excess.items()}
                logger.info("--state-gate %s: per type, the best k and its silhouette excess over one Gaussian: %s",
                            self.config.state_gate, self.meta["state_excess"])
        self.meta["lib_params"] = self.data.lib_params.cpu()
        if self.config.depth_library:
            self.meta.update(_depth_library(self.data))
        if self.config.conditional_library:
            self.meta.update(_conditional_library(self.data, len(self.meta["categories"])))
            logger.info("conditional library model: the code explains %.0f %% of the log library size's "
                        "variance within type x condition groups", 100 * self.meta["lib_r2"])
        if self.config.calibrate == "none":
            pass
        elif self.config.effective_space != "latent" or self.config.mode != "garage":
            logger.warning("--calibrate applies to --space latent with --mode garage only: not applied")
        else:
            self.meta.update(_calibration(self.net, self.data, self.config, device, len(self.meta["categories"])))
            logger.info("calibration (--calibrate %s): per type, generated codes moved by %.2f fit-cell sd "
                        "(RMS) and scaled by %.2f (median)", self.config.calibrate, self.meta["calib_shift_sd"],
                        self.meta["calib_scale_median"])
        self.meta["schedule"] = trainer.steps
        self.meta["steps_run"] = {r[0]: int(r[1]) for r in rows}
        return rows

    # ---------------------------------------------------------------- generate
    @torch.no_grad()
    def generate(
        self,
        n_cells: int | None = None,
        composition: str = "original",
        cells_per_type=None,
        seed: int = 0,
        device="cpu",
        cells_per_group=None,
        allow_counterfactual: bool = False,
        with_provenance: bool = False,
        out: Path | None = None,
        extra_uns: dict | None = None,
    ):
        """Synthetic cells as an AnnData with the ``PREFIX.synthetic.h5ad`` schema.

        With *with_provenance*, returns ``(adata, provenance)`` where provenance is
        a DataFrame (``constants.PROVENANCE_COLUMNS``) naming each cell's seed:
        PRIVATE, never part of the AnnData.  Cells are generated on *device* in
        chunks of ``GEN_CHUNK`` and collected as sparse matrices.

        With *out*, each chunk is appended to that file as it is drawn (written atomically,
        :func:`garage.io.write_synthetic_chunked`), so memory is bounded by one chunk, and the
        returned AnnData has obs, var and uns but no X.  *extra_uns* is merged into
        ``uns['garage']`` (with *out* it must be known before the file is written).
        """
        cfg, meta = self.config, self.meta
        device = torch.device(device)
        self.net.to(device).eval()
        cats, conds_names = meta["categories"], meta.get("conditions", [])
        n_conds = max(1, len(conds_names))
        gc = np.asarray(meta["group_counts"] if "group_counts" in meta else meta["train_type_counts"])
        n_per = group_composition(cats, conds_names, gc, n_cells, composition, cells_per_type, cells_per_group,
                                  meta.get("rare_types"), allow_counterfactual)
        if self.data is None:  # a loaded model (garage generate): training checked its own run
            self.check_generation_memory(int(n_per.sum()), to_file=out is not None)
        seeded_model = meta.get("seed_codes") is not None and meta["seed_codes"].numel() > 0
        seed_count = meta["seed_count"].clone()
        if not seeded_model:
            seed_count.zero_()  # a shareable model: no seed codes, noise-only cells
        if cfg.mode == "original":
            ask = n_per.sum(1) > 0
            missing = [cats[k] for k in range(len(cats)) if ask[k]
                       and seed_count.view(len(cats), n_conds)[k].sum() == 0]
            if missing:
                raise GarageError(
                    f"--mode original labels cells by their seed's type, and types {missing} have no seeds",
                    "ask only for types with seed cells, or use --mode garage",
                )
        tt = np.repeat(np.repeat(np.arange(len(cats)), n_conds), n_per.ravel())
        cc = np.repeat(np.tile(np.arange(n_conds), len(cats)), n_per.ravel())
        types_all = torch.from_numpy(tt.astype(np.int64))
        conds_all = torch.from_numpy(cc.astype(np.int64))
        dgen = torch.Generator(device=device).manual_seed(int(seed))
        theta = self.net.vae.theta.detach() if self.net.vae is not None else None
        dist = cfg.effective_count_dist
        hashes = meta.get("train_hashes")
        train_hashes = set(_hash_rows_from_tensor(hashes)) if hashes is not None and len(hashes) else set()
        seed_start = meta["seed_start"].to(device)
        seed_count_d = seed_count.to(device)
        codes = meta["seed_codes"].to(device) if seeded_model else None
        lib_params = _lib_params_of(meta).to(device)
        cond_lib = cfg.conditional_library and "lib_coef" in meta
        if cond_lib:
            lib_coef = meta["lib_coef"].float().to(device)
            lib_code_mean = meta["lib_code_mean"].float().to(device)
            lib_scale = float(meta["lib_resid_scale"])
        depth_lib = cfg.depth_library
        if depth_lib:
            if "depth_q" not in meta:
                raise GarageError("this model was trained with --library depth but has no depth table",
                                  "retrain it with `garage gan`")
            depth_q = meta["depth_q"].float().to(device)
            depth_mean, depth_sd = float(meta["depth_mean"]), float(meta["depth_sd"])
        k_states = int(meta.get("k_states", 1))
        probs = (state_probs(meta["state_counts"], k_states, n_conds).to(device) if k_states > 1 else None)
        calib = None
        if "calib_a" in meta and meta.get("calib_version") == CALIB_VERSION:
            calib = (meta["calib_a"].float().to(device), meta["calib_b"].float().to(device))
        elif "calib_a" in meta:
            logger.warning("this model's calibration is of an unknown layout: generating without it")

        def draw(t: torch.Tensor, c: torch.Tensor):
            t, c = t.to(device), c.to(device)
            noise = torch.randn(t.shape[0], cfg.noise_dim, generator=dgen, device=device)
            mix = 1.0 if cfg.mode == "original" else cfg.seed_mix
            g = t * n_conds + c  # library sizes: per type x condition
            lab = draw_labels(t, c, probs, k_states, n_conds, dgen)  # the networks' label (type x state)
            gs = lab * n_conds + c  # seeds: from the cell's own state (and condition)
            cnt = seed_count_d[gs]
            mask = (torch.rand(t.shape[0], generator=dgen, device=device) < mix) & (cnt > 0)
            pos = seed_start[gs] + (torch.rand(t.shape[0], generator=dgen, device=device) * cnt.clamp_min(1)).long()
            pos = torch.where(mask, pos, torch.zeros_like(pos))
            code = codes[pos] if codes is not None else None
            extra = None
            if depth_lib:  # the cell's log size first, from its group's quantiles; the code follows it
                logd = sample_depth(depth_q, g, dgen)
                extra = depth_feature(logd, depth_mean, depth_sd)
            gen = self.net.generated(lab, c, noise, code, mask, extra)
            if calib is not None:  # per type; row 1: a seeded model's cells, row 0: unseeded generation
                k = 1 if seeded_model else 0
                gen = gen * calib[0][k][t] + calib[1][k][t]
            prop, loglib = self.net.decode(gen, c)
            if depth_lib:
                lib = logd.exp().clamp_min(1.0)
            elif cond_lib:
                lib = sample_library_conditional(lib_params, g, gen, lib_coef, lib_code_mean, lib_scale, dgen)
            elif loglib is None:
                lib = sample_library(lib_params, g, dgen)
            else:
                lib = loglib.exp().clamp_min(1.0)
            x = sample_counts(prop * lib.unsqueeze(1), dist, theta=theta, generator=dgen)
            return sp.csr_matrix(x.cpu().numpy().astype(np.float32)), mask.cpu().numpy(), pos.cpu().numpy()

        masks, poss = [], []

        def seeded() -> int:
            return int(sum(int(m.sum()) for m in masks))

        def chunks():
            """CSR blocks of GEN_CHUNK cells in order (their seed masks and positions kept)."""
            from .._utils import progress

            with progress(total=len(tt), desc="generate", unit="cell") as bar:
                for lo in range(0, len(tt), GEN_CHUNK):
                    x, m, p = draw(types_all[lo:lo + GEN_CHUNK], conds_all[lo:lo + GEN_CHUNK])
                    # redraw cells that are empty or exact copies of a training cell (digests only)
                    for _ in range(20):
                        bad = _bad_rows(x, train_hashes)
                        if not bad.any():
                            break
                        sel = np.flatnonzero(bad)
                        xb, mb, pb = draw(types_all[lo + sel], conds_all[lo + sel])
                        x = _replace_rows(x, sel, xb)
                        m[sel], p[sel] = mb, pb
                    else:
                        raise GarageError("could not avoid exact copies of training cells after 20 redraws",
                                          "train longer or lower --seed-mix")
                    masks.append(m), poss.append(p)
                    bar.update(x.shape[0])
                    yield x

        counterfactual = [f"{cats[i]}{GROUP_SEP}{conds_names[j]}" for i in range(len(cats)) for j in range(n_conds)
                          if conds_names and n_per[i, j] > 0 and gc.reshape(len(cats), n_conds)[i, j] == 0]
        if counterfactual:
            logger.warning("generated counterfactual type x condition groups (no training cell): %s", counterfactual)
        n_per_type = {cats[i]: int(n_per[i].sum()) for i in range(len(cats))}
        uns = {
            "model": "garage-gan",
            "gan": _h5_safe(cfg.to_dict()),
            "mode": cfg.mode,
            "space": cfg.effective_space,
            "count_dist": dist,
            "library": ("depth" if depth_lib else "conditional" if cond_lib
                        else ("joint" if cfg.joint_library else "lognormal")),
            "n_per_type": count_table(n_per_type, "cell_type"),
            "n_per_group": (count_table({f"{cats[i]}{GROUP_SEP}{conds_names[j]}": int(n_per[i, j])
                                          for i in range(len(cats)) for j in range(n_conds) if n_per[i, j] > 0},
                                         "group") if conds_names else ""),
            "counterfactual_groups": counterfactual,
            "composition": composition,
            "cells_per_type": count_table(dict(parse_cells_per_type(cells_per_type) or ()), "cell_type"),
            "cells_per_group": count_table(dict(parse_cells_per_group(cells_per_group) or ()), "group"),
            "n_cells": int(len(tt)),
            "rare_types": list(meta["rare_types"]),
            C.UNS_LABEL_KEY: meta.get("label_key", ""),
            C.UNS_CONDITION_KEY: meta.get("condition_key", ""),
            "conditions": list(conds_names),
            "exact_copies": 0,
            "seeded_cells": 0,  # set once every cell is drawn
            "shareable_model": not seeded_model,
            "seed": int(seed),
            "train_seed": int(cfg.seed),
            "garage_version": __version__,
            "versions": versions(),
            "sample": meta.get("sample", ""),
            **(extra_uns or {}),
        }
        labels = np.asarray(cats, dtype=object)[tt]
        cond_labels = np.asarray(conds_names, dtype=object)[cc] if conds_names else None
        obs_kw = dict(
            sample=meta.get("sample", "") or "sample", seed=seed,
            conditions=cond_labels, condition_categories=conds_names or None,
            label_key=meta.get("label_key") or None, condition_key=meta.get("condition_key") or None,
            counterfactual=(np.isin(np.char.add(np.char.add(labels.astype(str), GROUP_SEP),
                                                cond_labels.astype(str)), counterfactual)
                            if cond_labels is not None and counterfactual else None),
        )
        if out is not None:  # X written block by block: memory bounded by one block
            import anndata as ad

            from ..io import write_synthetic_chunked

            obs = synthetic_obs(len(tt), labels, cats, **obs_kw)
            var = _var_frame(meta)

            def blocks():
                yield from chunks()
                return {"seeded_cells": seeded()}

            per_cell = float(meta.get("nnz_per_cell", 0.1 * len(var)))
            _, tail = write_synthetic_chunked(Path(out), obs, var, blocks(), len(var),
                                              uns={C.UNS_KEY: _h5_safe(uns)},
                                              wide_index=len(tt) * per_cell > 2**30)
            uns.update(tail)
            adata = ad.AnnData(obs=obs, var=var, uns={C.UNS_KEY: uns})  # no X: the counts are in *out*
        else:
            parts = list(chunks())
            x = sp.vstack(parts, format="csr") if len(parts) > 1 else parts[0]
            del parts
            uns["seeded_cells"] = seeded()
            adata = synthetic_anndata(x, labels, cats, uns, var=_var_frame(meta), **obs_kw)
        mask, pos = np.concatenate(masks), np.concatenate(poss)
        if not with_provenance:
            return adata
        names = np.asarray(meta.get("seed_names") or [""], dtype=object)
        seed_cell = np.where(mask, names[np.minimum(pos, len(names) - 1)], "") if seeded_model else \
            np.full(len(tt), "", dtype=object)
        prov = pd.DataFrame({"synthetic_cell": adata.obs_names.to_numpy(),
                             "cell_type": labels.astype(str), C.OBS_SEED_ID: seed_cell.astype(str)})
        return adata, prov

    # ---------------------------------------------------------------- save / load
    def save(self, path: Path, shareable: bool = False) -> Path:
        """Write the model.  *shareable*: without seed codes, seed names and training-cell digests,
        with the pooled library-size model for groups of fewer than ``LIB_SHARE_MIN_GROUP`` train
        cells and without ``train_type_counts`` (generation reads ``group_counts``)."""
        from .._utils import atomic_path

        state = {k: v.detach().cpu() for k, v in self.net.state_dict().items()
                 if not k.startswith(PRIVATE_PREFIXES)}
        meta = dict(self.meta)
        if shareable:
            if self.config.mode == "original":
                raise GarageError("--mode original generates from real seed profiles, so its model cannot be "
                                  "made shareable", "use --mode garage with --shareable-model")
            for k in SENSITIVE_META:
                meta.pop(k, None)
            meta["seed_count"] = torch.zeros_like(meta["seed_count"])
            meta.update(shareable_library(meta))
            for k in ("calib_shift_sd", "calib_scale_median"):  # summaries of the seeded map
                meta.pop(k, None)
            if "group_counts" in meta:  # generation's composition reads group_counts only
                meta.pop("train_type_counts", None)
        payload = {
            "format": MODEL_FORMAT,
            "garage_version": __version__,
            "versions": versions(),
            # critic_path as trained ("auto" is resolved by run_gan; a model built otherwise trained with it off)
            "config": {**self.config.to_dict(), "critic_path": "on" if self.config.critic_path_on else "off"},
            "state_dict": state,
            "shareable": bool(shareable),
            **meta,
        }
        with atomic_path(Path(path)) as tmp:
            torch.save(payload, tmp)
        return Path(path)

    @classmethod
    def load(cls, path: Path, device="cpu") -> "GarageGAN":
        path = Path(path)
        if not path.is_file():
            raise GarageError(f"model {path} does not exist", "pass the PREFIX.generator.pt written by `garage gan`")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise GarageError(f"cannot read {path.name} as a GARAGE generator ({type(exc).__name__})",
                              "pass the PREFIX.generator.pt written by `garage gan`") from None
        if not isinstance(payload, dict) or not str(payload.get("format", "")).startswith("garage-generator/"):
            raise GarageError(f"{path.name} is not a GARAGE generator file",
                              "pass the PREFIX.generator.pt written by `garage gan`")
        if payload["format"] != MODEL_FORMAT:
            raise GarageError(f"{path.name} was written by an older GARAGE ({payload['format']})",
                              "retrain it with `garage gan` (this version conditions on covariates and "
                              "generates library sizes)")
        cfg_d = dict(payload["config"])
        # options added since the format was fixed: a model saved before them was trained without
        # them (decoder dropout adds layers, so the default 0.2 would not match the saved weights)
        for key, before in PRE_OPTION_VALUES.items():
            cfg_d.setdefault(key, before)
        known = {f.name for f in fields(GANConfig)}
        config = GANConfig(**{k: v for k, v in cfg_d.items() if k in known})
        n_conds = max(1, len(payload.get("conditions", [])))
        net = GANNet(config, len(payload["var_names"]), len(payload["categories"]), payload["seed_dim"], n_conds)
        try:
            missing, unexpected = net.load_state_dict(payload["state_dict"], strict=False)
        except RuntimeError as exc:  # shapes that do not match this version's network
            raise GarageError(f"{path.name} does not match this GARAGE version "
                              f"({str(exc).splitlines()[-1].strip()[:120]})", "retrain with `garage gan`") from None
        bad = [k for k in missing if not k.startswith(PRIVATE_PREFIXES)] + list(unexpected)
        if bad:
            raise GarageError(f"{path.name} does not match this GARAGE version (keys {bad[:3]})",
                              "retrain with `garage gan`")
        meta = {k: v for k, v in payload.items()
                if k not in ("format", "garage_version", "versions", "config", "state_dict", "shareable")}
        net.to(torch.device(device)).eval()
        return cls(config, net, meta)


# --------------------------------------------------------------------------- helpers
def _check_host_budget(est: int, max_memory_gb: float | None, what: str, advice: str) -> None:
    """Raise a ResourceError (exit 3) when *est* host bytes exceed the budget: all of
    ``--max-memory-gb`` less what this process already holds when given, else 80 % of the
    available (cgroup-capped) memory."""
    if max_memory_gb:
        have, held = budget_left_bytes(max_memory_gb)  # est leaves out the interpreter and train cells
        name = f"the --max-memory-gb budget less the {held / 2**30:.2f} GiB already held"
    else:
        free = _available_ram()
        have, name = int(0.8 * free), "80 % of the available memory"
    logger.info("memory estimate for %s: %.2f GiB (%s: %s)", what, est / 2**30, name,
                f"{have / 2**30:.1f} GiB" if have else "unknown")
    if have and est > have:
        raise ResourceError(f"{what} needs about {est / 2**30:.1f} GiB, more than {name} ({have / 2**30:.1f} GiB)",
                            advice + (" (or raise --max-memory-gb)" if max_memory_gb else ""))


#: Host bytes per generated cell besides its counts (names, labels, seed masks, provenance):
#: ``python -m bench.bench_generate`` measured 700 (peak RSS 1,735 -> 1,875 MB from 100,000 to
#: 300,000 cells written chunk by chunk, bench/results/generate_scale.md); rounded up.
TABLE_BYTES_PER_CELL = 800


def generation_bytes(n_out: int, nnz_per_cell: float, *, to_file: bool = True) -> int:
    """Peak bytes of generating *n_out* cells.  *to_file* (every stage and ``garage generate``):
    cells are written chunk by chunk, so only one chunk's CSR is held, plus TABLE_BYTES_PER_CELL
    of per-cell tables (names, labels, provenance).  In memory (the Python API without *out*): the
    CSR blocks and their stacked copy (float32 values, int32 indices: 8 bytes per stored count,
    twice) as well."""
    held = min(n_out, GEN_CHUNK) if to_file else n_out
    return int(held * nnz_per_cell * 8 * 2 + n_out * TABLE_BYTES_PER_CELL)


def _validation_split(groups: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows held out for the stopping rules: *fraction* of every group with >= MIN_VAL_GROUP cells."""
    rng = np.random.default_rng([int(seed), 17])
    val = []
    if fraction > 0:
        for g in np.unique(groups):
            idx = np.flatnonzero(groups == g)
            if len(idx) >= MIN_VAL_GROUP:
                val.extend(rng.permutation(idx)[: int(round(fraction * len(idx)))])
    val = np.sort(np.asarray(val, dtype=np.int64))
    fit = np.setdiff1d(np.arange(len(groups)), val).astype(np.int64)
    return fit, val


def _library_model(loglib, types, conds, n_types, n_conds) -> np.ndarray:
    """Per type x condition (mean, sd) of log library size, shrunk towards the type's and all cells'.

    A group's estimate is a weighted mean of its own cells and its parent's, with
    LIB_SHRINK pseudo-cells of the parent, so a group of one or two cells gets a
    distribution near its type's rather than its own cells' library sizes.
    """
    def stats(x):
        return (float(x.mean()), float(x.var())) if len(x) else (0.0, 0.0)

    gm, gv = stats(loglib)
    out = np.zeros((n_types * n_conds, 2), dtype=np.float32)
    for t in range(n_types):
        sel = types == t
        n_t = int(sel.sum())
        m_t, v_t = stats(loglib[sel])
        tm = (n_t * m_t + LIB_SHRINK * gm) / (n_t + LIB_SHRINK)
        tv = (n_t * v_t + LIB_SHRINK * gv) / (n_t + LIB_SHRINK)
        for c in range(n_conds):
            s2 = sel & (conds == c)
            n_g = int(s2.sum())
            m_g, v_g = stats(loglib[s2])
            m = (n_g * m_g + LIB_SHRINK * tm) / (n_g + LIB_SHRINK)
            v = (n_g * v_g + LIB_SHRINK * tv) / (n_g + LIB_SHRINK)
            out[t * n_conds + c] = (m, max(np.sqrt(v), 0.05))
    return out


def _library_pooled(loglib) -> np.ndarray:
    """(mean, sd) of log library size over all (fit) train cells: what small groups share."""
    if len(loglib) == 0:
        return np.asarray([0.0, 0.05], dtype=np.float32)
    return np.asarray([float(loglib.mean()), max(float(np.sqrt(loglib.var())), 0.05)], dtype=np.float32)


def _shareable_lib_params(meta: dict) -> torch.Tensor:
    """``lib_params`` with every group of fewer than LIB_SHARE_MIN_GROUP train cells set to the
    pooled parameters (the same for all such groups)."""
    params = _lib_params_of(meta).clone()
    counts, small = _small_groups(meta, params.shape[0])
    pooled = meta.get("lib_pooled")
    if pooled is None:  # a model from before lib_pooled: the count-weighted mixture of all groups
        w = torch.as_tensor(counts, dtype=torch.float32).clamp_min(0)
        w = w / w.sum().clamp_min(1.0)
        m, sd = params[:, 0], params[:, 1]
        mean = (w * m).sum()
        var = (w * (sd ** 2 + m ** 2)).sum() - mean ** 2
        pooled = torch.stack([mean, var.clamp_min(0.0025).sqrt()])
    params[small] = torch.as_tensor(pooled, dtype=params.dtype)
    return params


def _small_groups(meta: dict, n_rows: int) -> tuple[np.ndarray, torch.Tensor]:
    """Train cells per type x condition group and the groups a shareable model pools (fewer than
    LIB_SHARE_MIN_GROUP); *n_rows* is the row count of the per-group parameters they must match."""
    counts = np.asarray(meta.get("group_counts", meta.get("train_type_counts", [])), dtype=np.int64)
    if len(counts) != n_rows:
        raise GarageError("the model's library-size parameters do not match its group counts",
                          "retrain it with `garage gan`")
    return counts, torch.from_numpy(counts < LIB_SHARE_MIN_GROUP)


def _conditional_library(data: TrainData, n_types: int) -> dict:
    """The conditional library model: log size = group mean + (code - group mean code) . coef.

    Fit on the fit cells' standardised codes: *coef* by ridge regression of log library size on
    the code, both centred within each type x condition group (one coefficient vector for all
    groups); the group mean codes are shrunk towards the type's and the type's towards all cells'
    (0) with LIB_SHRINK pseudo-cells, like the log-normal's parameters; the residual scale is
    sqrt(1 - R^2) of that regression, applied to every group's sd.
    """
    fit = torch.from_numpy(data.fit_rows)
    z = data.codes[fit.to(data.codes.device)].detach().cpu().float()  # float32, as trained on
    y = data.loglib[fit].double()
    types, conds = data.types[fit], data.conds[fit]
    n_conds = int(data.n_conds)
    groups = types * n_conds + conds
    n_g, d = n_types * n_conds, z.shape[1]

    def means(idx, vals, n):
        cnt = torch.bincount(idx, minlength=n).double()
        tot = torch.zeros((n,) + vals.shape[1:], dtype=torch.float64).index_add_(0, idx, vals.double())
        return tot / cnt.clamp_min(1).view(-1, *([1] * (vals.dim() - 1))), cnt

    zg, ng = means(groups, z, n_g)
    yg, _ = means(groups, y, n_g)
    # normal equations accumulated in row blocks: no float64 copy of every code (1M cells x 16)
    blocks = [slice(lo, lo + 65536) for lo in range(0, len(y), 65536)]

    def centred(b):
        return z[b].double() - zg[groups[b]], y[b] - yg[groups[b]]

    xtx = torch.zeros(d, d, dtype=torch.float64)
    xty = torch.zeros(d, dtype=torch.float64)
    for b in blocks:
        zc, yc = centred(b)
        xtx += zc.T @ zc
        xty += zc.T @ yc
    coef = torch.linalg.solve(xtx + LIB_RIDGE * torch.eye(d, dtype=torch.float64), xty)
    ss = rss = 0.0
    for b in blocks:
        zc, yc = centred(b)
        ss += float((yc * yc).sum())
        rss += float(((yc - zc @ coef) ** 2).sum())
    r2 = max(0.0, 1.0 - rss / ss) if ss > 0 else 0.0
    zt, nt = means(types, z, n_types)
    zt = zt * (nt / (nt + LIB_SHRINK))[:, None]  # towards all cells' mean code, 0
    parent = zt.repeat_interleave(n_conds, dim=0)
    code_mean = (ng[:, None] * zg + LIB_SHRINK * parent) / (ng[:, None] + LIB_SHRINK)
    return {"lib_coef": coef.float(), "lib_code_mean": code_mean.float(),
            "lib_resid_scale": float(np.sqrt(1.0 - r2)), "lib_r2": float(r2)}


def _calibration(net, data: TrainData, cfg: GANConfig, device, n_types: int) -> dict:
    """--calibrate mean|diag: per type, the affine map ``a * z + b`` (per dimension) that gives the
    generated codes the fit cells' mean (and, with diag, sd; with mean, ``a`` is 1).

    Row 1 maps every cell of a type as a seeded model generates them (seeded and unseeded draws
    mixed by --seed-mix: one map, so their offset from each other is kept); row 0 maps the cells
    of a model that generates without seeds (a shareable model).  The generated moments come from
    codes drawn as generation draws them (labels, seeds, noise), each type's train cells resampled
    to CALIB_DRAWS rows (at most CALIB_MAX_DRAWS).  A type's target is its fit cells' mean and sd
    shrunk towards the generated ones with CALIB_SHRINK pseudo-cells, so the map is aggregate
    statistics of many cells and a type of a few cells moves little.  Returns ``calib_a`` and
    ``calib_b`` (2 x types x dims) and two summary numbers.
    """
    fit = torch.from_numpy(data.fit_rows)
    fz = data.codes[fit.to(data.codes.device)].detach().cpu().double()
    ft = data.types[fit].cpu()
    d = fz.shape[1]
    nf = torch.bincount(ft, minlength=n_types).double()
    mf = torch.zeros(n_types, d, dtype=torch.float64).index_add_(0, ft, fz) / nf.clamp_min(1)[:, None]
    vf = torch.zeros(n_types, d, dtype=torch.float64).index_add_(0, ft, (fz - mf[ft]) ** 2) / nf.clamp_min(1)[:, None]
    types_np = data.types.cpu().numpy()
    rng = np.random.default_rng(int(cfg.seed) + 7919)
    rows = []
    for t in range(n_types):
        own = np.flatnonzero(types_np == t)
        if len(own):
            m = min(max(len(own), CALIB_DRAWS), CALIB_MAX_DRAWS)
            rows.append(rng.choice(own, m, replace=m > len(own)))
    rows = torch.from_numpy(np.concatenate(rows)) if rows else torch.zeros(0, dtype=torch.long)
    gen = torch.Generator(device=device).manual_seed(int(cfg.seed) + 7919)
    probs = (state_probs(data.state_counts, data.k_states, data.n_conds).to(device)
             if data.k_states > 1 else None)
    cnt = torch.zeros(2, n_types, dtype=torch.float64)
    s1 = torch.zeros(2, n_types, d, dtype=torch.float64)
    s2 = torch.zeros(2, n_types, d, dtype=torch.float64)
    seeded = data.seed_codes is not None and cfg.seed_mix > 0
    was_training = net.training
    net.eval()
    with torch.no_grad():
        for row, mix in ((0, 0.0), (1, cfg.seed_mix)):
            if row == 1 and not seeded:
                break
            for lo in range(0, len(rows), GEN_CHUNK):
                ix = rows[lo:lo + GEN_CHUNK]
                t, c = data.types[ix].to(device), data.conds[ix].to(device)
                lab = draw_labels(t, c, probs, data.k_states, data.n_conds, gen)
                mask, pos = pick_seeds(data, lab, c, mix, gen)
                code = data.seed_codes[pos] if data.seed_codes is not None else None
                noise = torch.randn(len(ix), cfg.noise_dim, generator=gen, device=device)
                z = net.generated(lab, c, noise, code, mask).double().cpu()
                tc = t.cpu()
                cnt[row].index_add_(0, tc, torch.ones(len(ix), dtype=torch.float64))
                s1[row].index_add_(0, tc, z)
                s2[row].index_add_(0, tc, z * z)
    net.train(was_training)
    if not seeded:  # no seeds: a seeded generation is the unseeded one
        cnt[1], s1[1], s2[1] = cnt[0], s1[0], s2[0]
    mg = s1 / cnt.clamp_min(1)[..., None]
    sg = (s2 / cnt.clamp_min(1)[..., None] - mg ** 2).clamp_min(1e-12).sqrt()
    w = (nf / (nf + CALIB_SHRINK))[None, :, None]
    mt = w * mf + (1 - w) * mg
    st = (w * vf + (1 - w) * sg ** 2).sqrt()
    a = (st / sg).clamp(1 / CALIB_MAX_SCALE, CALIB_MAX_SCALE) if cfg.calibrate == "diag" else torch.ones_like(sg)
    b = mt - a * mg
    ok = ((cnt >= 2) & (nf >= 2)[None, :])[..., None]
    a = torch.where(ok, a, torch.ones_like(a))
    b = torch.where(ok, b, torch.zeros_like(b))
    used = ok[1, :, 0]
    shift = ((mt - mg)[1] / vf.clamp_min(1e-12).sqrt())[used]
    return {"calib_a": a.float(), "calib_b": b.float(), "calib_version": CALIB_VERSION,
            "calib_shift_sd": float(shift.pow(2).mean().sqrt()) if used.any() else 0.0,
            "calib_scale_median": float(a[1][used].median()) if used.any() else 1.0}


def _shareable_calibration(meta: dict) -> dict:
    """``calib_a``/``calib_b`` of a shareable model: no map for seeded generation (it generates
    unseeded cells only, and that map would tell the seeds' mean code), and no change for any
    type with fewer than LIB_SHARE_MIN_GROUP train cells or with a non-empty type x condition group
    that small (the library model pools such groups; a type's mean next to its large groups' mean
    codes would give the small group's mean code away)."""
    a, b = meta["calib_a"].float().clone(), meta["calib_b"].float().clone()
    n_types = a.shape[1]
    counts = np.asarray(meta.get("group_counts", meta.get("train_type_counts", [])), dtype=np.int64)
    if not counts.size or counts.size % n_types:
        raise GarageError("the model's calibration does not match its group counts", "retrain it with `garage gan`")
    groups = counts.reshape(n_types, -1)
    small = (groups.sum(1) < LIB_SHARE_MIN_GROUP) | ((groups > 0) & (groups < LIB_SHARE_MIN_GROUP)).any(1)
    small = torch.from_numpy(small)
    a[1], b[1] = 1.0, 0.0
    a[:, small] = 1.0
    b[:, small] = 0.0
    return {"calib_a": a, "calib_b": b}


def shareable_library(meta: dict) -> dict:
    """The library-size entries of a shareable model: small groups' log-normal parameters and mean
    codes pooled.  ``save(shareable=True)`` writes them and a shareable run generates with them, so
    the run's own cells are what ``garage generate`` makes from the saved model."""
    out = {}
    if "lib_params" in meta:
        out["lib_params"] = _shareable_lib_params(meta)
    if "depth_q" in meta:  # small groups: the pooled log-normal's quantiles, as their sizes are pooled
        out["depth_q"] = _shareable_depth_table(meta)
    if "lib_code_mean" in meta:  # small groups: the pooled mean code (0: codes are standardised)
        out["lib_code_mean"] = _shareable_code_mean(meta)
    if "calib_a" in meta:  # small types: no calibration (their moments would be a few cells')
        out.update(_shareable_calibration(meta))
    return out


def _depth_library(data: TrainData) -> dict:
    """``--library depth``: the standardiser of the networks' depth input and each group's quantile
    table of its fit cells' log sizes (smoothed, from DEPTH_MIN_CELLS fit cells; the shrunk
    log-normal's quantiles for smaller groups)."""
    mean, sd = depth_standardiser(data)
    fit = data.fit_rows
    groups = data.group(data.types, data.conds).numpy()[fit]
    table = depth_quantiles(data.loglib.numpy()[fit], groups, data.lib_params.cpu().numpy().astype(np.float64))
    return {"depth_q": torch.from_numpy(table), "depth_mean": mean, "depth_sd": sd}


def _shareable_depth_table(meta: dict) -> torch.Tensor:
    """``depth_q`` with every group of fewer than LIB_SHARE_MIN_GROUP train cells set to the pooled
    log-normal's quantiles (the sizes ``_shareable_lib_params`` gives them)."""
    table = meta["depth_q"].float().clone()
    small = _small_groups(meta, table.shape[0])[1]
    if bool(small.any()):
        pooled = _shareable_lib_params(meta)[small][:1]  # the same pooled (mean, sd) for every small group
        table[small] = torch.from_numpy(lognormal_quantiles(pooled.numpy())[0].astype(np.float32))
    return table


def _shareable_code_mean(meta: dict) -> torch.Tensor:
    """``lib_code_mean`` with every group of fewer than LIB_SHARE_MIN_GROUP train cells set to the
    pooled mean code (0), as ``_shareable_lib_params`` pools their sizes."""
    cm = meta["lib_code_mean"].float().clone()
    cm[_small_groups(meta, cm.shape[0])[1]] = 0.0
    return cm


def _assign_states(data: TrainData, k_max: int, min_cells: int, seed: int, gate: float = 0.0) -> None:
    """Within-type states: ``data.labels`` (type * k_max + state), ``data.state_counts`` and the
    seed table regrouped by state x condition.

    Each type's standardised codes of fit cells are clustered by k-means with the largest
    k <= *k_max* whose every cluster holds >= *min_cells* fit cells (a type with fewer than
    2 * *min_cells* fit cells is one state); the type's other cells (validation) get the nearest
    centre.  States are numbered by size.  A state x condition group without its own seeds uses
    its state's seeds; a state without seeds generates unseeded cells (a seed from another state
    would have to be moved across the type).  k-means is sklearn's (fixed seed, so a resumed run
    finds the same states); with *k_max* = 1 the labels are the types and nothing changes.

    *gate* > 0 (``--state-gate``): every k the size rule allows is scored by its silhouette
    excess over a one-Gaussian reference (``_silhouette_excess``); the type takes the k with the
    largest excess when that excess is at least *gate*, else it stays one state.
    """
    types = data.types.cpu().numpy()
    data.state_excess = {}
    if k_max <= 1:
        data.labels = data.types.clone()
        return
    from sklearn.cluster import KMeans

    codes = data.codes.cpu().numpy().astype(np.float64)
    fit = data.fit_rows
    n_types = int(types.max()) + 1 if len(types) else 0
    labels = types * k_max
    rng = np.random.default_rng([int(seed), 29])
    for t in range(n_types):
        rows_t = np.flatnonzero(types == t)
        fit_t = fit[types[fit] == t]
        k = int(min(k_max, len(fit_t) // max(1, min_cells)))
        sub = fit_t if len(fit_t) <= MAX_STATE_FIT else np.sort(rng.choice(fit_t, MAX_STATE_FIT, replace=False))
        is_fit = np.isin(rows_t, fit_t)
        best = None  # (excess, k, labels of the type's cells, sizes)
        while k >= 2:
            km = KMeans(n_clusters=k, n_init=4, random_state=int(seed)).fit(codes[sub])
            lab_t = km.predict(codes[rows_t])  # every cell of the type; sizes count its fit cells
            sizes = np.bincount(lab_t[is_fit], minlength=k)
            if sizes.min() >= min_cells:
                if gate <= 0:
                    best = (np.inf, k, lab_t, sizes)
                    break
                ex = _silhouette_excess(codes[sub], km.labels_, k, seed)
                if best is None or ex > best[0]:
                    best = (ex, k, lab_t, sizes)
            k -= 1
        if gate > 0 and best is not None:  # types the size rule lets split: their best k and its excess
            data.state_excess[t] = (int(best[1]), round(float(best[0]), 4))
        if best is not None and best[0] >= gate:
            _, k, lab_t, sizes = best
            rank = np.empty(k, dtype=np.int64)
            rank[np.argsort(-sizes, kind="stable")] = np.arange(k)
            labels[rows_t] = t * k_max + rank[lab_t]
    n_conds = data.n_conds
    conds = data.conds.cpu().numpy()
    data.labels = torch.from_numpy(labels.astype(np.int64))
    data.state_counts = torch.from_numpy(np.bincount(
        labels[fit] * n_conds + conds[fit], minlength=n_types * k_max * n_conds).reshape(-1, n_conds))
    is_seed = np.zeros(len(types), dtype=bool)
    is_seed[data.seed_rows.cpu().numpy()] = True
    rows, start, count = _seed_table(is_seed, labels, conds, n_types * k_max, n_conds)
    data.seed_rows = torch.from_numpy(rows)
    data.seed_start = torch.from_numpy(start).to(data.seed_start.device)
    data.seed_count = torch.from_numpy(count).to(data.seed_count.device)


def _silhouette_excess(z: np.ndarray, labels: np.ndarray, k: int, seed: int) -> float:
    """How much more clustered codes *z* are under their k-means *labels* than one Gaussian.

    The silhouette of *z* minus the silhouette of k-means (same k) on as many codes drawn from one
    Gaussian with *z*'s mean and covariance: k-means always finds k clusters with a positive
    silhouette, so only the excess over an unclustered type of the same shape says the type has
    states.  Both silhouettes are scikit-learn's on at most STATE_SIL_CELLS cells (it is quadratic).
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    rng = np.random.default_rng([int(seed), 31, int(k)])
    n = min(len(z), STATE_SIL_CELLS)
    ref = rng.multivariate_normal(z.mean(0), np.cov(z, rowvar=False), size=n, method="eigh")
    ref_lab = KMeans(n_clusters=k, n_init=4, random_state=int(seed)).fit_predict(ref)
    own = silhouette_score(z, labels, sample_size=n, random_state=int(seed))
    return float(own - silhouette_score(ref, ref_lab, sample_size=n, random_state=int(seed)))


def _seed_radius(data: TrainData, k: int) -> torch.Tensor:
    """Per seed position: code-space distance to its k-th nearest fit cell of its type (itself excluded).

    One k-d tree query per type (linear in cells).  A type with fewer than k + 1
    fit cells uses its farthest one; a seed alone in its type gets the median radius.
    """
    from sklearn.neighbors import NearestNeighbors

    codes = data.codes.cpu().numpy()
    types = data.types.numpy()
    fit = data.fit_rows
    rows = data.seed_rows.cpu().numpy()
    radius = np.full(len(rows), np.nan)
    for t in np.unique(types[rows]):
        ref = fit[types[fit] == t]
        at = np.flatnonzero(types[rows] == t)
        if len(ref) < 2:
            continue
        kk = int(min(k + 1, len(ref)))
        d, idx = NearestNeighbors(n_neighbors=kk).fit(codes[ref]).kneighbors(codes[rows[at]])
        own = ref[idx] == rows[at][:, None]  # drop the seed itself when it is a fit cell
        d = np.where(own, np.inf, d)
        d.sort(axis=1)
        radius[at] = np.where(np.isfinite(d[:, min(k, kk) - 1]), d[:, min(k, kk) - 1], d[:, 0])
    ok = np.isfinite(radius) & (radius > 0)
    radius[~ok] = np.median(radius[ok]) if ok.any() else 1.0
    return torch.from_numpy(radius.astype(np.float32)).to(data.codes.device)


def _lib_params_of(meta: dict) -> torch.Tensor:
    return meta["lib_params"].float()


def _seed_table(is_seed, types, conds, n_types, n_conds):
    """Seed rows grouped by type x condition; a group without seeds borrows its type's seeds."""
    rows, start, count = [], [], []
    for t in range(n_types):
        type_seeds = np.flatnonzero(is_seed & (types == t))
        for c in range(n_conds):
            own = type_seeds[conds[type_seeds] == c]
            use = own if len(own) else type_seeds
            start.append(sum(len(r) for r in rows))
            count.append(len(use))
            rows.append(use)
    seed_rows = np.concatenate(rows).astype(np.int64) if rows else np.zeros(0, dtype=np.int64)
    return seed_rows, np.asarray(start, dtype=np.int64), np.asarray(count, dtype=np.int64)


def _gene_metadata(var: pd.DataFrame) -> dict:
    """The input's own gene columns (strings), without preprocess's HVG statistics."""
    keep = [c for c in var.columns if c not in _PREPROCESS_VAR]
    return {str(c): var[c].astype(str).tolist() for c in keep}


def _var_frame(meta: dict) -> pd.DataFrame:
    var = pd.DataFrame(meta.get("var") or {}, index=pd.Index(meta["var_names"]).astype(str))
    return var


def _bad_rows(x: sp.csr_matrix, train_hashes: set) -> np.ndarray:
    empty = np.diff(x.indptr) == 0
    if not train_hashes:
        return empty
    return empty | np.fromiter((h in train_hashes for h in _row_hashes(x)), bool, x.shape[0])


def _replace_rows(x: sp.csr_matrix, rows: np.ndarray, new: sp.csr_matrix) -> sp.csr_matrix:
    keep = np.ones(x.shape[0], dtype=bool)
    keep[rows] = False
    # rebuild in row order: rows to replace come from *new*, the others from *x*
    order = np.empty(x.shape[0], dtype=np.int64)
    kept = np.flatnonzero(keep)
    stacked = sp.vstack([x[kept], new], format="csr")
    order[kept] = np.arange(len(kept))
    order[rows] = len(kept) + np.arange(len(rows))
    return stacked[order]


def _hash_tensor(counts) -> torch.Tensor:
    h = _row_hashes(counts)
    return torch.from_numpy(np.frombuffer(b"".join(h), dtype=np.uint8).reshape(len(h), 16).copy())


def _hash_rows_from_tensor(t: torch.Tensor) -> list[bytes]:
    arr = t.numpy()
    return [arr[i].tobytes() for i in range(arr.shape[0])]


def _available_ram() -> int:
    """Available memory, capped by the cgroup limit of a container or a scheduler's job (so a
    task retried with more memory sees its larger limit); preprocess's reading of /proc and the
    cgroup files."""
    from ..preprocess import available_memory_bytes

    return int(available_memory_bytes())


def _h5_safe(obj):
    """None -> "" recursively (h5ad cannot store None in uns)."""
    if obj is None:
        return ""
    if isinstance(obj, dict):
        return {str(k): _h5_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_h5_safe(v) for v in obj]
    return obj
