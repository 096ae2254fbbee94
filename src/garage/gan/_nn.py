"""Building blocks shared by the GAN modules (pure torch, no AnnData)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def mlp(
    sizes: Sequence[int],
    *,
    norm: bool = True,
    dropout: float = 0.0,
    last_activation: bool = False,
    slope: float = 0.2,
) -> nn.Sequential:
    """Linear -> (LayerNorm) -> LeakyReLU -> (Dropout) blocks for ``sizes[i] -> sizes[i+1]``.

    The last block is a plain Linear unless *last_activation*.  LayerNorm (not
    BatchNorm) keeps the WGAN-GP gradient penalty per-sample.
    """
    layers: list[nn.Module] = []
    n = len(sizes) - 1
    for i in range(n):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < n - 1 or last_activation:
            if norm:
                layers.append(nn.LayerNorm(sizes[i + 1]))
            layers.append(nn.LeakyReLU(slope))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def nb_log_likelihood(x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, eps: float = 1e-8):
    """Negative-binomial log-likelihood (mean *mu*, inverse dispersion *theta*), per entry."""
    log_theta_mu = torch.log(theta + mu + eps)
    return (
        theta * (torch.log(theta + eps) - log_theta_mu)
        + x * (torch.log(mu + eps) - log_theta_mu)
        + torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1)
    )


def sample_counts(
    mu: torch.Tensor,
    dist: str,
    *,
    theta: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw integer counts with mean *mu* (cells x genes).

    ``nb``: gamma-Poisson with per-gene inverse dispersion *theta*;
    ``poisson``; ``multinomial``: exactly round(rowsum(mu)) counts split by mu.
    """
    mu = mu.clamp_min(0)
    if dist == "poisson":
        return torch.poisson(mu, generator=generator)
    if dist == "nb":
        if theta is None:
            raise ValueError("nb sampling needs theta")
        th = theta.expand_as(mu)
        # Gamma(shape=theta, rate=theta/mu) via torch._standard_gamma (takes a generator)
        g = torch._standard_gamma(th.contiguous()) if generator is None else _gamma(th, generator)
        lam = g * mu / th.clamp_min(1e-8)
        return torch.poisson(lam, generator=generator)
    if dist == "multinomial":
        lib = mu.sum(1).round().long()
        out = torch.zeros_like(mu)
        probs = mu / mu.sum(1, keepdim=True).clamp_min(1e-12)
        for i in range(mu.shape[0]):  # rows only; genes are vectorised
            n = int(lib[i])
            if n > 0:
                idx = torch.multinomial(probs[i], n, replacement=True, generator=generator)
                out[i] = torch.bincount(idx, minlength=mu.shape[1]).to(mu.dtype)
        return out
    raise ValueError(f"unknown count distribution {dist!r}")


def _gamma(shape: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Gamma(shape, 1) draws that respect *generator* (Marsaglia-Tsang, vectorised)."""
    boost = shape < 1
    a = torch.where(boost, shape + 1, shape)
    d = a - 1.0 / 3.0
    c = 1.0 / torch.sqrt(9.0 * d)
    out = torch.empty_like(a)
    todo = torch.ones_like(a, dtype=torch.bool)
    for _ in range(64):
        n = int(todo.sum())
        if n == 0:
            break
        dd, cc = d[todo], c[todo]
        z = torch.randn(n, generator=generator, device=a.device, dtype=a.dtype)
        v = (1 + cc * z) ** 3
        u = torch.rand(n, generator=generator, device=a.device, dtype=a.dtype)
        ok = (v > 0) & (torch.log(u.clamp_min(1e-30)) < 0.5 * z**2 + dd - dd * v + dd * torch.log(v.clamp_min(1e-30)))
        vals = torch.where(ok, dd * v, torch.zeros_like(dd))
        pos = todo.nonzero(as_tuple=True)
        sel = tuple(p[ok] for p in pos)
        out[sel] = vals[ok]
        todo[sel] = False
    if todo.any():  # practically never: fall back to the mean
        out[todo] = d[todo]
    u = torch.rand(a.shape, generator=generator, device=a.device, dtype=a.dtype)
    return torch.where(boost, out * u.clamp_min(1e-30) ** (1.0 / shape.clamp_min(1e-8)), out)
