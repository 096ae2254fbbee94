"""GANConfig: every option of ``garage gan`` as one frozen dataclass."""

from __future__ import annotations

from .. import constants as C

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Literal

from ..errors import GarageError

Mode = Literal["garage", "original"]
Space = Literal["latent", "gene"]
Composition = Literal["original", "balanced", "uniform-rare-boost"]
CountDist = Literal["auto", "nb", "poisson", "multinomial"]

COMPOSITIONS = ("original", "balanced", "uniform-rare-boost")
COUNT_DISTS = ("auto", "nb", "poisson", "multinomial")


def parse_cells_per_type(value) -> tuple[tuple[str, int], ...] | None:
    """``"DC=100,Platelet=50"`` / dict / pairs -> sorted tuple of ``(type, n)``."""
    if value is None or value == "" or value == {} or value == ():
        return None
    if isinstance(value, str):
        pairs = []
        for item in value.split(","):
            item = item.strip()
            if not item:
                continue
            if "=" not in item:
                raise GarageError(
                    f"--cells-per-type item {item!r} is not TYPE=N",
                    'write e.g. --cells-per-type "DC=200,Platelet=100"',
                )
            name, n = item.rsplit("=", 1)
            pairs.append((name.strip(), n.strip()))
    elif isinstance(value, Mapping):
        pairs = list(value.items())
    else:
        pairs = [tuple(p) for p in value]
    out = {}
    for name, n in pairs:
        try:
            n_int = int(n)
        except (TypeError, ValueError):
            raise GarageError(
                f"--cells-per-type count for {name!r} is not an integer ({n!r})",
                'write e.g. --cells-per-type "DC=200"',
            ) from None
        if n_int < 0:
            raise GarageError(f"--cells-per-type count for {name!r} is negative", "use N >= 0")
        if name in out:
            raise GarageError(f"--cells-per-type names {name!r} twice", "name each type once")
        out[str(name)] = n_int
    return tuple(sorted(out.items()))


