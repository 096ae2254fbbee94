"""Training loops in optimiser steps: autoencoder, dispersion refit, decoder, adversarial phase.

Every phase runs a number of optimiser steps chosen from the data size
(``GANConfig.schedule``), so one set of defaults serves 800 cells and
1,000,000.  About ``N_CHECKS`` times per phase the validation cells (train
cells held out from fitting) are scored and the score is logged
(``val_score``).  Only the adversarial phase can stop early, and only when
``patience`` > 0 (off by default): after ``patience`` checks without a
``MIN_DELTA`` improvement, never before ``MIN_FRACTION`` of its steps (gene
space and the original mode have no validation score and run every step).
The autoencoder and decoder phases run their whole schedule
(``Trainer._run_phase`` says why).  No phase rewinds: the last state is kept.

Random sources: one CPU ``torch.Generator`` picks minibatch rows (the counts
live in a CPU sparse matrix); a generator on the training device draws noise,
seed picks and library sizes there, so nothing is copied per step.  On the
CPU both are the same generator.  Their states travel in the checkpoint, so
``--resume`` continues the same stream.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from .._norm import log_normalize_torch
from .._utils import atomic_path, progress
from ..errors import GarageError
from ._config import PRE_LOSS_VALUES, critic_path_value
from ._module import (
    bce_discriminator_loss,
    bce_generator_loss,
    straight_through_counts,
    ns_critic_loss,
    ns_generator_loss,
    wgan_critic_loss,
    wgan_generator_loss,
)

logger = logging.getLogger(__name__)

LOG_COLUMNS = ("phase", "step", "ae_loss", "ae_nll", "ae_kl", "critic_loss", "distance", "gp",
               "generator_loss", "val_score", "seconds")
CKPT_FORMAT = "garage-gan-ckpt/3"  # 3: records the schedule (the default one changed)
# minibatch steps of the dispersion refit (it fits one number per gene, so a fixed budget
# suffices at any data size; on PBMC 3k 400 x 128 cells gives median theta 2.40, a separate
# 300 x 512-cell refit 2.45)
DISP_STEPS = 400
DISP_LR = 0.05
DECODER_LR = 3e-4  # decoder fine-tuning starts from a trained decoder: a small step
N_CHECKS = 40  # validation checks per phase (at most); also the log's rows per phase
MIN_FRACTION = 1 / 3  # a phase never stops before this share of its steps (warm-ups, GAN transients)
MIN_DELTA = 0.02  # a validation score must improve by 2 % to count as an improvement
MAX_VAL_CELLS = 4000  # validation cells scored per check (bounded cost at any data size)
GEN_VAL_FACTOR = 4  # generated codes per validation cell in the adversarial phase's check


@dataclass
class TrainData:
    """What the loops need, prepared once by the model from the AnnData (rows = train cells)."""

    counts: sp.csr_matrix  # train cells x HVGs
    types: torch.Tensor  # long, train cells
    conds: torch.Tensor  # long, train cells (all 0 without a condition)
    n_conds: int
    fit_rows: np.ndarray  # rows the networks are fitted on
    val_rows: np.ndarray  # rows held out for the stopping rules
    seed_rows: torch.Tensor  # long, rows of counts that are seeds, grouped by group
    seed_start: torch.Tensor  # long, n_groups: first position of each group's seeds
    seed_count: torch.Tensor  # long, n_groups: number of seeds usable by the group
    lib_params: torch.Tensor  # float, n_groups x 2: (mean, sd) of log library size
    loglib: torch.Tensor  # float, train cells: log HVG library size
    seed_codes: torch.Tensor | None = None  # seeds' representation (latent / PCA / profile)
    codes: torch.Tensor | None = None  # standardised codes of all train cells (latent space)
    code_sd: torch.Tensor | None = None  # their standardised posterior sd (GANConfig.posterior_noise > 0)
    seed_radius: torch.Tensor | None = None  # per seed position: distance to its k-th real neighbour
    # within-type states (GANConfig.type_states): the networks' label of a cell is
    # type * k_states + state; with k_states = 1 it is the type, and the seed table is per type
    k_states: int = 1
    labels: torch.Tensor | None = None  # long, train cells: the networks' label (set by prepare_codes)
    state_counts: torch.Tensor | None = None  # long, (n_types * k_states) x n_conds: fit cells per state
    # --state-gate: per type index that the size rule lets split, (its best k, that k's silhouette excess)
    state_excess: dict | None = None
    names: np.ndarray | None = None  # train cell names (the seed names of the saved model)

    @property
    def n(self) -> int:
        return self.counts.shape[0]

    def group(self, types: torch.Tensor, conds: torch.Tensor) -> torch.Tensor:
        return types * self.n_conds + conds

    def batch_counts(self, idx, device) -> torch.Tensor:
        idx = idx.cpu().numpy() if torch.is_tensor(idx) else np.asarray(idx)
        return torch.from_numpy(self.counts[idx].toarray()).to(device)


def sample_library(lib_params: torch.Tensor, groups: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Library sizes from each group's log-normal (``lib_params[g] = (mean, sd)`` of log size)."""
    p = lib_params[groups]
    z = torch.randn(groups.shape[0], generator=gen, device=p.device, dtype=p.dtype)
    return (p[:, 0] + p[:, 1] * z).exp().clamp_min(1.0)


