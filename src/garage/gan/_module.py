"""Pure-torch GARAGE modules: count autoencoder, conditional generator and critic.

Every module's ``loss`` method returns a small loss dataclass, so the training
loop (``_train.py``) only sums, steps and logs.  No AnnData here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .._norm import log_normalize_torch
from ._nn import mlp, nb_log_likelihood


# --------------------------------------------------------------------------- losses
@dataclass
class VAELoss:
    loss: torch.Tensor
    nll: torch.Tensor
    kl: torch.Tensor


@dataclass
class CriticLoss:
    loss: torch.Tensor
    distance: torch.Tensor  # Wasserstein estimate (WGAN) or BCE (original)
    gp: torch.Tensor


@dataclass
class GeneratorLoss:
    loss: torch.Tensor


# --------------------------------------------------------------------------- autoencoder
class CountVAE(nn.Module):
    """VAE on counts: log-normalised input, NB decoder on proportions x library size.

    The decoder outputs expression proportions over the HVGs (softmax); the
    mean of the counts is ``proportions * library_size``, and ``theta`` is a
    per-gene inverse dispersion.  With ``n_conds > 1`` the encoder and the
    decoder also see a one-hot condition (as scVI conditions on batch), so a
    code decoded under another condition is that cell's counterfactual.  The
    GAN plays its game in the latent space.
    """

    def __init__(self, n_genes: int, n_latent: int, n_hidden: int, dropout: float = 0.1, n_conds: int = 1,
                 decoder_dropout: float = 0.0):
        super().__init__()
        self.n_conds = int(n_conds)
        c = self.n_conds if self.n_conds > 1 else 0
        self.encoder = mlp([n_genes + c, n_hidden, n_hidden], last_activation=True, dropout=dropout)
        self.z_mean = nn.Linear(n_hidden, n_latent)
        self.z_logvar = nn.Linear(n_hidden, n_latent)
        self.decoder = mlp([n_latent + c, n_hidden, n_hidden], last_activation=True, dropout=decoder_dropout)
        self.px = nn.Linear(n_hidden, n_genes)
        self.log_theta = nn.Parameter(torch.zeros(n_genes))

    def _with_cond(self, x: torch.Tensor, conds: torch.Tensor | None) -> torch.Tensor:
        if self.n_conds <= 1:
            return x
        if conds is None:
            raise ValueError("this VAE is conditioned: pass the condition of every cell")
        return torch.cat([x, F.one_hot(conds, self.n_conds).to(x.dtype)], dim=1)

    def encode(self, counts: torch.Tensor, conds: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(self._with_cond(log_normalize_torch(counts), conds))
        return self.z_mean(h), self.z_logvar(h).clamp(-10, 10)

    def proportions(self, z: torch.Tensor, conds: torch.Tensor | None = None) -> torch.Tensor:
        return F.softmax(self.px(self.decoder(self._with_cond(z, conds))), dim=-1)

    @property
    def theta(self) -> torch.Tensor:
        return self.log_theta.exp()

    def mean_counts(self, counts: torch.Tensor, z: torch.Tensor, conds: torch.Tensor | None = None) -> torch.Tensor:
        """NB means of *counts* decoded from codes *z*: proportions x each cell's library size."""
        return self.proportions(z, conds) * counts.sum(1, keepdim=True)

    def nb_nll(self, counts: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        """Mean per-cell NB negative log-likelihood of *counts* given means *mu* and theta."""
        return -nb_log_likelihood(counts, mu, self.theta).sum(1).mean()

    def loss(self, counts: torch.Tensor, conds: torch.Tensor | None = None, kl_weight: float = 1.0,
             sample: bool = True) -> VAELoss:
        mean, logvar = self.encode(counts, conds)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp() if sample else mean
        nll = self.nb_nll(counts, self.mean_counts(counts, z, conds))
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum(1).mean()
        return VAELoss(nll + kl_weight * kl, nll, kl)


# --------------------------------------------------------------------------- GAN
class ConditionalGenerator(nn.Module):
    """The GARAGE hybrid input: noise + type (and condition) embedding + (masked) seed projection.

    ``seed_code`` is the seed cell's representation (latent code, with its
    standardised log library size when the library is generated jointly, or PCA
    coordinates); ``seed_mask`` (0/1 per sample) says whether a seed is mixed in.
    Output: a latent code (latent space) or gene logits (gene space).
    """

    def __init__(self, noise_dim: int, n_types: int, emb_dim: int, seed_dim: int,
                 hidden: int, out_dim: int, n_layers: int = 2, residual: bool = False, n_conds: int = 1,
                 extra_dim: int = 0):
        super().__init__()
        self.noise_dim = noise_dim
        # extra_dim: inputs every cell carries besides noise and labels (``--library depth``: its
        # standardised log library size, drawn first)
        self.extra_dim = int(extra_dim)
        # residual: a seeded cell is its seed's code plus a learned, noise-driven offset
        self.residual = bool(residual and seed_dim == out_dim)
        self.type_emb = nn.Embedding(n_types, emb_dim)
        self.cond_emb = nn.Embedding(n_conds, emb_dim) if n_conds > 1 else None
        self.seed_proj = nn.Linear(seed_dim, emb_dim) if seed_dim > 0 else None
        in_dim = noise_dim + emb_dim * (2 if self.cond_emb is not None else 1) \
            + (emb_dim + 1 if seed_dim > 0 else 0) + self.extra_dim
        self.net = mlp([in_dim] + [hidden] * n_layers + [out_dim])

    def forward(self, noise, types, conds=None, seed_code=None, seed_mask=None, extra=None):
        parts = [noise, self.type_emb(types)]
        if self.cond_emb is not None:
            parts.append(self.cond_emb(conds))
        if self.extra_dim:
            if extra is None or extra.shape[-1] != self.extra_dim:
                raise ValueError(f"this generator takes {self.extra_dim} extra input(s) per cell")
            parts.append(extra.to(noise.dtype))
        if self.seed_proj is not None:
            if seed_code is None:
                seed_code = noise.new_zeros(noise.shape[0], self.seed_proj.in_features)
                seed_mask = noise.new_zeros(noise.shape[0])
            m = seed_mask.view(-1, 1).to(noise.dtype)
            parts += [m * self.seed_proj(seed_code), m]
            out = self.net(torch.cat(parts, dim=1))
            return out + m * seed_code if self.residual else out
        return self.net(torch.cat(parts, dim=1))


class ConditionalCritic(nn.Module):
    """WGAN critic on (representation, type[, condition]); no normalisation layers that mix samples.

    ``pack`` > 1 (PacGAN): rows ``pack * i`` to ``pack * i + pack - 1`` of a batch are one input,
    their representations side by side, judged under the label (and condition) of the pack's first
    row, so every pack must hold one label; the output has one score per pack."""

    def __init__(self, in_dim: int, n_types: int, emb_dim: int, hidden: int, n_layers: int = 2,
                 n_conds: int = 1, path_input: bool = False, pack: int = 1):
        super().__init__()
        self.pack = int(pack)
        self.type_emb = nn.Embedding(n_types, emb_dim)
        self.cond_emb = nn.Embedding(n_conds, emb_dim) if n_conds > 1 else None
        # path_input: one more input per packed cell, 1 for a seeded fake (and the real cell it is paired with), else 0
        self.path_input = bool(path_input)
        k = 2 if self.cond_emb is not None else 1
        self.net = mlp([self.pack * (in_dim + int(self.path_input)) + k * emb_dim] + [hidden] * n_layers + [1],
                       norm=False)

    def packed(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, d) -> (batch / pack, pack * d): each pack's rows side by side."""
        if x.shape[0] % self.pack:
            raise ValueError(f"a packed critic needs a multiple of {self.pack} rows, got {x.shape[0]}")
        return x.reshape(x.shape[0] // self.pack, -1)

    def forward(self, x, types, conds=None, path=None):
        p = self.pack
        parts = [self.packed(x), self.type_emb(types[::p])]
        if self.cond_emb is not None:
            parts.append(self.cond_emb(conds[::p]))
        if self.path_input:
            flag = x.new_zeros(x.shape[0], 1) if path is None else path.view(-1, 1).to(x.dtype)
            parts.append(self.packed(flag))
        return self.net(torch.cat(parts, dim=1)).squeeze(1)


def _pack_norm(critic, grad: torch.Tensor) -> torch.Tensor:
    """Gradient norm per critic input (per pack when the critic packs rows)."""
    return (critic.packed(grad) if getattr(critic, "pack", 1) > 1 else grad).norm(2, dim=1)


def gradient_penalty(critic: ConditionalCritic, real, fake, types, conds=None, path=None) -> torch.Tensor:
    """WGAN-GP penalty ``(||grad_x D(x_hat)|| - 1)^2`` on random interpolates (one mixing weight and one
    norm per critic input: per pack when the critic packs rows)."""
    pack = getattr(critic, "pack", 1)
    eps = torch.rand(real.shape[0] // pack, 1, device=real.device, dtype=real.dtype)
    if pack > 1:
        eps = eps.repeat_interleave(pack, 0)
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
    out = critic(x_hat, types, conds, path)
    (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
    return ((_pack_norm(critic, grad) - 1) ** 2).mean()


def wgan_critic_loss(critic, real, fake, types, gp_weight: float, conds=None, path=None) -> CriticLoss:
    """*path* (0/1 per pair, optional): sample i of *real* is judged with the flag of fake i, so a
    critic with ``path_input`` compares real cells with seeded and with unseeded fakes apart."""
    d_real = critic(real, types, conds, path).mean()
    d_fake = critic(fake, types, conds, path).mean()
    gp = gradient_penalty(critic, real, fake, types, conds, path)
    return CriticLoss(d_fake - d_real + gp_weight * gp, d_real - d_fake, gp)


def wgan_generator_loss(critic, fake, types, conds=None, path=None) -> GeneratorLoss:
    return GeneratorLoss(-critic(fake, types, conds, path).mean())


def r1_penalty(critic: ConditionalCritic, real, types, conds=None, path=None) -> torch.Tensor:
    """R1: ``E ||grad_x D(x)||^2`` on real samples (Mescheder et al., ICML 2018)."""
    x = real.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x, types, conds, path).sum(), x, create_graph=True)
    g = critic.packed(grad) if getattr(critic, "pack", 1) > 1 else grad
    return g.pow(2).sum(1).mean()


def ns_critic_loss(critic, real, fake, types, r1_weight: float, conds=None, path=None) -> CriticLoss:
    """Logistic discriminator loss ``softplus(D(fake)) + softplus(-D(real))`` plus ``r1_weight / 2 * R1``;
    ``distance`` logs the mean logit difference real - fake."""
    d_real = critic(real, types, conds, path)
    d_fake = critic(fake, types, conds, path)
    r1 = r1_penalty(critic, real, types, conds, path) if r1_weight > 0 else real.new_zeros(())
    loss = F.softplus(d_fake).mean() + F.softplus(-d_real).mean() + 0.5 * r1_weight * r1
    return CriticLoss(loss, (d_real.mean() - d_fake.mean()).detach(), r1.detach())


def ns_generator_loss(critic, fake, types, conds=None, path=None) -> GeneratorLoss:
    """Non-saturating generator loss ``softplus(-D(fake))``."""
    return GeneratorLoss(F.softplus(-critic(fake, types, conds, path)).mean())


# --------------------------------------------------------------------------- original
class OriginalGenerator(nn.Module):
    """The prototype's generator: unconditional, real seed profiles fed straight in."""

    def __init__(self, n_genes: int, noise_dim: int, hidden: int):
        super().__init__()
        self.noise_dim = noise_dim
        self.net = mlp([n_genes + noise_dim, hidden, hidden, n_genes])

    def forward(self, noise, seed_profile):
        return self.net(torch.cat([seed_profile, noise], dim=1))


class OriginalDiscriminator(nn.Module):
    """The prototype's unconditional discriminator (logits for BCE)."""

    def __init__(self, n_genes: int, hidden: int):
        super().__init__()
        self.net = mlp([n_genes, hidden, hidden // 2, 1], norm=False)

    def forward(self, x):
        return self.net(x).squeeze(1)


def bce_discriminator_loss(disc, real, fake, smooth: float) -> CriticLoss:
    lr, lf = disc(real), disc(fake)
    loss = F.binary_cross_entropy_with_logits(lr, torch.full_like(lr, smooth)) + \
        F.binary_cross_entropy_with_logits(lf, torch.zeros_like(lf))
    return CriticLoss(loss, loss.detach(), torch.zeros((), device=real.device))


def bce_generator_loss(disc, fake) -> GeneratorLoss:
    lf = disc(fake)
    return GeneratorLoss(F.binary_cross_entropy_with_logits(lf, torch.ones_like(lf)))


def straight_through_counts(mu: torch.Tensor) -> torch.Tensor:
    """Poisson counts in the forward pass, gradients of the mean in the backward pass."""
    with torch.no_grad():
        sample = torch.poisson(mu.clamp_min(0))
    return mu + (sample - mu).detach()
