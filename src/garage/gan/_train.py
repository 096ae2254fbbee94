"""Training loops: autoencoder phase, adversarial phase, periodic checkpoints.

One ``torch.Generator`` on the CPU drives every data-side random choice
(permutations, noise, seed picks, library sizes), so a fixed seed gives the
same run, and its state travels in the checkpoint so ``--resume`` continues
the same stream.
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
from ._module import (
    bce_discriminator_loss,
    bce_generator_loss,
    straight_through_counts,
    wgan_critic_loss,
    wgan_generator_loss,
)

logger = logging.getLogger(__name__)

LOG_COLUMNS = ("phase", "epoch", "ae_loss", "ae_nll", "ae_kl", "critic_loss", "distance", "gp",
               "generator_loss", "seconds")
CKPT_FORMAT = "garage-gan-ckpt/1"
# minibatch steps of the dispersion refit (it fits one number per gene, so a fixed budget
# suffices at any data size; on PBMC 3k 400 x 128 cells gives median theta 2.40, a separate
# 300 x 512-cell refit 2.45)
DISP_STEPS = 400
DISP_LR = 0.05
DECODER_LR = 3e-4  # decoder fine-tuning starts from a trained decoder: a small step


@dataclass
class TrainData:
    """What the loops need, prepared once by the model from the AnnData."""

    counts: sp.csr_matrix  # train cells x HVGs
    types: torch.Tensor  # long, train cells
    seed_rows: torch.Tensor  # long, rows of counts that are seeds, grouped by type
    seed_start: torch.Tensor  # long, n_types: first position of each type in seed_rows
    seed_count: torch.Tensor  # long, n_types: number of seeds per type
    lib_quantiles: torch.Tensor  # float, n_types x Q: per-type HVG library-size quantiles
    seed_codes: torch.Tensor | None = None  # seeds' representation (latent / PCA / profile)
    codes: torch.Tensor | None = None  # latent codes of all train cells (latent space)

    @property
    def n(self) -> int:
        return self.counts.shape[0]

    def batch_counts(self, idx: torch.Tensor, device) -> torch.Tensor:
        x = self.counts[idx.numpy()].toarray()
        return torch.from_numpy(x).to(device)


def sample_library(lib_quantiles: torch.Tensor, types: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Library sizes drawn from each type's quantile function (inverse-CDF, linear)."""
    q = lib_quantiles[types]  # B x Q
    n_q = q.shape[1]
    u = torch.rand(types.shape[0], generator=gen) * (n_q - 1)
    lo = u.floor().long().clamp(max=n_q - 2)
    w = (u - lo).unsqueeze(1)
    lo = lo.unsqueeze(1)
    return ((1 - w) * q.gather(1, lo) + w * q.gather(1, lo + 1)).squeeze(1).clamp_min(1.0)


def pick_seeds(data: TrainData, types: torch.Tensor, seed_mix: float, gen: torch.Generator):
    """Per sample: whether a seed is mixed in, and which one (index into seed_rows)."""
    has = data.seed_count[types] > 0
    mask = (torch.rand(types.shape[0], generator=gen) < seed_mix) & has
    pos = data.seed_start[types] + (
        torch.rand(types.shape[0], generator=gen) * data.seed_count[types].clamp_min(1)
    ).long()
    pos = torch.where(mask, pos, torch.zeros_like(pos))
    return mask, pos


@dataclass
class TrainState:
    phase: str = "ae"  # "ae" | "gan" | "done"
    epoch: int = 0  # completed epochs in the current phase
    rows: list = field(default_factory=list)