@dataclass(frozen=True)
class GANConfig:
    """Options of the conditional hybrid-input GAN (saved inside ``PREFIX.generator.pt``).

    Parameters
    ----------
    mode
        ``garage``: conditional WGAN-GP with the hybrid input (noise + type
        embedding + a projected seed cell with probability *seed_mix*).
        ``original``: the research prototype, for comparison: an unconditional
        generator fed real seed profiles directly plus noise, trained with a
        label-smoothed BCE loss; a cell's label is its seed cell's type.
    space
        ``latent`` (default): a count VAE (NB decoder on proportions x library
        size) is trained first and the adversarial game runs in its latent
        space; seeds enter as latent codes.  ``gene``: the game runs on the
        HVGs directly, the critic sees log-normalised Poisson-sampled counts
        (straight-through gradients) and seeds enter as PCA coordinates.
        Ignored by ``mode='original'`` (always gene space).
    epochs
        Adversarial epochs (one epoch = one pass of the critic over the train cells).
    ae_epochs
        Autoencoder epochs (latent space only).
    batch_size
        Minibatch size for every phase.
    noise_dim
        Generator noise dimension (independent of the gene count).
    n_latent, hidden, type_emb_dim
        Latent size of the VAE, hidden width of every network, type-embedding size.
    seed_mix
        Probability that a generated cell's input includes a seed cell of its type.
    kl_weight
        Final weight of the VAE's KL term (warmed up over the first half of
        the autoencoder epochs); below 1 keeps more detail in the latent codes.
    seed_residual
        Latent space: a seeded cell's code is its seed's latent code plus a
        generated offset (otherwise the seed only enters through its projection).
    refit_dispersion
        Latent space: after the autoencoder phase, refit the NB dispersion with
        the decoder fixed at the cells' posterior means (the way generation
        decodes), so sampled counts are not noisier than real ones.
    decoder_epochs
        Latent space: epochs of decoder fine-tuning on the cells' posterior means
        (encoder frozen) after the autoencoder phase, so the decoder is sharp for
        the codes generation feeds it (0: skip).
    ema_decay
        ``garage`` mode: cells are generated with an exponential moving average
        of the generator's weights, updated after every generator step with this
        decay, warmed up as ``min(decay, (1+t)/(10+t))`` (0: use the last weights).
    n_critic
        Critic steps per generator step.
    type_balance
        Adversarial minibatches draw a cell of type *t* with weight
        ``n_t ** -type_balance`` (0: uniform; 1: every type equally often), so
        rare types get enough critic and generator updates.
    gp_weight
        WGAN-GP gradient-penalty weight.
    lr_gan, lr_ae
        Adam learning rates (adversarial, autoencoder).
    label_smoothing
        Target for real cells in ``original`` mode's BCE loss.
    count_dist
        How counts are drawn from the generated means: ``nb`` (VAE dispersion),
        ``poisson``, ``multinomial``; ``auto`` = nb in latent space, else poisson.
    n_cells
        Synthetic cells to write (default: the number of train cells).
    composition
        ``original`` (train proportions), ``balanced`` (equal per type) or
        ``uniform-rare-boost`` (rare types raised to an equal share, the others
        keep their relative proportions).
    cells_per_type
        Exact counts for some types (``"DC=200,Platelet=100"``, a dict, or
        pairs); the remaining cells follow *composition*.
    rare_threshold
        A type is rare when it holds less than this fraction of the train cells.
    checkpoint_every
        Write ``OUTDIR/PREFIX.gan.ckpt.pt`` every N epochs (0: never).
    seed
        Feeds every random source.
    """

    mode: Mode = "garage"
    space: Space = "latent"
    epochs: int = 600
    ae_epochs: int = 60
    batch_size: int = 128
    noise_dim: int = 32
    n_latent: int = 16
    hidden: int = 256
    type_emb_dim: int = 16
    seed_mix: float = 0.5
    kl_weight: float = 1.0
    seed_residual: bool = True
    refit_dispersion: bool = True
    decoder_epochs: int = 20
    ema_decay: float = 0.99
    n_critic: int = 5
    type_balance: float = 0.5
    gp_weight: float = 10.0
    lr_gan: float = 2e-4
    lr_ae: float = 1e-3
    label_smoothing: float = 0.9
    count_dist: CountDist = "auto"
    n_cells: int | None = None
    composition: Composition = "original"
    cells_per_type: tuple[tuple[str, int], ...] | None = field(default=None)
    rare_threshold: float = C.RARE_THRESHOLD
    checkpoint_every: int = 10
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "cells_per_type", parse_cells_per_type(self.cells_per_type))

    @property
    def effective_space(self) -> str:
        return "gene" if self.mode == "original" else self.space

    @property
    def effective_count_dist(self) -> str:
        if self.count_dist != "auto":
            return self.count_dist
        return "nb" if self.effective_space == "latent" else "poisson"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["cells_per_type"] = dict(self.cells_per_type) if self.cells_per_type else None
        return d

    def validate(self) -> None:
        def need(cond, problem, fix):
            if not cond:
                raise GarageError(problem, fix)

        need(self.mode in ("garage", "original"), f"unknown --mode {self.mode!r}", "use garage or original")
        need(self.space in ("latent", "gene"), f"unknown --space {self.space!r}", "use latent or gene")
        need(self.composition in COMPOSITIONS, f"unknown --composition {self.composition!r}",
             f"use one of {', '.join(COMPOSITIONS)}")
        need(self.count_dist in COUNT_DISTS, f"unknown --count-dist {self.count_dist!r}",
             f"use one of {', '.join(COUNT_DISTS)}")
        for name in ("epochs", "ae_epochs", "decoder_epochs", "checkpoint_every"):
            v = getattr(self, name)
            need(isinstance(v, int) and v >= 0, f"--{name.replace('_', '-')} must be an integer >= 0, got {v!r}",
                 "pass a non-negative number")
        need(self.epochs >= 1, "--epochs must be >= 1", "pass e.g. 300")
        need(self.effective_space != "latent" or self.ae_epochs >= 1,
             "--ae-epochs must be >= 1 in latent space", "pass e.g. 100, or --space gene")
        for name in ("batch_size", "noise_dim", "n_latent", "hidden", "type_emb_dim", "n_critic"):
            v = getattr(self, name)
            need(isinstance(v, int) and v >= 1, f"--{name.replace('_', '-')} must be an integer >= 1, got {v!r}",
                 "pass a positive number")
        need(self.batch_size >= 2, "--batch-size must be >= 2", "pass e.g. 128")
        need(0.0 <= self.seed_mix <= 1.0, f"--seed-mix must be in [0, 1], got {self.seed_mix}",
             "pass e.g. 0.5 (0 = noise only)")
        need(0.0 <= self.type_balance <= 1.0, f"--type-balance must be in [0, 1], got {self.type_balance}",
             "pass e.g. 0.5")
        need(0.0 <= self.ema_decay < 1.0, f"--ema-decay must be in [0, 1), got {self.ema_decay}",
             "pass e.g. 0.99 (0 = no averaging)")
        need(self.kl_weight >= 0, "--kl-weight must be >= 0", "pass e.g. 1.0")
        need(self.gp_weight >= 0, "--gp-weight must be >= 0", "pass e.g. 10")
        need(self.lr_gan > 0 and self.lr_ae > 0, "learning rates must be > 0", "pass e.g. 1e-4")
        need(0.5 < self.label_smoothing <= 1.0, "--label-smoothing must be in (0.5, 1]", "pass e.g. 0.9")
        need(self.n_cells is None or (isinstance(self.n_cells, int) and self.n_cells >= 1),
             f"--n-cells must be >= 1, got {self.n_cells!r}", "pass a positive number or omit it")
        need(0.0 < self.rare_threshold < 1.0, "--rare-threshold must be in (0, 1)", "pass e.g. 0.03")
        need(not (self.effective_space == "gene" and self.effective_count_dist == "nb"),
             "--count-dist nb needs the VAE dispersion of --space latent",
             "use --count-dist poisson/multinomial with --space gene or --mode original")
        need(self.seed >= 0, "--seed must be >= 0", "pass e.g. 0")