def sample_library_conditional(lib_params: torch.Tensor, groups: torch.Tensor, codes: torch.Tensor,
                               coef: torch.Tensor, code_mean: torch.Tensor, resid_scale: float,
                               gen: torch.Generator) -> torch.Tensor:
    """Library sizes whose log mean follows the code: ``mean_g + (code - code_mean_g) . coef``, with
    the group's sd times *resid_scale* (the part the code does not explain)."""
    p = lib_params[groups]
    shift = (codes[:, : coef.shape[0]] - code_mean[groups]) @ coef
    z = torch.randn(groups.shape[0], generator=gen, device=p.device, dtype=p.dtype)
    return (p[:, 0] + shift + resid_scale * p[:, 1] * z).exp().clamp_min(1.0)


#: levels of a group's depth quantile table (``--library depth``): (i + 0.5) / 40, 1.25 % to 98.75 %;
#: generation interpolates between them and extends the end segments by half a level
DEPTH_LEVELS = 40
#: fit cells a group needs for a table of its own sizes (smoothed); smaller groups get the quantiles
#: of their shrunk log-normal
DEPTH_MIN_CELLS = 100
#: the smoothing kernel's sd is at least this many sds of the group's log sizes, and at least
#: DEPTH_MIN_BANDWIDTH in log units (5 %), whatever the bulk's spread: a tight bulk beside a few far
#: cells would otherwise shrink Silverman's bandwidth until the end quantiles sit on those cells
DEPTH_MIN_BANDWIDTH_SD = 0.2
DEPTH_MIN_BANDWIDTH = 0.05


def depth_standardiser(data: TrainData) -> tuple[float, float]:
    """(mean, sd) of the fit cells' log library sizes: ``--library depth`` feeds the networks
    :func:`depth_feature` of a cell's log size."""
    y = data.loglib[torch.from_numpy(data.fit_rows)].double()
    sd = float(y.std()) if len(y) > 1 else 1.0
    return float(y.mean()), (sd if sd > 1e-6 else 1.0)


def depth_feature(logd: torch.Tensor, mean: float, sd: float) -> torch.Tensor:
    """The networks' depth input (one column): the standardised log size."""
    return ((logd - mean) / sd).unsqueeze(1)


def smoothed_quantiles(y: np.ndarray, levels: np.ndarray, bins: int = 2048) -> np.ndarray:
    """Quantiles of a Gaussian kernel density of *y*: Silverman's bandwidth, floored at
    DEPTH_MIN_BANDWIDTH_SD sds and at DEPTH_MIN_BANDWIDTH, so no stored value is one of the sizes
    and the end levels do not sit on the extreme cells.  (Like a log-normal's mean and sd, the
    table is still a function of all the sizes: someone who knew every other cell of the group
    could solve for the last one.)  The sizes are binned first (*bins* bins), which keeps the cost
    flat in the number of cells."""
    from scipy.stats import norm

    y = np.asarray(y, dtype=np.float64)
    sd = float(y.std())
    iqr = float(np.subtract(*np.percentile(y, [75, 25])))
    spread = min(sd, iqr / 1.34) if iqr > 0 else sd
    h = max(0.9 * spread * len(y) ** -0.2, DEPTH_MIN_BANDWIDTH_SD * sd, DEPTH_MIN_BANDWIDTH)
    edges = np.linspace(y.min() - 1e-9, y.max() + 1e-9, bins + 1)
    w, _ = np.histogram(y, edges)
    centres = 0.5 * (edges[1:] + edges[:-1])
    grid = np.linspace(y.min() - 4 * h, y.max() + 4 * h, 2 * bins)
    cdf = (norm.cdf((grid[:, None] - centres[None, w > 0]) / h) * (w[w > 0] / w.sum())).sum(1)
    return np.interp(levels, cdf, grid)


def depth_quantiles(loglib: np.ndarray, groups: np.ndarray, lib_params: np.ndarray,
                    min_cells: int = DEPTH_MIN_CELLS) -> np.ndarray:
    """Per group (rows of *lib_params*), the log sizes at levels ``(i + 0.5) / DEPTH_LEVELS``: the
    smoothed quantiles (:func:`smoothed_quantiles`) of its fit cells' log sizes where it has at least
    *min_cells*, else the quantiles of its (shrunk) log-normal ``lib_params[g] = (mean, sd)``."""
    out = lognormal_quantiles(lib_params)
    for g in range(len(lib_params)):
        y = loglib[groups == g]
        if len(y) >= min_cells:
            out[g] = smoothed_quantiles(y, depth_levels())
    return out.astype(np.float32)


def depth_levels() -> np.ndarray:
    """The table's levels, ``(i + 0.5) / DEPTH_LEVELS``."""
    return (np.arange(DEPTH_LEVELS) + 0.5) / DEPTH_LEVELS


def lognormal_quantiles(params: np.ndarray) -> np.ndarray:
    """Rows ``(mean, sd)`` of log-normals (log scale) -> their log sizes at the table's levels."""
    from scipy.stats import norm

    params = np.asarray(params, dtype=np.float64)
    return params[:, :1] + params[:, 1:2] * norm.ppf(depth_levels())[None, :]


