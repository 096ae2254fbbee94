"""AnnData-facing GAN model: setup from a seeds AnnData, train, save, load, generate.

Privacy note: ``PREFIX.generator.pt`` holds what generation needs and nothing
more.  In the default ``garage`` mode that is the generator, the VAE *decoder*
(no encoder), the seeds' standardised latent codes (``space='latent'``) or
standardised 50-PC coordinates (``space='gene'``) with their obs names, and a
101-point quantile summary of each type's library sizes.  ``mode='original'``
feeds real seed profiles to its generator, so it must store the seeds'
log-normalised HVG profiles: treat such a model file like the data itself.
Every model also stores a 16-byte BLAKE2 digest per training cell so that
``garage generate`` can refuse exact copies without the training data.
"""

from __future__ import annotations

import copy

import logging
import os
from dataclasses import fields
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from torch import nn

from .. import __version__
from .. import constants as C
from .._norm import log_normalize
from .._utils import versions
from ..baselines import _row_hashes, synthetic_anndata
from ..errors import GarageError
from ._config import GANConfig, parse_cells_per_type
from ._module import (
    ConditionalCritic,
    ConditionalGenerator,
    CountVAE,
    OriginalDiscriminator,
    OriginalGenerator,
)
from ._nn import sample_counts
from ._train import TrainData, Trainer, sample_library

logger = logging.getLogger(__name__)

MODEL_FORMAT = "garage-generator/1"
N_QUANTILES = 101
GEN_CHUNK = 2048
#: state-dict prefixes that never leave the training process (critic, encoder)
PRIVATE_PREFIXES = ("critic.", "vae.encoder.", "vae.z_mean.", "vae.z_logvar.")


# --------------------------------------------------------------------------- composition
def composition_counts(
    categories: list[str],
    train_counts: list[int],
    n_cells: int | None,
    composition: str = "original",
    cells_per_type=None,
    rare_threshold: float = C.RARE_THRESHOLD,
) -> dict[str, int]:
    """Number of synthetic cells per type.

    Types named in *cells_per_type* get exactly that many cells; the rest of
    *n_cells* (default: the number of train cells) is shared among the other
    types by *composition* (largest-remainder rounding):

    - ``original``: in proportion to the train cells;
    - ``balanced``: equally;
    - ``uniform-rare-boost``: every rare type (< *rare_threshold* of the train
      cells) gets an equal ``1 / n_types`` share, common types share the rest
      in proportion to the train cells.
    """
    from ._config import COMPOSITIONS, parse_cells_per_type

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
            rare = frac < rare_threshold
            k = len(categories)
            w = np.where(rare, 1.0 / k, 0.0)
            common = ~rare
            if common.any():
                w[common] = (1.0 - rare.sum() / k) * counts[common] / counts[common].sum()
        w = w[free]
        if w.sum() <= 0:
            w = np.ones(len(free))
        share = w / w.sum() * rest
        base = np.floor(share).astype(int)
        left = rest - base.sum()
        order = np.argsort(-(share - base), kind="stable")[:left]
        base[order] += 1
        for j, i in enumerate(free):
            out[categories[i]] = int(base[j])
    if sum(out.values()) == 0:
        raise GarageError("the requested composition has zero cells", "ask for at least one cell")
    return out