class Trainer:
    """Runs the phases of one GAN model with checkpointing."""

    def __init__(self, net, data: TrainData, config, device, gen: torch.Generator,
                 ckpt_path: Path | None, config_dict: dict):
        self.net, self.data, self.cfg, self.device, self.gen = net, data, config, device, gen
        self.ckpt_path, self.config_dict = ckpt_path, config_dict
        self.state = TrainState(phase="ae" if config.effective_space == "latent" else "gan")
        self.opt_ae = torch.optim.Adam(net.vae.parameters(), lr=config.lr_ae) if net.vae is not None else None
        betas = (0.5, 0.9) if config.mode == "garage" else (0.5, 0.999)
        self.opt_g = torch.optim.Adam(net.generator.parameters(), lr=config.lr_gan, betas=betas)
        self.opt_d = torch.optim.Adam(net.critic.parameters(), lr=config.lr_gan, betas=betas)
        self.opt_dec = None

    # ------------------------------------------------------------------ checkpoint
    def save_checkpoint(self) -> None:
        if self.ckpt_path is None:
            return
        payload = {
            "format": CKPT_FORMAT,
            "config": self.config_dict,
            "phase": self.state.phase,
            "epoch": self.state.epoch,
            "rows": self.state.rows,
            "net": self.net.state_dict(),
            "opt_ae": self.opt_ae.state_dict() if self.opt_ae else None,
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "gen_state": self.gen.get_state(),
            "torch_state": torch.get_rng_state(),
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
        if ck.get("format") != CKPT_FORMAT or ck.get("config") != self.config_dict:
            raise GarageError(
                f"checkpoint {self.ckpt_path.name} was written with different options",
                "rerun with the same options, or delete the checkpoint and rerun without --resume",
            )
        self.net.load_state_dict(ck["net"])
        if self.opt_ae and ck["opt_ae"]:
            self.opt_ae.load_state_dict(ck["opt_ae"])
        self.opt_g.load_state_dict(ck["opt_g"])
        self.opt_d.load_state_dict(ck["opt_d"])
        self.gen.set_state(ck["gen_state"])
        torch.set_rng_state(ck["torch_state"])
        self.state = TrainState(ck["phase"], int(ck["epoch"]), list(ck["rows"]))
        logger.info("resumed from %s (%s epoch %d)", self.ckpt_path.name, self.state.phase, self.state.epoch)
        return True

    def _maybe_checkpoint(self) -> None:
        every = self.cfg.checkpoint_every
        if every and self.state.epoch % every == 0:
            self.save_checkpoint()

    # ------------------------------------------------------------------ phases
    def fit(self) -> list:
        cfg = self.cfg
        latent = cfg.effective_space == "latent"
        pre = (cfg.ae_epochs + cfg.decoder_epochs) if latent else 0
        total = pre + cfg.epochs
        done = self.state.epoch + (pre if self.state.phase == "gan" else 0)
        if self.state.phase == "done":
            done = total
        with progress(total=total, initial=done, desc="gan", unit="epoch") as bar:
            if self.state.phase == "ae":
                while self.state.epoch < cfg.ae_epochs:
                    self._ae_epoch()
                    bar.update(1)
                    self._maybe_checkpoint()
                # both refits are quick and deterministic, so a resume repeats them
                if cfg.refit_dispersion:
                    self._refit_dispersion()
                for epoch in range(cfg.decoder_epochs):
                    self._decoder_epoch(epoch + 1)
                    bar.update(1)
                self.state = TrainState("gan", 0, self.state.rows)
            if self.state.phase == "gan":
                self.net.prepare_codes(self.data, self.device)
                while self.state.epoch < cfg.epochs:
                    self._gan_epoch()
                    bar.update(1)
                    self._maybe_checkpoint()
                self.state.phase = "done"
        self.net.prepare_codes(self.data, self.device)
        return self.state.rows

    def _batches(self, balance: float = 0.0):
        if balance > 0:  # type-balanced draws: a cell of type t has weight n_t ** -balance
            n_t = torch.bincount(self.data.types).double()
            w = n_t[self.data.types] ** (-balance)
            perm = torch.multinomial(w, self.data.n, replacement=True, generator=self.gen)
        else:
            perm = torch.randperm(self.data.n, generator=self.gen)
        bs = self.cfg.batch_size
        n_b = max(1, self.data.n // bs)  # drop the ragged last batch (stable GP / LayerNorm stats)
        for b in range(n_b):
            yield perm[b * bs:(b + 1) * bs] if n_b > 1 else perm

    def _ae_epoch(self) -> None:
        t0 = time.perf_counter()
        vae, cfg = self.net.vae, self.cfg
        vae.train()
        warm = max(1, cfg.ae_epochs // 2)
        kl_w = cfg.kl_weight * min(1.0, (self.state.epoch + 1) / warm)
        tot = np.zeros(3)
        nb = 0
        for idx in self._batches():
            x = self.data.batch_counts(idx, self.device)
            out = vae.loss(x, kl_w)
            self.opt_ae.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 50.0)
            self.opt_ae.step()
            tot += [out.loss.item(), out.nll.item(), out.kl.item()]
            nb += 1
        self.state.epoch += 1
        tot /= max(nb, 1)
        self.state.rows.append(["ae", self.state.epoch, *tot.tolist(), None, None, None, None,
                                time.perf_counter() - t0])
        if not all(math.isfinite(v) for v in tot):
            raise GarageError("autoencoder loss became NaN/inf", "lower --lr-ae or --batch-size")

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
        opt = torch.optim.Adam([vae.log_theta], lr=DISP_LR)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / DISP_STEPS)
        step, tot, n = 0, 0.0, 0
        while step < DISP_STEPS:
            for idx in self._batches():
                x = self.data.batch_counts(idx, self.device)
                with torch.no_grad():  # only theta moves
                    mu = vae.mean_counts(x, vae.encode(x)[0])
                nll = vae.nb_nll(x, mu)
                opt.zero_grad(set_to_none=True)
                nll.backward()
                opt.step()
                sched.step()
                step += 1
                if step > DISP_STEPS - 50:  # report the converged tail
                    tot, n = tot + nll.item(), n + 1
                if step >= DISP_STEPS:
                    break
        vae.train()
        if not math.isfinite(tot):
            raise GarageError("dispersion refit became NaN/inf", "rerun with --no-refit-dispersion")
        self.state.rows.append(["disp", step, tot / max(n, 1), tot / max(n, 1), None, None, None, None, None,
                                time.perf_counter() - t0])
        logger.info("refitted NB dispersion at posterior means: median theta %.2f",
                    float(vae.theta.detach().median()))

    def _decoder_epoch(self, epoch: int) -> None:
        """One epoch of decoder fine-tuning on each cell's posterior mean (encoder frozen).

        The autoencoder phase trains the decoder on sampled codes, which blurs it;
        generation decodes codes like the posterior means, so the decoder is refitted
        to them (PBMC 3k, decoding the train cells' own codes and scored with
        ``garage evaluate``: C2ST 0.57-0.59 before, 0.556 after 20 epochs).
        """
        t0 = time.perf_counter()
        vae = self.net.vae
        if self.opt_dec is None:
            self.opt_dec = torch.optim.Adam(
                [*vae.decoder.parameters(), *vae.px.parameters(), vae.log_theta], lr=DECODER_LR
            )
        vae.eval()  # no dropout in the (frozen) encoder
        tot, nb = 0.0, 0
        for idx in self._batches():
            x = self.data.batch_counts(idx, self.device)
            with torch.no_grad():
                z = vae.encode(x)[0]
            nll = vae.nb_nll(x, vae.mean_counts(x, z))
            self.opt_dec.zero_grad(set_to_none=True)
            nll.backward()
            self.opt_dec.step()
            tot, nb = tot + nll.item(), nb + 1
        vae.train()
        tot /= max(nb, 1)
        if not math.isfinite(tot):
            raise GarageError("decoder fine-tuning loss became NaN/inf", "rerun with --decoder-epochs 0")
        self.state.rows.append(["decoder", epoch, tot, tot, None, None, None, None, None,
                                time.perf_counter() - t0])

    def _fake(self, types: torch.Tensor):
        """Generate a fake batch in the critic's representation (with gradients)."""
        net, cfg, data, dev = self.net, self.cfg, self.data, self.device
        noise = torch.randn(types.shape[0], cfg.noise_dim, generator=self.gen).to(dev)
        mix = 1.0 if cfg.mode == "original" else cfg.seed_mix
        mask, pos = pick_seeds(data, types, mix, self.gen)
        if cfg.mode == "original":
            prof = data.seed_codes[pos].to(dev)
            logits = net.generator(noise, prof)
        else:
            code = data.seed_codes[pos].to(dev) if data.seed_codes is not None else None
            out = net.generator(noise, types.to(dev), code, mask.to(dev))
            if cfg.effective_space == "latent":
                return out
            logits = out
        lib = sample_library(data.lib_quantiles, types, self.gen).to(dev)
        mu = torch.softmax(logits, dim=1) * lib.unsqueeze(1)
        return log_normalize_torch(straight_through_counts(mu))

    def _real(self, idx: torch.Tensor):
        if self.cfg.effective_space == "latent":
            return self.data.codes[idx].to(self.device)
        return log_normalize_torch(self.data.batch_counts(idx, self.device))

    def _gan_epoch(self) -> None:
        t0 = time.perf_counter()
        net, cfg, dev = self.net, self.cfg, self.device
        net.generator.train()
        net.critic.train()
        sums = np.zeros(4)
        n_d = n_g = 0
        step = 0
        for idx in self._batches(cfg.type_balance if cfg.mode == "garage" else 0.0):
            types = self.data.types[idx]
            real = self._real(idx)
            if cfg.mode == "original":
                fake_types = self.data.types[pick_seeds_types(self.data, idx.shape[0], self.gen)]
            else:
                fake_types = types
            with torch.no_grad():
                fake = self._fake(fake_types)
            if cfg.mode == "original":
                d = bce_discriminator_loss(net.critic, real, fake, cfg.label_smoothing)
            else:
                d = wgan_critic_loss(net.critic, real, fake, types.to(dev), cfg.gp_weight)
            self.opt_d.zero_grad(set_to_none=True)
            d.loss.backward()
            self.opt_d.step()
            sums[:3] += [d.loss.item(), d.distance.item(), d.gp.item()]
            n_d += 1
            step += 1
            if step % cfg.n_critic == 0:
                self._generator_step(types, sums)
                n_g += 1
        if n_g == 0:  # tiny data: at least one generator step per epoch
            self._generator_step(self.data.types[:cfg.batch_size], sums)
            n_g = 1
        self.state.epoch += 1
        row = [sums[0] / n_d, sums[1] / n_d, sums[2] / n_d, sums[3] / n_g]
        self.state.rows.append(["gan", self.state.epoch, None, None, None, *row, time.perf_counter() - t0])
        if not all(math.isfinite(v) for v in row):
            raise GarageError("GAN loss became NaN/inf", "lower --lr-gan or raise --batch-size")

    def _generator_step(self, types, sums) -> None:
        net, cfg, dev = self.net, self.cfg, self.device
        if cfg.mode == "original":
            fake = self._fake(self.data.types[pick_seeds_types(self.data, types.shape[0], self.gen)])
            g = bce_generator_loss(net.critic, fake)
        else:
            fake = self._fake(types)
            g = wgan_generator_loss(net.critic, fake, types.to(dev))
        self.opt_g.zero_grad(set_to_none=True)
        g.loss.backward()
        self.opt_g.step()
        if net.generator_ema is not None:
            net.update_ema(cfg.ema_decay)
        sums[3] += g.loss.item()


def pick_seeds_types(data: TrainData, n: int, gen: torch.Generator) -> torch.Tensor:
    """``original`` mode: uniformly random seed cells (rows of counts)."""
    pos = torch.randint(0, data.seed_rows.shape[0], (n,), generator=gen)
    return data.seed_rows[pos]


def write_log(rows: list, path: Path) -> Path:
    lines = ["\t".join(LOG_COLUMNS)]
    for r in rows:
        lines.append("\t".join("" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v)) for v in r))
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return path