def sample_depth(table: torch.Tensor, groups: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Log sizes drawn from each group's quantile table (:func:`depth_quantiles`): a uniform level,
    linear between the stored levels and along the first / last segment beyond them."""
    k = table.shape[1]
    u = torch.rand(groups.shape[0], generator=gen, device=table.device, dtype=table.dtype)
    pos = (u * k - 0.5).clamp(-0.5, k - 0.5)  # in units of levels; -0.5 and k - 0.5 are u = 0 and 1
    lo = pos.floor().long().clamp(0, k - 2)
    w = pos - lo.to(pos.dtype)
    t = table[groups]
    a, b = t.gather(1, lo.unsqueeze(1)).squeeze(1), t.gather(1, (lo + 1).unsqueeze(1)).squeeze(1)
    return a + w * (b - a)


def pick_seeds(data: TrainData, labels: torch.Tensor, conds: torch.Tensor, seed_mix: float,
               gen: torch.Generator):
    """Per sample: whether a seed is mixed in, and which one (position in seed_rows/seed_codes).

    *labels* are the networks' labels (the types when there are no within-type states): the seed
    table is grouped by label x condition, so a cell's seed comes from its own state."""
    g = data.group(labels, conds)
    count = data.seed_count.to(g.device)[g]
    has = count > 0
    mask = (torch.rand(g.shape[0], generator=gen, device=g.device) < seed_mix) & has
    pos = data.seed_start.to(g.device)[g] + (
        torch.rand(g.shape[0], generator=gen, device=g.device) * count.clamp_min(1)).long()
    pos = torch.where(mask, pos, torch.zeros_like(pos))
    return mask, pos


def state_probs(state_counts: torch.Tensor, k_states: int, n_conds: int) -> torch.Tensor:
    """Per type x condition group, the probability of each of its type's states (a
    ``(n_types * n_conds) x k_states`` table) from the fit cells per state and condition.

    A group without fit cells (a counterfactual) uses its type's states over all conditions."""
    c = state_counts.double().reshape(-1, k_states, n_conds).permute(0, 2, 1)  # types x conds x states
    by_type = c.sum(1, keepdim=True).expand_as(c)
    c = torch.where(c.sum(2, keepdim=True) > 0, c, by_type)
    empty = c.sum(2) == 0
    c[..., 0] = torch.where(empty, torch.ones_like(c[..., 0]), c[..., 0])
    return (c / c.sum(2, keepdim=True)).reshape(-1, k_states).float()


def draw_labels(types: torch.Tensor, conds: torch.Tensor, probs: torch.Tensor | None, k_states: int,
                n_conds: int, gen: torch.Generator) -> torch.Tensor:
    """The networks' labels of cells to generate: their type, refined by a state drawn from the
    state shares of their type x condition (*probs*, from :func:`state_probs`)."""
    if k_states <= 1 or probs is None:
        return types
    p = probs.to(types.device)[types * n_conds + conds]
    s = torch.multinomial(p, 1, generator=gen).squeeze(1)
    return types * k_states + s


#: rows of one kernel block in mmd2: a block is MMD_BLOCK x len(y) floats (about 64 MB at the
#: 16,000 codes of a check), so the score never holds a whole n x n kernel matrix
MMD_BLOCK = 1024


def mmd2(a: torch.Tensor, b: torch.Tensor, scales: torch.Tensor) -> float:
    """Biased multi-bandwidth RBF MMD^2 between two sets of codes (validation score).

    Kernel means are summed over row blocks: the same value as the full matrices, in bounded
    memory (the full 16,000 x 16,000 matrices of a large-data check were ~1 GB each)."""
    if a.shape[0] == 0 or b.shape[0] == 0:
        return float("nan")  # no codes on one side: no score (the caller logs it as missing)

    def kmean(x, y):
        total = 0.0
        for i in range(0, x.shape[0], MMD_BLOCK):
            d = torch.cdist(x[i:i + MMD_BLOCK], y).pow_(2)
            total += float(sum(torch.exp(-d / s).sum() for s in scales))
        return total / (len(scales) * x.shape[0] * y.shape[0])

    return kmean(a, a) + kmean(b, b) - 2 * kmean(a, b)


@dataclass
class Stopper:
    """The adversarial phase's stopping rule: stop after *patience* validation checks without a
    relative improvement of MIN_DELTA; the last state is kept (no rewinding)."""

    patience: int
    best: float = math.inf
    bad: int = 0

    def update(self, score: float) -> bool:
        """Record *score*; return True when the phase should stop."""
        if score < self.best * (1.0 - MIN_DELTA) or not math.isfinite(self.best):
            self.best, self.bad = min(score, self.best), 0
        else:
            self.bad += 1
            self.best = min(score, self.best)
        return self.patience > 0 and self.bad >= self.patience


@dataclass
class TrainState:
    phase: str = "ae"  # "ae" | "decoder" | "gan" | "done"
    step: int = 0  # completed steps in the current phase
    rows: list = field(default_factory=list)
    stopper: Stopper | None = None


class Trainer:
    """Runs the phases of one GAN model with checkpointing and validation stopping."""

    def __init__(self, net, data: TrainData, config, device, gen: torch.Generator,
                 ckpt_path: Path | None, config_dict: dict):
        self.net, self.data, self.cfg, self.device, self.gen = net, data, config, device, gen
        self.dgen = gen if device.type == "cpu" else torch.Generator(device=device).manual_seed(int(config.seed))
        self.ckpt_path, self.config_dict = ckpt_path, config_dict
        self.steps = config.schedule(len(data.fit_rows))
        latent = config.effective_space == "latent"
        self.state = TrainState(phase="ae" if latent else "gan")
        self.opt_ae = torch.optim.Adam(net.vae.parameters(), lr=config.lr_ae) if net.vae is not None else None
        self.opt_dec = None
        if net.vae is not None:
            self.opt_dec = torch.optim.Adam(
                [*net.vae.decoder.parameters(), *net.vae.px.parameters(), net.vae.log_theta], lr=DECODER_LR)
        betas = (0.5, 0.9) if config.mode == "garage" else (0.5, 0.999)
        self.opt_g = torch.optim.Adam(net.generator.parameters(), lr=config.lr_gan, betas=betas)
        self.opt_d = torch.optim.Adam(net.critic.parameters(), lr=config.lr_gan, betas=betas)
        self._perm: torch.Tensor | None = None
        self._pos = 0
        self._types = data.types.to(device)
        self._conds = data.conds.to(device)
        self._labels = self._types  # the networks' labels; within-type states once codes exist
        # --library depth: every train cell's standardised log size, the generator's and critic's extra input
        self._depth = None
        if config.depth_library:
            self._depth = depth_feature(data.loglib.float(), *depth_standardiser(data)).squeeze(1).to(device)

    # ------------------------------------------------------------------ checkpoint
    def save_checkpoint(self) -> None:
        if self.ckpt_path is None:
            return
        st = self.state.stopper
        payload = {
            "format": CKPT_FORMAT,
            "config": self.config_dict,
            "schedule": dict(self.steps),
            "phase": self.state.phase,
            "step": self.state.step,
            "rows": self.state.rows,
            "stopper": None if st is None else {"patience": st.patience, "best": st.best, "bad": st.bad},
            "net": self.net.state_dict(),
            "opt_ae": self.opt_ae.state_dict() if self.opt_ae else None,
            "opt_dec": self.opt_dec.state_dict() if self.opt_dec else None,
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "gen_state": self.gen.get_state(),
            "dgen_state": self.dgen.get_state(),
            "torch_state": torch.get_rng_state(),
            "perm": self._perm,
            "pos": self._pos,
        }
        with atomic_path(self.ckpt_path) as tmp:
            torch.save(payload, tmp)

    def load_checkpoint(self) -> bool:
        if self.ckpt_path is None or not self.ckpt_path.exists():
            logger.info("no checkpoint at %s; starting from scratch", self.ckpt_path)
            return False
        try:
            ck = torch.load(self.ckpt_path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise GarageError(
                f"cannot read checkpoint {self.ckpt_path.name}: {type(exc).__name__}",
                "delete it and rerun without --resume",
            ) from None
        if ck.get("format") != CKPT_FORMAT:
            raise GarageError(
                f"checkpoint {self.ckpt_path.name} was written by another GARAGE version "
                f"({ck.get('format') or 'no format recorded'}; this one reads {CKPT_FORMAT})",
                "delete the checkpoint and rerun without --resume",
            )
        ck_config = {**PRE_LOSS_VALUES, **(ck.get("config") or {})}  # saved before these options: as trained
        unknown = sorted(set(self.config_dict) - set(ck_config))
        if unknown:
            raise GarageError(
                f"checkpoint {self.ckpt_path.name} was written by an older GARAGE (without the options "
                f"{', '.join(unknown)})",
                "delete the checkpoint and rerun without --resume",
            )
        if "critic_path" in ck_config:
            ck_config["critic_path"] = critic_path_value(ck_config["critic_path"])
        if ck_config != self.config_dict or ck.get("schedule") != dict(self.steps):
            differ = sorted(k for k in self.config_dict if ck_config.get(k) != self.config_dict[k])
            hint = (" (--critic-path auto is on with --shareable-model and off without it)"
                    if "critic_path" in differ else "")
            if "lr_gan" in differ and ck_config.get("lr_gan") is not None:  # the default was 4e-4 in rounds 16-17
                was = repr(float(ck_config["lr_gan"]))
                hint += (f" (it trained with --lr-gan {was}: pass that to resume it, or lr_gan: {was} in the gan "
                         "section of a garage run params file)")
            raise GarageError(
                f"checkpoint {self.ckpt_path.name} was written with different options or training schedule"
                + (f" ({', '.join(differ)}){hint}" if differ else ""),
                "rerun with the same options and input, or delete the checkpoint and rerun without --resume",
            )
        self.net.load_state_dict(ck["net"])
        for opt, key in ((self.opt_ae, "opt_ae"), (self.opt_dec, "opt_dec"), (self.opt_g, "opt_g"),
                         (self.opt_d, "opt_d")):
            if opt is not None and ck[key]:
                opt.load_state_dict(ck[key])
        self.gen.set_state(ck["gen_state"])
        if self.dgen is not self.gen:
            self.dgen.set_state(ck["dgen_state"])
        torch.set_rng_state(ck["torch_state"])
        self._perm, self._pos = ck["perm"], int(ck["pos"])
        st = ck["stopper"]
        stopper = None if st is None else Stopper(st["patience"], st["best"], st["bad"])
        self.state = TrainState(ck["phase"], int(ck["step"]), list(ck["rows"]), stopper)
        logger.info("resumed from %s (%s step %d)", self.ckpt_path.name, self.state.phase, self.state.step)
        return True

    def _maybe_checkpoint(self) -> None:
        every = self.cfg.checkpoint_every
        if every and self.state.step % every == 0:
            self.save_checkpoint()

    # ------------------------------------------------------------------ minibatches
    def _uniform_batch(self, batch_size: int | None = None) -> torch.Tensor:
        """The next minibatch of fit rows (reshuffled after every pass)."""
        rows = self.data.fit_rows
        bs = min(batch_size or self.cfg.batch_size, len(rows))
        if self._perm is None or self._pos + bs > len(self._perm):
            self._perm = torch.from_numpy(rows)[torch.randperm(len(rows), generator=self.gen)]
            self._pos = 0
        out = self._perm[self._pos:self._pos + bs]
        self._pos += bs
        return out

    def _balanced_batch(self, balance: float) -> torch.Tensor:
        """Type-balanced draws: a fit cell of type t has weight n_t ** -balance."""
        if balance <= 0:
            return self._uniform_batch(self.cfg.adversarial_batch_size)
        if not hasattr(self, "_w"):
            rows = torch.from_numpy(self.data.fit_rows)
            t = self.data.types[rows]
            n_t = torch.bincount(t).double()
            self._w, self._rows = n_t[t] ** (-balance), rows
        bs = min(self.cfg.adversarial_batch_size, len(self._rows))
        return self._rows[torch.multinomial(self._w, bs, replacement=True, generator=self.gen)]

    def _packed_rows(self, idx: torch.Tensor, pack: int) -> torch.Tensor:
        """``--critic-pack``: the first ``len(idx) // pack`` rows of a drawn batch, each followed by
        ``pack - 1`` other fit rows of its own label and condition drawn uniformly without replacement,
        so a batch of B cells becomes ``B // pack`` packs (``pack * (B // pack)`` cells), every pack
        holds one group and no cell twice.  A group with fewer than *pack* fit cells must repeat
        cells inside its real packs (a one-cell group: one cell *pack* times), which the critic can
        tell from independent fakes: warned once, with the count."""
        if not hasattr(self, "_pack_rows"):
            rows = torch.from_numpy(self.data.fit_rows)
            self._labels_cpu = self._labels.cpu()
            key = self._labels_cpu[rows] * self.data.n_conds + self.data.conds[rows]
            order = torch.argsort(key, stable=True)
            self._pack_rows = rows[order]  # fit rows grouped by key
            counts = torch.bincount(key, minlength=int(key.max()) + 1 if len(key) else 0)
            self._pack_start = torch.cumsum(counts, 0) - counts
            self._pack_count = counts
            pos = torch.empty(len(rows), dtype=torch.long)
            pos[order] = torch.arange(len(rows))
            self._pack_pos = torch.full((self.data.n,), -1, dtype=torch.long)
            self._pack_pos[rows] = pos  # position of a fit row in the grouped order
            small = (counts > 0) & (counts < pack)
            if bool(small.any()):
                logger.warning("--critic-pack %d: %d label x condition group(s) with %d fit cell(s) in all have "
                               "fewer than %d fit cells, so their real packs repeat cells", pack,
                               int(small.sum()), int(counts[small].sum()), pack)
        anchor = idx[: max(1, len(idx) // pack)]
        key = self._labels_cpu[anchor] * self.data.n_conds + self.data.conds[anchor]
        start, count = self._pack_start[key], self._pack_count[key]
        own = self._pack_pos[anchor] - start
        out, taken = [anchor], own.view(-1, 1)  # group positions already in each pack
        for j in range(pack - 1):
            u = torch.rand(len(anchor), generator=self.gen)
            # without replacement while the group has cells left: a uniform rank among the positions
            # not taken, mapped past the taken ones in ascending order (with P = 2: past the anchor)
            r = (u * (count - taken.shape[1]).clamp_min(1)).long()
            for e in torch.sort(taken, dim=1).values.T:
                r = r + (r >= e).long()
            # a group of fewer than P cells: any cell but the anchor (a one-cell group: the anchor)
            again = (u * (count - 1).clamp_min(1)).long()
            again = torch.where(count > 1, again + (again >= own).long(), own)
            r = torch.where(count > j + 1, r, again)
            taken = torch.cat([taken, r.view(-1, 1)], dim=1)
            out.append(self._pack_rows[start + r])
        return torch.stack(out, dim=1).reshape(-1)

    # ------------------------------------------------------------------ phases
    def fit(self) -> list:
        cfg, steps = self.cfg, self.steps
        latent = cfg.effective_space == "latent"
        total = steps["ae"] + steps["decoder"] + steps["gan"] if latent else steps["gan"]
        offs = {"ae": 0, "decoder": steps["ae"], "gan": steps["ae"] + steps["decoder"] if latent else 0}
        done = total if self.state.phase == "done" else offs[self.state.phase] + self.state.step
        with progress(total=total, initial=done, desc="gan", unit="step") as bar:
            if self.state.phase == "ae":
                self._run_phase("ae", steps["ae"], self._ae_step, self._ae_val, bar)
                # quick and deterministic given the weights, so a resume repeats it
                if cfg.refit_dispersion:
                    self._refit_dispersion()
                self._next_phase("decoder", bar, steps["ae"])
            if self.state.phase == "decoder":
                if steps["decoder"]:
                    self._run_phase("decoder", steps["decoder"], self._decoder_step, self._decoder_val, bar)
                self._next_phase("gan", bar, steps["decoder"])
            if self.state.phase == "gan":
                self.net.prepare_codes(self.data, self.device)
                self._set_labels()
                self._run_phase("gan", steps["gan"], self._gan_step, self._gan_val, bar)
                self.state.phase = "done"
        self.net.prepare_codes(self.data, self.device)
        self._set_labels()
        return self.state.rows

    def _set_labels(self) -> None:
        if self.data.labels is not None:
            self._labels = self.data.labels.to(self.device)

    def _next_phase(self, phase: str, bar, planned: int) -> None:
        bar.update(max(0, planned - self.state.step))
        self.state = TrainState(phase, 0, self.state.rows)

    def _run_phase(self, phase: str, n_steps: int, step_fn, val_fn, bar) -> None:
        """*n_steps* optimiser steps; every n_steps/N_CHECKS a validation check and a log row.

        Only the adversarial phase may stop early (``patience``).  The autoencoder
        phases log their validation NB loss but run their whole schedule: on
        PBMC 3k, keeping the autoencoder at its best validation NB loss (about
        40 % of the schedule) made the synthetic cells easier to tell from real
        ones (C2ST 0.612 vs 0.584 run to the end; bench/results/fidelity_notes.md).
        """
        every = max(1, n_steps // N_CHECKS)
        if self.state.stopper is None:
            self.state.stopper = Stopper(self.cfg.patience if phase == "gan" else 0)
        stopper = self.state.stopper
        sums, n_sum, t0 = np.zeros(7), 0, time.perf_counter()
        min_steps = int(n_steps * MIN_FRACTION)  # (the autoencoder's KL warm-up is this long)
        while self.state.step < n_steps:
            vals = step_fn()
            sums += np.asarray(vals, dtype=float)  # a column is nan for every step of a phase or never
            n_sum += 1
            self.state.step += 1
            bar.update(1)
            if self.state.step % every == 0 or self.state.step == n_steps:
                if not all(math.isfinite(vals[i]) for i in _USED[phase]):
                    raise GarageError(f"{phase} loss became NaN/inf",
                                      "lower --lr-ae / --lr-gan, or raise --batch-size")
                score = val_fn() if len(self.data.val_rows) or phase == "gan" else float("nan")
                stop = False
                if math.isfinite(score):
                    stop = stopper.update(score) and self.state.step >= min_steps
                avg = (sums / max(n_sum, 1)).tolist()
                self.state.rows.append([phase, self.state.step, *[None if np.isnan(v) else v for v in
                                                                  _log_fields(phase, avg)],
                                        score if math.isfinite(score) else None, time.perf_counter() - t0])
                sums, n_sum, t0 = np.zeros(7), 0, time.perf_counter()
                self._maybe_checkpoint()
                if stop:
                    logger.info("%s: validation score has not improved for %d checks; stopping at step %d of %d",
                                phase, stopper.patience, self.state.step, n_steps)
                    bar.update(n_steps - self.state.step)
                    break
            else:
                self._maybe_checkpoint()
        if math.isfinite(stopper.best):
            logger.info("%s: best validation score %.4g (the last state is kept)", phase, stopper.best)

    # ---------------------------------------------------------------- autoencoder
    def _ae_step(self):
        vae, cfg = self.net.vae, self.cfg
        vae.train()
        warm = max(1, int(self.steps["ae"] * MIN_FRACTION))
        kl_w = cfg.kl_weight * min(1.0, (self.state.step + 1) / warm)
        idx = self._uniform_batch()
        x = self.data.batch_counts(idx, self.device)
        out = vae.loss(x, self._conds[idx.to(self.device)], kl_w)
        self.opt_ae.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 50.0)
        self.opt_ae.step()
        return [out.loss.item(), out.nll.item(), out.kl.item(), np.nan, np.nan, np.nan, np.nan]

    def _val_batches(self):
        rows = self.data.val_rows[:MAX_VAL_CELLS]
        for lo in range(0, len(rows), 1024):
            idx = torch.from_numpy(rows[lo:lo + 1024])
            yield idx, self.data.batch_counts(idx, self.device), self._conds[idx.to(self.device)]

    @torch.no_grad()
    def _ae_val(self) -> float:
        """Validation score: NB NLL of the validation cells decoded at their posterior means.

        That is how generation uses the decoder (codes like posterior means), so
        it measures how well the decoder generalises to cells it never saw (the KL
        term, which grows as the encoder uses more of the latent space, is not part
        of the score).  Logged only: the phase runs its whole schedule and keeps
        its last state (see ``_run_phase``).
        """
        return self._decoder_val()

    def _refit_dispersion(self) -> None:
        """Refit the NB inverse dispersion with the trained decoder fixed at each cell's posterior mean.

        During autoencoder training theta also soaks up the spread of sampled codes
        and encoder dropout, which generation (decoded codes, eval mode) does not
        have, so it comes out too small and synthetic counts get too noisy (on PBMC
        3k, decoding the train cells' own codes: C2ST 0.62 with the training theta,
        0.56-0.575 refitted; bench/results/gan_summary.md).  Only theta moves here.
        """
        t0 = time.perf_counter()
        vae = self.net.vae
        vae.eval()
        n_steps = int(min(DISP_STEPS, max(50, self.steps["ae"])))  # short (test) runs refit briefly
        opt = torch.optim.Adam([vae.log_theta], lr=DISP_LR)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / n_steps)
        tot, n = 0.0, 0
        for step in range(n_steps):
            idx = self._uniform_batch()
            x = self.data.batch_counts(idx, self.device)
            c = self._conds[idx.to(self.device)]
            with torch.no_grad():  # only theta moves
                mu = vae.mean_counts(x, vae.encode(x, c)[0], c)
            nll = vae.nb_nll(x, mu)
            opt.zero_grad(set_to_none=True)
            nll.backward()
            opt.step()
            sched.step()
            if step >= n_steps - 25:  # report the converged tail
                tot, n = tot + nll.item(), n + 1
        vae.train()
        if not math.isfinite(tot):
            raise GarageError("dispersion refit became NaN/inf", "rerun with --no-refit-dispersion")
        self.state.rows.append(["disp", n_steps, tot / n, tot / n, None, None, None, None, None, None,
                                time.perf_counter() - t0])
        logger.info("refitted NB dispersion at posterior means: median theta %.2f",
                    float(vae.theta.detach().median()))

    def _decoder_step(self):
        """Decoder fine-tuning on each cell's posterior mean (encoder frozen).

        The autoencoder phase trains the decoder on sampled codes, which blurs it;
        generation decodes codes like the posterior means, so the decoder is refitted
        to them (PBMC 3k, decoding the train cells' own codes and scored with
        ``garage evaluate``: C2ST 0.57-0.59 before, 0.556 after 20 epochs).
        """
        vae = self.net.vae
        vae.eval()  # no dropout in the (frozen) encoder
        idx = self._uniform_batch()
        x = self.data.batch_counts(idx, self.device)
        c = self._conds[idx.to(self.device)]
        with torch.no_grad():
            z = vae.encode(x, c)[0]
        nll = vae.nb_nll(x, vae.mean_counts(x, z, c))
        self.opt_dec.zero_grad(set_to_none=True)
        nll.backward()
        self.opt_dec.step()
        vae.train()
        v = nll.item()
        return [v, v, np.nan, np.nan, np.nan, np.nan, np.nan]

    @torch.no_grad()
    def _decoder_val(self) -> float:
        vae = self.net.vae
        vae.eval()
        tot, n = 0.0, 0
        for idx, x, c in self._val_batches():
            tot += vae.nb_nll(x, vae.mean_counts(x, vae.encode(x, c)[0], c)).item() * len(idx)
            n += len(idx)
        vae.train()
        return tot / max(n, 1)

    # ---------------------------------------------------------------- adversarial
    def _fake(self, types: torch.Tensor, conds: torch.Tensor, generator=None, seeds_out: list | None = None,
              depth: torch.Tensor | None = None):
        """A fake batch in the critic's representation (with gradients); all on the device.

        *seeds_out*, if given, receives ``(mask, pos)``: which samples were seeded, by which seed.
        *depth*: the cells' standardised log sizes (``--library depth``)."""
        net, cfg, data, dev = self.net, self.cfg, self.data, self.device
        g = generator if generator is not None else net.generator
        noise = torch.randn(types.shape[0], cfg.noise_dim, generator=self.dgen, device=dev)
        mix = 1.0 if cfg.mode == "original" else cfg.seed_mix
        mask, pos = pick_seeds(data, types, conds, mix, self.dgen)
        if seeds_out is not None:
            seeds_out += [mask, pos]
        if cfg.mode == "original":
            return self._gene_space(g(noise, data.seed_codes[pos]), types, conds)
        code = data.seed_codes[pos] if data.seed_codes is not None else None
        out = g(noise, types, conds, code, mask, None if depth is None else depth.unsqueeze(1))
        if cfg.effective_space == "latent":
            return out
        return self._gene_space(out, types, conds)

    def _gene_space(self, logits, types, conds):
        lib = sample_library(self.data.lib_params, self.data.group(types, conds), self.dgen)
        mu = torch.softmax(logits, dim=1) * lib.unsqueeze(1)
        return log_normalize_torch(straight_through_counts(mu))

    def _real(self, idx: torch.Tensor):
        if self.cfg.effective_space == "latent":
            didx = idx.to(self.device)
            z = self.data.codes[didx]
            if self.data.code_sd is not None:  # posterior_noise: drawn around the means
                eps = torch.randn(z.shape, generator=self.dgen, device=z.device, dtype=z.dtype)
                z = z + self.cfg.posterior_noise * self.data.code_sd[didx] * eps
            return z
        return log_normalize_torch(self.data.batch_counts(idx, self.device))

    def _gan_step(self):
        net, cfg = self.net, self.cfg
        net.generator.train()
        net.critic.train()
        original = cfg.mode == "original"
        if cfg.lr_decay:  # linear to 0 over the phase, from the step count alone (a resume continues it)
            lr = cfg.lr_gan * max(0.0, 1.0 - self.state.step / max(1, self.steps["gan"]))
            for opt in (self.opt_g, self.opt_d):
                for group in opt.param_groups:
                    group["lr"] = lr
        ns = cfg.gan_loss == "ns-r1"
        d_sum = np.zeros(3)
        for _ in range(cfg.n_critic):
            idx = self._balanced_batch(0.0 if original else cfg.type_balance)
            if not original and cfg.effective_critic_pack > 1:
                idx = self._packed_rows(idx, cfg.effective_critic_pack)
            didx = idx.to(self.device)
            # the networks' labels: the types, or type x within-type state (type_states > 1)
            types, conds = self._labels[didx], self._conds[didx]
            real = self._real(idx)
            ft, fc = (self._original_types(len(idx)) if original else (types, conds))
            # --library depth: a fake cell takes the depth of the real cell it is paired with (same label)
            dep = self._depth[didx] if self._depth is not None else None
            seeds: list = []
            with torch.no_grad():
                fake = self._fake(ft, fc, seeds_out=seeds, depth=dep)
            if original:
                d = bce_discriminator_loss(net.critic, real, fake, cfg.label_smoothing)
            else:
                critic_loss, weight = (ns_critic_loss, cfg.r1_weight) if ns else (wgan_critic_loss, cfg.gp_weight)
                d = critic_loss(net.critic, self._with_depth(self._blur(real), dep),
                                self._with_depth(self._blur(fake), dep), types, weight,
                                conds if self.data.n_conds > 1 else None, self._path(seeds))
            self.opt_d.zero_grad(set_to_none=True)
            d.loss.backward()
            self.opt_d.step()
            d_sum += [d.loss.item(), d.distance.item(), d.gp.item()]
        # generator step on the last batch's types (and conditions)
        if original:
            ft, fc = self._original_types(len(idx))
            gl = bce_generator_loss(net.critic, self._fake(ft, fc))
        else:
            seeds: list = []
            fake = self._fake(types, conds, seeds_out=seeds, depth=dep)
            gl = (ns_generator_loss if ns else wgan_generator_loss)(
                net.critic, self._with_depth(self._blur(fake), dep), types, conds if self.data.n_conds > 1 else None,
                self._path(seeds))
            gl.loss = gl.loss + cfg.seed_floor * self._seed_floor(fake, *seeds)  # the unblurred codes
        self.opt_g.zero_grad(set_to_none=True)
        gl.loss.backward()
        self.opt_g.step()
        if net.generator_ema is not None:
            net.update_ema(cfg.ema_decay)
        d_sum /= cfg.n_critic
        return [np.nan, np.nan, np.nan, *d_sum.tolist(), gl.loss.item()]

    def _blur(self, x: torch.Tensor) -> torch.Tensor:
        """Instance noise (``--instance-noise``): the critic's view of a batch of codes, real or fake,
        with fresh Gaussian noise of that sd in standardised code units; *x* itself when off (no draw,
        so a run without it keeps its random stream)."""
        s = self.cfg.instance_noise
        if not s or not self.cfg.instance_noise_applies:
            return x
        return x + s * torch.randn(x.shape, generator=self.dgen, device=x.device, dtype=x.dtype)

    @staticmethod
    def _with_depth(x: torch.Tensor, depth: torch.Tensor | None) -> torch.Tensor:
        """The critic's input: codes, with each cell's standardised log size beside them under
        ``--library depth`` (real and fake rows of a pair share it, so the gradient penalty's
        interpolates keep it; the penalised gradient norm includes the critic's slope along the
        depth, which the pairs never move)."""
        return x if depth is None else torch.cat([x, depth.unsqueeze(1).to(x.dtype)], dim=1)

    def _path(self, seeds: list) -> torch.Tensor | None:
        """The critic's path flag (1: seeded fake) when it takes one: the real cell paired with fake i
        gets fake i's flag, so seeded and unseeded fakes are each held to the real cells."""
        if not getattr(self.net.critic, "path_input", False):
            return None
        return seeds[0].to(torch.float32)

    def _seed_floor(self, fake: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Privacy penalty: seeded codes closer to their own seed than the seed's k-th neighbour.

        ``mean over seeded cells of relu(1 - ||fake - seed|| / r_seed) ** 2``; 0 when
        the floor is off, no cell is seeded, or the space is not latent.
        """
        r = self.data.seed_radius
        if r is None or self.cfg.seed_floor <= 0 or not bool(mask.any()):
            return fake.new_zeros(())
        d = (fake[mask] - self.data.seed_codes[pos[mask]]).norm(dim=1)
        return torch.relu(1.0 - d / r[pos[mask]]).pow(2).mean()

    def _original_types(self, n: int):
        """``original`` mode: uniformly random seed cells decide the types of a fake batch."""
        pos = torch.randint(0, self.data.seed_rows.shape[0], (n,), generator=self.gen)
        rows = self.data.seed_rows[pos].to(self.device)
        return self._types[rows], self._conds[rows]

    @torch.no_grad()
    def _gan_val(self) -> float:
        """Validation score of the generator that will generate (EMA if on): MMD^2 between
        codes generated for the validation cells' types (and conditions) and their real codes.
        Falls back to the fit cells when there are no validation cells; gene space and the
        original mode have no stopping rule (nan)."""
        if self.cfg.effective_space != "latent" or self.cfg.mode == "original":
            return float("nan")
        rows = self.data.val_rows if len(self.data.val_rows) >= 20 else self.data.fit_rows
        rows = torch.from_numpy(rows[:MAX_VAL_CELLS]).to(self.device)
        real = self.data.codes[rows]
        types = self._labels[rows].repeat(GEN_VAL_FACTOR)
        conds = self._conds[rows].repeat(GEN_VAL_FACTOR)
        g = self.net.generator_ema if self.net.generator_ema is not None else self.net.generator
        was = g.training
        g.eval()
        depth = self._depth[rows].repeat(GEN_VAL_FACTOR) if self._depth is not None else None
        state = self.dgen.get_state()
        self.dgen.manual_seed(int(self.cfg.seed) + 7919)  # the same draws at every check
        fake = self._fake(types, conds, generator=g, depth=depth)
        self.dgen.set_state(state)
        g.train(was)
        if not hasattr(self, "_scales"):
            d = torch.cdist(real[:1000], real[:1000]).pow(2)
            med = d[d > 0].median() if (d > 0).any() else torch.tensor(1.0, device=d.device)
            self._scales = med * torch.tensor([0.25, 1.0, 4.0], device=d.device)
        return mmd2(fake, real, self._scales)


#: which of a step's 7 values each phase fills (the others are nan by design)
_USED = {"ae": (0, 1, 2), "decoder": (0, 1), "gan": (3, 4, 5, 6)}


def _log_fields(phase: str, avg: list) -> list:
    """The 8 loss columns of the log from a step's 7 values (ae 3, critic 3, generator 1)."""
    return [*avg[:3], *avg[3:6], avg[6]]


def write_log(rows: list, path: Path) -> Path:
    lines = ["\t".join(LOG_COLUMNS)]
    for r in rows:
        lines.append("\t".join("" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v)) for v in r))
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return path