# --------------------------------------------------------------------------- network container
class GANNet(nn.Module):
    """Holds the VAE (latent space), the generator and the critic of one model."""

    def __init__(self, cfg: GANConfig, n_genes: int, n_types: int, seed_dim: int):
        super().__init__()
        self.cfg = cfg
        space = cfg.effective_space
        self.vae = None
        if cfg.mode == "original":
            self.generator = OriginalGenerator(n_genes, cfg.noise_dim, cfg.hidden)
            self.critic = OriginalDiscriminator(n_genes, cfg.hidden)
        elif space == "latent":
            self.vae = CountVAE(n_genes, cfg.n_latent, cfg.hidden)
            self.generator = ConditionalGenerator(
                cfg.noise_dim, n_types, cfg.type_emb_dim, seed_dim, cfg.hidden, cfg.n_latent,
                residual=cfg.seed_residual,
            )
            self.critic = ConditionalCritic(cfg.n_latent, n_types, cfg.type_emb_dim, cfg.hidden)
        else:
            self.generator = ConditionalGenerator(
                cfg.noise_dim, n_types, cfg.type_emb_dim, seed_dim, cfg.hidden, n_genes
            )
            self.critic = ConditionalCritic(n_genes, n_types, cfg.type_emb_dim, cfg.hidden)
        # garage mode generates with an exponential moving average of the generator's
        # weights (smooths the last steps' oscillation; latent C2ST on PBMC 3k 0.66 -> 0.58)
        self.generator_ema = None
        if cfg.mode == "garage" and cfg.ema_decay > 0:
            self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False)
            self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        n_lat = cfg.n_latent if self.vae is not None else 0
        self.register_buffer("z_mean", torch.zeros(n_lat))
        self.register_buffer("z_std", torch.ones(n_lat))

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
        """Latent space: standardised latent means of all train cells and of the seeds."""
        if self.vae is None:
            return
        self.vae.eval()
        means = []
        for lo in range(0, data.n, GEN_CHUNK):
            idx = torch.arange(lo, min(lo + GEN_CHUNK, data.n))
            means.append(self.vae.encode(data.batch_counts(idx, device))[0].cpu())
        z = torch.cat(means)
        self.z_mean.copy_(z.mean(0))
        self.z_std.copy_(z.std(0).clamp_min(1e-4))
        data.codes = ((z - z.mean(0)) / self.z_std.cpu()).float()
        data.seed_codes = data.codes[data.seed_rows] if data.seed_rows.numel() else None
        self.vae.train()

    @torch.no_grad()
    def proportions(self, types, noise, seed_code, seed_mask) -> torch.Tensor:
        """Expression proportions of generated cells (eval mode)."""
        if self.cfg.mode == "original":
            return torch.softmax(self.generator(noise, seed_code), dim=1)
        g = self.generator_ema if self.generator_ema is not None else self.generator
        out = g(noise, types, seed_code, seed_mask)
        if self.vae is None:
            return torch.softmax(out, dim=1)
        z = out * self.z_std + self.z_mean
        return self.vae.proportions(z)


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
        codes = pd.Categorical(labels, categories=categories).codes.astype(np.int64)
        names = np.asarray(adata.obs_names).astype(str)[train]
        n_types = len(categories)
        train_counts = np.bincount(codes, minlength=n_types)

        lib = np.asarray(counts.sum(1)).ravel()
        qs = np.linspace(0, 1, N_QUANTILES)
        lib_q = np.stack([np.quantile(lib[codes == k], qs) for k in range(n_types)]).astype(np.float32)

        if needs_seeds:
            is_seed = np.asarray(adata.obs[C.OBS_SEED]).astype(bool)[train]
        else:
            is_seed = np.zeros(len(labels), dtype=bool)
        order = np.argsort(codes[is_seed], kind="stable")
        seed_rows = np.flatnonzero(is_seed)[order]
        seed_count = np.bincount(codes[seed_rows], minlength=n_types)
        seed_start = np.concatenate([[0], np.cumsum(seed_count)[:-1]])
        if needs_seeds and len(seed_rows) == 0:
            raise GarageError(
                "no train cell is marked in obs['garage_seed']",
                "rerun `garage gat` (it marks seeds), or use --seed-mix 0",
            )
        no_seed = [categories[k] for k in range(n_types) if seed_count[k] == 0]
        if needs_seeds and no_seed:
            logger.warning("types without seed cells (generated from noise + type only): %s", no_seed)

        logx = None
        seed_dim = 0
        space = config.effective_space
        seed_codes = None
        if config.mode == "original":
            seed_codes = torch.from_numpy(log_normalize(counts[seed_rows]).toarray())
            seed_dim = counts.shape[1]
        elif space == "gene" and config.seed_mix > 0:
            from sklearn.decomposition import PCA

            logx = log_normalize(counts).toarray()
            n_pc = int(min(50, logx.shape[0] - 1, logx.shape[1] - 1))
            pcs = PCA(n_components=n_pc, random_state=config.seed).fit_transform(logx)
            pcs = (pcs - pcs.mean(0)) / pcs.std(0).clip(1e-6)
            seed_codes = torch.from_numpy(pcs[seed_rows].astype(np.float32))
            seed_dim = n_pc
        elif space == "latent" and config.seed_mix > 0:
            seed_dim = config.n_latent
        del logx

        data = TrainData(
            counts=counts,
            types=torch.from_numpy(codes),
            seed_rows=torch.from_numpy(seed_rows.astype(np.int64)),
            seed_start=torch.from_numpy(seed_start.astype(np.int64)),
            seed_count=torch.from_numpy(seed_count.astype(np.int64)),
            lib_quantiles=torch.from_numpy(lib_q),
            seed_codes=seed_codes,
        )
        net = GANNet(config, counts.shape[1], n_types, seed_dim)
        thr = config.rare_threshold
        meta = {
            "var_names": [str(v) for v in adata.var_names],
            "categories": categories,
            "train_type_counts": [int(v) for v in train_counts],
            "rare_types": [categories[k] for k in range(n_types) if train_counts[k] / len(labels) < thr],
            "seed_names": names[seed_rows].tolist(),
            "seed_dim": int(seed_dim),
            "train_hashes": _hash_tensor(counts),
            "sample": str(adata.uns.get(C.UNS_KEY, {}).get("sample", "")),
        }
        return cls(config, net, meta, data)

    # ---------------------------------------------------------------- memory guard
    def check_memory(self, device: torch.device) -> int:
        """Estimate peak bytes; raise a GarageError suggesting a smaller batch if it won't fit."""
        cfg, g = self.config, len(self.meta["var_names"])
        n_params = sum(p.numel() for p in self.net.parameters())
        per_batch = cfg.batch_size * g * 4 * (40 if cfg.effective_space == "gene" else 16)
        gen = GEN_CHUNK * g * 4 * 8
        est = n_params * 4 * 4 + max(per_batch, gen)
        if device.type == "cuda":
            free = torch.cuda.mem_get_info(device)[0]
        else:
            est += self.data.counts.data.nbytes * 3 if self.data is not None else 0
            free = _available_ram()
        if free and est > 0.8 * free:
            raise GarageError(
                f"training needs about {est / 2**30:.1f} GiB but only {free / 2**30:.1f} GiB is free on {device.type}",
                f"lower --batch-size (now {cfg.batch_size}) or --hidden, or use a larger node",
            )
        return est

    # ---------------------------------------------------------------- train
    def train(self, device, ckpt_path: Path | None = None, resume: bool = False) -> list:
        if self.data is None:
            raise GarageError("this model was loaded for generation only", "train a new model with `garage gan`")
        self.net.to(device)
        gen = torch.Generator().manual_seed(int(self.config.seed))
        # options that do not change training may differ between a run and its --resume
        train_opts = {k: v for k, v in self.config.to_dict().items()
                      if k not in ("n_cells", "composition", "cells_per_type", "checkpoint_every")}
        trainer = Trainer(self.net, self.data, self.config, device, gen, ckpt_path, train_opts)
        if resume:
            trainer.load_checkpoint()
        rows = trainer.fit()
        self.net.eval()
        self.meta["seed_codes"] = (
            self.data.seed_codes.float().cpu() if self.data.seed_codes is not None else torch.zeros(0)
        )
        self.meta["seed_start"] = self.data.seed_start
        self.meta["seed_count"] = self.data.seed_count
        self.meta["lib_quantiles"] = self.data.lib_quantiles
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
    ):
        """Synthetic cells as an AnnData with the ``PREFIX.synthetic.h5ad`` schema."""
        cfg, meta = self.config, self.meta
        device = torch.device(device)
        self.net.to(device).eval()
        cats = meta["categories"]
        n_per = composition_counts(cats, meta["train_type_counts"], n_cells, composition,
                                   cells_per_type, cfg.rare_threshold)
        seed_count = meta["seed_count"]
        if cfg.mode == "original":
            missing = [t for t, n in n_per.items() if n > 0 and seed_count[cats.index(t)] == 0]
            if missing:
                raise GarageError(
                    f"--mode original labels cells by their seed's type, and types {missing} have no seeds",
                    "ask only for types with seed cells, or use --mode garage",
                )
        types = torch.from_numpy(np.repeat(np.arange(len(cats)), [n_per[t] for t in cats]).astype(np.int64))
        gen = torch.Generator().manual_seed(int(seed))
        theta = self.net.vae.theta.detach().cpu() if self.net.vae is not None else None
        dist = cfg.effective_count_dist
        train_hashes = set(_hash_rows_from_tensor(meta["train_hashes"]))

        def draw(tt: torch.Tensor):
            noise = torch.randn(tt.shape[0], cfg.noise_dim, generator=gen)
            mix = 1.0 if cfg.mode == "original" else cfg.seed_mix
            has = seed_count[tt] > 0
            mask = (torch.rand(tt.shape[0], generator=gen) < mix) & has
            pos = meta["seed_start"][tt] + (torch.rand(tt.shape[0], generator=gen)
                                            * seed_count[tt].clamp_min(1)).long()
            pos = torch.where(mask, pos, torch.zeros_like(pos))
            code = meta["seed_codes"][pos] if meta["seed_codes"].numel() else None
            prop = self.net.proportions(
                tt.to(device), noise.to(device), None if code is None else code.to(device), mask.to(device)
            ).cpu()
            lib = sample_library(meta["lib_quantiles"], tt, gen)
            x = sample_counts(prop * lib.unsqueeze(1), dist, theta=theta, generator=gen)
            return x.numpy().astype(np.float32), mask.numpy(), pos.numpy()

        blocks, masks, poss = [], [], []
        for lo in range(0, types.shape[0], GEN_CHUNK):
            x, m, p = draw(types[lo:lo + GEN_CHUNK])
            blocks.append(x), masks.append(m), poss.append(p)
        x, mask, pos = np.vstack(blocks), np.concatenate(masks), np.concatenate(poss)
        n_resampled = 0
        for _ in range(20):
            bad = (x.sum(1) == 0) | np.fromiter((h in train_hashes for h in _row_hashes(x)), bool, len(x))
            if not bad.any():
                break
            n_resampled += int(bad.sum())
            xb, mb, pb = draw(types[torch.from_numpy(np.flatnonzero(bad))])
            x[bad], mask[bad], pos[bad] = xb, mb, pb
        else:
            raise GarageError("could not avoid exact copies of training cells after 20 redraws",
                              "train longer or lower --seed-mix")
        if n_resampled:
            logger.info("redrew %d cells that were empty or exact copies of training cells", n_resampled)
        seed_names = np.asarray(meta["seed_names"] or [""], dtype=object)
        seed_cell = np.where(mask, seed_names[np.minimum(pos, len(seed_names) - 1)], "")
        uns = {
            "gan": _h5_safe(cfg.to_dict()),
            "mode": cfg.mode,
            "space": cfg.effective_space,
            "count_dist": dist,
            "n_per_type": {k: int(v) for k, v in n_per.items()},
            "composition": composition,
            "cells_per_type": _h5_safe(dict(parse_cells_per_type(cells_per_type) or ()) or ""),
            "n_cells": int(len(x)),
            "rare_types": list(meta["rare_types"]),
            "exact_copies": 0,
            "redrawn_cells": int(n_resampled),
            "seed": int(seed),
            "train_seed": int(cfg.seed),
            "garage_version": __version__,
            "versions": versions(),
            "sample": meta.get("sample", ""),
        }
        labels = np.asarray(cats, dtype=object)[types.numpy()]
        return synthetic_anndata(x, labels, seed_cell, meta["var_names"], cats, uns)

    # ---------------------------------------------------------------- save / load
    def save(self, path: Path) -> Path:
        from .._utils import atomic_path

        state = {k: v.detach().cpu() for k, v in self.net.state_dict().items()
                 if not k.startswith(PRIVATE_PREFIXES)}
        payload = {
            "format": MODEL_FORMAT,
            "garage_version": __version__,
            "versions": versions(),
            "config": self.config.to_dict(),
            "state_dict": state,
            **{k: v for k, v in self.meta.items()},
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
        if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
            raise GarageError(f"{path.name} is not a GARAGE generator file",
                              "pass the PREFIX.generator.pt written by `garage gan`")
        cfg_d = dict(payload["config"])
        known = {f.name for f in fields(GANConfig)}
        config = GANConfig(**{k: v for k, v in cfg_d.items() if k in known})
        net = GANNet(config, len(payload["var_names"]), len(payload["categories"]), payload["seed_dim"])
        missing, unexpected = net.load_state_dict(payload["state_dict"], strict=False)
        missing = [k for k in missing if not k.startswith(PRIVATE_PREFIXES) and k != "ema_updates"]
        ema_missing = [k for k in missing if k.startswith("generator_ema.")]
        if net.generator_ema is not None and ema_missing and len(ema_missing) == len(net.generator_ema.state_dict()):
            net.generator_ema.load_state_dict(net.generator.state_dict())  # a model saved before EMA existed
            missing = [k for k in missing if not k.startswith("generator_ema.")]
        bad = missing + list(unexpected)
        if bad:
            raise GarageError(f"{path.name} does not match this GARAGE version (keys {bad[:3]})",
                              "retrain with `garage gan`")
        meta = {k: v for k, v in payload.items()
                if k not in ("format", "garage_version", "versions", "config", "state_dict")}
        net.to(torch.device(device)).eval()
        return cls(config, net, meta)


# --------------------------------------------------------------------------- helpers
def _hash_tensor(counts) -> torch.Tensor:
    h = _row_hashes(counts)
    return torch.from_numpy(np.frombuffer(b"".join(h), dtype=np.uint8).reshape(len(h), 16).copy())


def _hash_rows_from_tensor(t: torch.Tensor) -> list[bytes]:
    arr = t.numpy()
    return [arr[i].tobytes() for i in range(arr.shape[0])]


def _available_ram() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover
        try:
            return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError):
            return 0


def _h5_safe(obj):
    """None -> "" recursively (h5ad cannot store None in uns)."""
    if obj is None:
        return ""
    if isinstance(obj, dict):
        return {str(k): _h5_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_h5_safe(v) for v in obj]
    return obj
