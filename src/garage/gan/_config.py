"""GANConfig: every option of ``garage gan`` as one frozen dataclass."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import ClassVar, Literal

import numpy as np

from .. import constants as C
from ..errors import GarageError

Mode = Literal["garage", "original"]
Space = Literal["latent", "gene"]
Composition = Literal["original", "balanced", "uniform-rare-boost"]
CountDist = Literal["auto", "nb", "poisson", "multinomial"]
Library = Literal["joint", "lognormal", "conditional", "depth"]
Calibrate = Literal["none", "mean", "diag"]
CriticPath = Literal["auto", "on", "off"]
CRITIC_PATHS = ("auto", "on", "off")
GanLoss = Literal["wgan-gp", "ns-r1"]
GAN_LOSSES = ("wgan-gp", "ns-r1")
#: how everything saved before --gan-loss, --r1-weight, --lr-decay, --instance-noise, --critic-pack and
#: --state-gate existed was trained: a model or checkpoint without these keys reads as these values (so it
#: loads, and a matching run resumes)
PRE_LOSS_VALUES = {"gan_loss": "wgan-gp", "r1_weight": 1.0, "lr_decay": False, "instance_noise": 0.0,
                   "critic_pack": 1, "state_gate": 0.0}

COMPOSITIONS = ("original", "balanced", "uniform-rare-boost")
COUNT_DISTS = ("auto", "nb", "poisson", "multinomial")
LIBRARIES = ("joint", "lognormal", "conditional", "depth")
#: separates a type from its condition in group names ("B|STIM") and --cells-per-group
GROUP_SEP = "|"


def parse_cells_per_type(value, option: str = "--cells-per-type",
                         example: str = "DC=200,Platelet=100") -> tuple[tuple[str, int], ...] | None:
    """``"DC=100,Platelet=50"`` / dict / pairs -> sorted tuple of ``(name, n)``.

    Names may contain ``=`` only before the last one, so ``"B|STIM=300"`` (a
    type x condition group for ``--cells-per-group``) parses the same way.
    """
    if value is None or value == "" or value == {} or value == ():
        return None
    if isinstance(value, str):
        pairs = []
        # a comma ends an item only after "=N", so names with commas (Cell Ontology labels such
        # as "CD4-positive, alpha-beta T cell") parse: "CD4-positive, alpha-beta T cell=50,B=20"
        items, cur = [], ""
        for part in value.split(","):
            cur = part if not cur else cur + "," + part
            if re.search(r"=\s*-?\d+\s*$", cur):
                items.append(cur)
                cur = ""
        if cur.strip():
            items.append(cur)
        for item in items:
            item = item.strip()
            if not item:
                continue
            if "=" not in item:
                raise GarageError(
                    f"{option} item {item!r} is not NAME=N",
                    f'write e.g. {option} "{example}"',
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
                f"{option} count for {name!r} is not an integer ({n!r})",
                f'write e.g. {option} "{example}"',
            ) from None
        if n_int < 0:
            raise GarageError(f"{option} count for {name!r} is negative", "use N >= 0")
        if name in out:
            raise GarageError(f"{option} names {name!r} twice", "name each one once")
        out[str(name)] = n_int
    return tuple(sorted(out.items()))


def critic_path_value(value) -> str:
    """``critic_path`` as ``auto``/``on``/``off`` (a saved bool: written while the option was a flag)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return value


def parse_cells_per_group(value) -> tuple[tuple[str, int], ...] | None:
    """``"B|STIM=300,DC|CTRL=50"`` -> sorted ``(('B|STIM', 300), ('DC|CTRL', 50))``."""
    out = parse_cells_per_type(value, "--cells-per-group", "B|STIM=300,DC|CTRL=50")
    for name, _ in out or ():
        if GROUP_SEP not in name:
            raise GarageError(
                f"--cells-per-group item {name!r} does not name a TYPE{GROUP_SEP}CONDITION group",
                f'write e.g. --cells-per-group "B{GROUP_SEP}STIM=300" (or use --cells-per-type for a type)',
            )
    return out


#: adversarial generator steps when neither --gan-steps nor --epochs is given.  Chosen on the
#: validation splits of the development datasets (bench/results/fidelity_notes.md): 6,000 steps
#: without early stopping brought C2ST from 0.622 to 0.563 (sc_mixology) and 0.621 to 0.587
#: (kang_ifnb) against the earlier 600 passes clipped to [1,500, 5,000] steps.
GAN_STEPS_DEFAULT = 6000
#: the adversarial learning rate of every game (``lr_gan``; ``None`` means this): the DCGAN-style Adam
#: rate (WGAN-GP's paper recommends 1e-4 with beta1 0, Gulrajani et al. 2017). Twice this looked better
#: on 14 paired validation runs (round 16 of bench/results/fidelity_notes.md) and did not hold on 12
#: fresh ones (round 17: +0.002 C2ST gap on average, pbmc3k worse on every seed), so it stays.
LR_GAN_DEFAULT = 2e-4
#: most passes over the train cells the autoencoder makes by default (and a third of that for the
#: decoder fine-tuning): chosen on the validation splits (bench/results/fidelity_notes.md, round 7)
AE_MAX_PASSES = 100


@dataclass(frozen=True)
class GANConfig:
    """Options of the conditional hybrid-input GAN (saved inside ``PREFIX.generator.pt``).

    Parameters
    ----------
    mode
        ``garage``: conditional WGAN-GP with the hybrid input (noise + type and
        condition embeddings + a projected seed cell with probability *seed_mix*).
        ``original``: the research prototype, for comparison: an unconditional
        generator fed real seed profiles directly plus noise, trained with a
        label-smoothed BCE loss; a cell's label is its seed cell's type.
    space
        ``latent`` (default): a count VAE (NB decoder on proportions x library
        size, conditioned on the condition when there is one) is trained first
        and the adversarial game runs in its latent space; seeds enter as latent
        codes.  ``gene``: the game runs on the HVGs directly, the critic sees
        log-normalised Poisson-sampled counts (straight-through gradients) and
        seeds enter as PCA coordinates.  Ignored by ``mode='original'``.
    ae_steps, gan_steps, decoder_steps
        Optimiser steps of the autoencoder, generator steps of the adversarial
        phase (each after *n_critic* critic steps) and decoder fine-tuning
        steps.  ``None`` (default) chooses them from the number of train cells
        (see ``schedule``), so one set of defaults serves 800 cells and
        1,000,000; with ``patience`` > 0 the adversarial phase may also stop
        early on a validation plateau (off by default).
    epochs, ae_epochs, decoder_epochs
        Deprecated: passes over the train cells, converted to steps.
    val_fraction
        Fraction of every type (x condition) with at least 20 train cells held
        out as validation cells for the stopping rules (never trained on).
    patience
        The adversarial phase stops after this many validation checks (of about
        40) in which the validation MMD did not improve by 2 %; the last state
        is kept.  0: run every step.  The autoencoder phases run their schedule
        (their validation loss is logged only).
    batch_size
        Minibatch size of the autoencoder phases (and of the adversarial phase
        unless *gan_batch_size* is given).
    gan_batch_size
        Minibatch size of the adversarial phase (default: *batch_size*).
    noise_dim
        Generator noise dimension (independent of the gene count).
    n_latent, hidden, type_emb_dim
        Latent size of the VAE, hidden width of every network, embedding size
        of the type (and condition).
    seed_mix
        Probability that a generated cell's input includes a seed cell of its
        type (and condition).
    kl_weight
        Final weight of the VAE's KL term (warmed up over the first third of
        the autoencoder steps).
    seed_residual
        Latent space: a seeded cell's code is its seed's latent code plus a
        generated offset (otherwise the seed only enters through its projection).
    seed_floor
        Latent space, privacy: weight of a penalty that keeps every seeded cell
        at least as far from its own seed as the seed's *seed_floor_k*-th
        nearest real neighbour of its type (``relu(1 - d / r) ** 2``), so a
        seed's synthetic cells sit among its neighbours, not on it, and the
        output does not reveal which cells were seeds (0: off).
    seed_floor_k
        Which neighbour sets the seed's radius.
    critic_path
        ``garage`` mode: ``on`` tells the critic whether a fake cell was seeded
        (the real cell it is paired with in the batch gets the same flag), so
        seeded and unseeded cells must each look like the real cells of their
        type; ``off`` judges only their mixture, and then the two paths learn
        complementary halves of each type: either half alone scored C2ST 0.65
        on average against 0.575 for the mixture (12 runs), so a shareable
        model, which makes unseeded cells only, was far less realistic than the
        run it came from. ``auto`` (default): ``on`` when the model is written
        with ``--shareable-model`` (its C2ST gap fell from 0.196 to 0.098 on
        the validation splits), ``off`` otherwise (the mixture, what a run
        writes, scored slightly better without it: gap +0.008 with it on the
        seven test splits). Round 13 of ``bench/results/fidelity_notes.md``.
    decoder_dropout
        Latent space: dropout in the decoder's hidden layers during the autoencoder
        phase (not the decoder fine-tuning, not generation): the decoder memorised
        the cells of small inputs; 0.2 lowered the membership attack on the
        development validation splits and C2ST on pbmc3k's (round 10 of
        ``bench/results/fidelity_notes.md``; 0: off).
    posterior_noise
        Latent space, privacy: the critic's real codes are drawn around each
        train cell's posterior mean with this multiple of its posterior sd,
        the sd capped at one sd of the codes per dimension (0: the means
        themselves; 1: posterior samples where the posterior is narrower than
        the codes' spread), so the generator is not rewarded for landing on the
        exact codes of the few cells of a small dataset. Off by default: it
        trades realism for privacy (round 11 of the notes).
    calibrate
        Latent space, after training (experimental, off by default): ``mean``
        shifts every type's generated codes so their mean is the type's fit
        cells' mean; ``diag`` also rescales them per dimension to the fit cells'
        sd (both shrunk towards no change with CALIB_SHRINK pseudo-cells;
        aggregate statistics, no single cell); ``none``: the generator's codes as
        they are. Neither lowered C2ST consistently with the same trained
        weights on the validation splits (round 12 of the notes).
    library
        Library sizes of generated cells: ``conditional`` (default: a log-normal
        per type x condition whose mean follows the generated code: a ridge
        regression of log size on the standardised code inside each type x
        condition group, fit on the fit cells after the adversarial phase, the
        group's sd reduced by the variance it explains; so a cell's size follows
        its state inside its type, as real sizes do; chosen on the validation
        splits: baron_mouse C2ST 0.609 -> 0.576 over 3 paired seeds, pbmc3k
        0.601 -> 0.603), ``lognormal`` (the same log-normal without the code:
        shrunk towards the type's for small groups) or ``joint`` (the latent GAN
        generates each cell's log library size with its code; on PBMC 3k's
        validation split it measured worse, C2ST 0.612 vs 0.587) or ``depth``
        (experimental: each cell's log size is drawn first, from a table of 40
        smoothed quantiles of its type x condition group's fit cells, or of its
        log-normal under 100 fit cells, and the generator and the critic are
        conditioned on it, so the codes follow the depth where the code carries
        it; two versions each level with the default on 15 validation runs, round
        28 of the notes;
        not with --type-states > 1 or --calibrate).  None reproduces the library
        size of an individual training cell.
    refit_dispersion
        Latent space: after the autoencoder phase, refit the NB dispersion with
        the decoder fixed at the cells' posterior means (the way generation
        decodes), so sampled counts are not noisier than real ones.
    ema_decay
        ``garage`` mode: cells are generated with an exponential moving average
        of the generator's weights, warmed up as ``min(decay, (1+t)/(10+t))``
        (0: use the last weights).
    type_states
        ``garage`` mode, latent space: the generator and the critic are
        conditioned on up to this many *states* inside each type (k-means
        clusters of the type's latent codes, fitted on the fit cells), so one
        Gaussian does not have to cover several sub-states of a type and put
        mass on the bridges between them (Liu et al., "Diverse Image Generation
        via Self-Conditioned GANs", CVPR 2020).  A generated cell draws its
        state by the state's share of its type (x condition) and seeded cells
        take seeds from their own state.  1: off (one state per type).
    state_min_cells
        Every state holds at least this many fit cells (a type with fewer than
        twice as many is one state), so rare types keep one state and no state
        is small enough to single out training cells.
    state_gate
        With ``type_states`` > 1: split a type only where its codes are
        clustered.  For every k the size rule allows, the k-means silhouette of
        the type's codes is compared with the silhouette of as many codes drawn
        from one Gaussian with the type's mean and covariance (an unclustered
        type of the same shape); the type takes the k with the largest excess if
        that excess is at least this value, else it stays one state, so a split
        type may get fewer states than without the gate.  The excess of one
        draw varies by about 0.01 at a few hundred cells.  0: off (every big
        type takes the largest k the size rule allows).  Only with
        ``type_states`` > 1 in garage mode's latent space (else warned, not
        applied).
    n_critic
        Critic steps per generator step.
    type_balance
        Adversarial minibatches draw a cell of type *t* with weight
        ``n_t ** -type_balance`` (0: uniform; 1: every type equally often).
    gp_weight
        WGAN-GP gradient-penalty weight.
    critic_pack
        ``garage`` mode, latent space, experimental: the critic judges packs of
        this many cells of one label (type, or type x state) and condition at
        once, real packs against generated packs, so a generator whose cells of
        a type are too alike (too little spread, or missing sub-states) is seen
        in the pack where each cell alone passes (PacGAN: Lin, Khetan, Fanti &
        Oh, NeurIPS 2018). The adversarial minibatch of B cells becomes
        ``B // pack`` packs (``pack * (B // pack)`` cells: the same number when
        *pack* divides B). A real pack holds distinct cells, except in a group
        with fewer than *pack* fit cells, which must repeat some (warned). 1: off.
    gan_loss
        ``garage`` mode: the adversarial loss. ``wgan-gp`` (default): Wasserstein
        critic with a gradient penalty on interpolates. ``ns-r1``: the
        non-saturating logistic loss with an R1 penalty on real codes
        (*r1_weight*), which converges locally where WGAN-GP circles the
        equilibrium (Mescheder, Geiger & Nowozin, "Which training methods for
        GANs do actually converge?", ICML 2018). Experimental: not separable
        from ``wgan-gp`` on paired validation runs (round 14 of
        ``bench/results/fidelity_notes.md``).
    r1_weight
        ``ns-r1``: weight gamma of the penalty ``gamma / 2 * E ||grad D(real)||^2``.
    lr_decay
        Decay both adversarial learning rates linearly to 0 over the adversarial
        phase (as in the WGAN-GP paper's experiments), so the last steps refine
        instead of circling. Off by default: C2ST gap +0.013 on six paired
        validation runs (round 14 of the notes).
    instance_noise
        ``garage`` mode, latent space, experimental: Gaussian noise of this sd
        (in units of the standardised codes' per-dimension sd) added to the
        real *and* the generated codes wherever the critic sees them, fresh at
        every step. Both distributions are blurred by the same kernel, so the
        generator's target is unchanged, while a critic that would memorise a
        small set of real codes sees overlapping inputs (instance noise:
        Sønderby et al. 2017, Arjovsky & Bottou 2017; 0: off). It did not move
        C2ST on paired validation runs at 0.2 or 0.5; at 0.5 it lowered the
        membership attack on sc_mixology's three validation seeds and left the
        other sets level (round 15 of ``bench/results/fidelity_notes.md``).
    lr_gan
        Adam learning rate of the generator and the critic: 2e-4 for every game
        (``None`` means the same). 4e-4 was the default of ``garage`` mode in latent
        space for rounds 16-17 and did not hold on fresh validation seeds (round 17
        of ``bench/results/fidelity_notes.md``).
    lr_ae
        Adam learning rate of the autoencoder phases.
    label_smoothing
        Target for real cells in ``original`` mode's BCE loss.
    count_dist
        How counts are drawn from the generated means: ``nb`` (VAE dispersion),
        ``poisson``, ``multinomial``; ``auto`` = nb in latent space, else poisson.
    n_cells
        Synthetic cells to write (default: the number of train cells).
    composition
        ``original`` (train proportions of type x condition), ``balanced``
        (equal per type) or ``uniform-rare-boost`` (rare types raised to an equal
        share, the others keep their relative proportions); inside a type, the
        cells follow the type's train proportions over conditions.
    cells_per_type
        Exact counts for some types (``"DC=200,Platelet=100"``, a dict, or pairs).
    cells_per_group
        Exact counts for some type x condition groups (``"B|STIM=300,DC|CTRL=50"``).
    allow_counterfactual
        Allow *cells_per_group* to ask for a type x condition combination that
        has no training cell (generated as the type's code decoded under the
        condition: a counterfactual, flagged in the output).  Without it such a
        request fails naming the combination.
    rare_threshold
        Only for inputs without ``uns['garage']['rare_types']`` (files not made
        by ``garage preprocess``): a type below this fraction of the cells is rare.
    max_memory_gb
        Memory budget of the pre-flight check on the CPU (default: the available
        memory, capped by a container's or scheduler job's cgroup limit).
    checkpoint_every
        Write ``OUTDIR/PREFIX.gan.ckpt.pt`` every N optimiser steps (0: never).
    seed
        Feeds every random source.
    """

    mode: Mode = "garage"
    space: Space = "latent"
    ae_steps: int | None = None
    gan_steps: int | None = None
    decoder_steps: int | None = None
    epochs: int | None = None
    ae_epochs: int | None = None
    decoder_epochs: int | None = None
    val_fraction: float = 0.1
    patience: int = 0
    batch_size: int = 128
    gan_batch_size: int | None = None
    noise_dim: int = 32
    n_latent: int = 16
    hidden: int = 256
    type_emb_dim: int = 16
    seed_mix: float = 0.5
    kl_weight: float = 1.0
    seed_residual: bool = True
    seed_floor: float = 1.0
    seed_floor_k: int = 3
    critic_path: CriticPath = "auto"
    posterior_noise: float = 0.0
    decoder_dropout: float = 0.2
    calibrate: Calibrate = "none"
    library: Library = "conditional"
    refit_dispersion: bool = True
    ema_decay: float = 0.99
    type_states: int = 1
    state_min_cells: int = 50
    state_gate: float = 0.0
    n_critic: int = 5
    type_balance: float = 0.5
    gp_weight: float = 10.0
    critic_pack: int = 1
    gan_loss: GanLoss = "wgan-gp"
    r1_weight: float = 1.0
    lr_decay: bool = False
    instance_noise: float = 0.0
    lr_gan: float | None = LR_GAN_DEFAULT  # None is read as the default in __post_init__
    lr_ae: float = 1e-3
    label_smoothing: float = 0.9
    count_dist: CountDist = "auto"
    n_cells: int | None = None
    composition: Composition = "original"
    cells_per_type: tuple[tuple[str, int], ...] | None = field(default=None)
    cells_per_group: tuple[tuple[str, int], ...] | None = field(default=None)
    allow_counterfactual: bool = False
    rare_threshold: float = C.RARE_THRESHOLD
    checkpoint_every: int = 500
    max_memory_gb: float | None = None
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "critic_path", critic_path_value(self.critic_path))
        if self.lr_gan is None:  # accepted for callers of rounds 16-17, where None meant "the game's default"
            object.__setattr__(self, "lr_gan", LR_GAN_DEFAULT)
        object.__setattr__(self, "cells_per_type", parse_cells_per_type(self.cells_per_type))
        object.__setattr__(self, "cells_per_group", parse_cells_per_group(self.cells_per_group))

    @property
    def latent_garage(self) -> bool:
        """``garage`` mode in latent space: the game the latent-only options were built and tuned for."""
        return self.mode == "garage" and self.effective_space == "latent"

    @property
    def instance_noise_applies(self) -> bool:
        """``--instance-noise`` acts on latent codes of the ``garage`` mode only (elsewhere it is ignored)."""
        return self.latent_garage

    @property
    def effective_critic_pack(self) -> int:
        """Cells per critic input (``--critic-pack``; 1 outside garage mode's latent space)."""
        return int(self.critic_pack) if self.latent_garage else 1

    @property
    def critic_path_on(self) -> bool:
        """Whether the critic takes the seeded flag (``auto`` not resolved by ``for_output``: off)."""
        return self.critic_path == "on"

    #: options that do not change training: a run and its --resume may differ in these
    NOT_TRAINING: ClassVar[tuple[str, ...]] = ("n_cells", "composition", "cells_per_type", "cells_per_group",
                                               "allow_counterfactual", "checkpoint_every", "max_memory_gb",
                                               "calibrate")

    def train_options(self) -> dict:
        """The options a checkpoint records and a --resume must match (all but :attr:`NOT_TRAINING`)."""
        return {k: v for k, v in self.to_dict().items() if k not in self.NOT_TRAINING}

    def for_output(self, shareable_model: bool) -> "GANConfig":
        """The config with ``critic_path='auto'`` resolved for the model to write (``on`` for a
        shareable model: it generates unseeded cells only; ``off`` otherwise)."""
        from dataclasses import replace

        if self.critic_path != "auto":
            return self
        return replace(self, critic_path="on" if shareable_model else "off")

    @property
    def effective_space(self) -> str:
        return "gene" if self.mode == "original" else self.space

    @property
    def effective_count_dist(self) -> str:
        if self.count_dist != "auto":
            return self.count_dist
        return "nb" if self.effective_space == "latent" else "poisson"

    @property
    def adversarial_batch_size(self) -> int:
        return int(self.gan_batch_size or self.batch_size)

    @property
    def effective_type_states(self) -> int:
        """States per type the networks are conditioned on (1 outside garage mode's latent space)."""
        return int(self.type_states) if self.latent_garage else 1

    @property
    def joint_library(self) -> bool:
        return self.latent_garage and self.library == "joint"

    @property
    def conditional_library(self) -> bool:
        return self.latent_garage and self.library == "conditional"

    @property
    def depth_library(self) -> bool:
        """The depth is drawn first and conditions the generator and the critic (``--library depth``)."""
        return self.latent_garage and self.library == "depth"

    def schedule(self, n_train: int) -> dict[str, int]:
        """Optimiser steps per phase for *n_train* cells (explicit options win).

        ``auto``: the autoencoder gets 60 passes over the cells, clipped to
        [1,000, 20,000] steps but never more than ``AE_MAX_PASSES`` (100)
        passes (small inputs were memorised at the 1,000-step floor); the decoder
        fine-tuning a third of that, clipped to [300, 3,000] and never more than
        a third of the 100-pass cap (also when *ae_steps* is given); the adversarial phase a fixed ``GAN_STEPS_DEFAULT``
        (6,000) generator steps: a 16-d latent distribution needs about as many
        steps whatever the number of cells, and on the validation splits the
        earlier data-scaled 1,500-5,000 steps stopped short.  *patience* > 0 lets
        the adversarial phase stop earlier when its validation score stops
        improving (off by default: that score plateaued while C2ST still
        improved); the autoencoder and decoder phases run every step.
        """
        per_pass = max(1, n_train // self.batch_size)
        # small inputs: the 1,000-step floor would mean hundreds of passes, and the autoencoder
        # memorises its cells (decoded train codes: membership-attack AUC 0.88 on sc_mixology's
        # validation split at 217 passes); never more than AE_MAX_PASSES passes
        # (a step draws min(batch_size, n) cells: with fewer cells than a batch, a step is a pass)
        cap = max(1, math.ceil(AE_MAX_PASSES * n_train / max(1, min(self.batch_size, n_train))))
        ae = self.ae_steps if self.ae_steps is not None else (
            self.ae_epochs * per_pass if self.ae_epochs is not None
            else min(int(np.clip(60 * per_pass, 1000, 20000)), cap))
        dec = self.decoder_steps if self.decoder_steps is not None else (
            self.decoder_epochs * per_pass if self.decoder_epochs is not None
            else min(int(np.clip(ae // 3, 300, 3000)), max(1, cap // 3)))
        gan = self.gan_steps if self.gan_steps is not None else (
            max(1, self.epochs * per_pass // self.n_critic) if self.epochs is not None
            else GAN_STEPS_DEFAULT)
        if self.effective_space != "latent":
            ae, dec = 0, 0
        return {"ae": int(ae), "decoder": int(dec), "gan": int(gan)}

    def to_dict(self) -> dict:
        """The options that shape the result (``max_memory_gb`` describes the machine, like
        preprocess's: a Nextflow task passes its ``task.memory``)."""
        d = asdict(self)
        d.pop("max_memory_gb", None)
        d["cells_per_type"] = dict(self.cells_per_type) if self.cells_per_type else None
        d["cells_per_group"] = dict(self.cells_per_group) if self.cells_per_group else None
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
        need(self.library in LIBRARIES, f"unknown --library {self.library!r}", f"use one of {', '.join(LIBRARIES)}")
        for name in ("ae_steps", "gan_steps", "decoder_steps", "epochs", "ae_epochs", "decoder_epochs"):
            v = getattr(self, name)
            need(v is None or (isinstance(v, int) and v >= 0),
                 f"--{name.replace('_', '-')} must be an integer >= 0, got {v!r}", "pass a non-negative number")
        for name in ("gan_steps", "epochs"):
            v = getattr(self, name)
            need(v is None or v >= 1, f"--{name.replace('_', '-')} must be >= 1", "pass e.g. 2000, or omit it")
        for name in ("ae_steps", "ae_epochs"):
            v = getattr(self, name)
            need(self.effective_space != "latent" or v is None or v >= 1,
                 f"--{name.replace('_', '-')} must be >= 1 in latent space", "omit it, or use --space gene")
        need(isinstance(self.checkpoint_every, int) and self.checkpoint_every >= 0,
             f"--checkpoint-every must be an integer >= 0, got {self.checkpoint_every!r}", "pass e.g. 500")
        need(isinstance(self.patience, int) and self.patience >= 0, "--patience must be an integer >= 0",
             "pass e.g. 8 (0: never stop early)")
        need(0.0 <= self.val_fraction < 0.5, f"--val-fraction must be in [0, 0.5), got {self.val_fraction}",
             "pass e.g. 0.1")
        for name in ("batch_size", "noise_dim", "n_latent", "hidden", "type_emb_dim", "n_critic", "type_states",
                     "state_min_cells"):
            v = getattr(self, name)
            need(isinstance(v, int) and v >= 1, f"--{name.replace('_', '-')} must be an integer >= 1, got {v!r}",
                 "pass a positive number")
        need(self.batch_size >= 2, "--batch-size must be >= 2", "pass e.g. 128")
        need(isinstance(self.state_min_cells, int) and self.state_min_cells >= 10,
             f"--state-min-cells must be an integer >= 10, got {self.state_min_cells!r}",
             "pass e.g. 50 (a state must not be small enough to single out cells)")
        need(isinstance(self.state_gate, (int, float)) and not isinstance(self.state_gate, bool)
             and math.isfinite(self.state_gate) and self.state_gate >= 0,
             f"--state-gate must be a number >= 0, got {self.state_gate!r}",
             "pass e.g. 0.04 (0: every big type takes the largest k)")
        need(self.gan_batch_size is None or (isinstance(self.gan_batch_size, int) and self.gan_batch_size >= 2),
             f"--gan-batch-size must be an integer >= 2, got {self.gan_batch_size!r}", "pass e.g. 512, or omit it")
        need(0.0 <= self.seed_mix <= 1.0, f"--seed-mix must be in [0, 1], got {self.seed_mix}",
             "pass e.g. 0.5 (0 = noise only)")
        need(0.0 <= self.type_balance <= 1.0, f"--type-balance must be in [0, 1], got {self.type_balance}",
             "pass e.g. 0.5")
        need(0.0 <= self.ema_decay < 1.0, f"--ema-decay must be in [0, 1), got {self.ema_decay}",
             "pass e.g. 0.99 (0 = no averaging)")
        need(self.kl_weight >= 0, "--kl-weight must be >= 0", "pass e.g. 1.0")
        need(self.seed_floor >= 0, "--seed-floor must be >= 0", "pass e.g. 1.0 (0: off)")
        need(0 <= self.decoder_dropout < 1, "--decoder-dropout must be in [0, 1)", "pass e.g. 0.2 (0: off)")
        need(self.critic_path in CRITIC_PATHS, f"unknown --critic-path {self.critic_path!r}",
             f"use one of {', '.join(CRITIC_PATHS)}")
        need(self.calibrate in ("none", "mean", "diag"),
             f"--calibrate must be none, mean or diag, got {self.calibrate!r}", "pass mean, diag or none")
        # after the type checks: the depth tables are per type x condition, and the calibration's
        # codes are drawn without a depth
        need(not (self.depth_library and self.type_states > 1), "--library depth does not combine with --type-states > 1",
             "use --type-states 1, or another --library")
        need(not (self.depth_library and self.calibrate != "none"), "--library depth does not combine with --calibrate",
             "use --calibrate none, or another --library")
        need(0 <= self.posterior_noise <= 4, "--posterior-noise must be in [0, 4]", "pass e.g. 0.5")
        need(isinstance(self.seed_floor_k, int) and self.seed_floor_k >= 1, "--seed-floor-k must be >= 1",
             "pass e.g. 3")
        need(self.gp_weight >= 0, "--gp-weight must be >= 0", "pass e.g. 10")
        need(isinstance(self.critic_pack, int) and not isinstance(self.critic_pack, bool)
             and 1 <= self.critic_pack <= 8, f"--critic-pack must be an integer in [1, 8], got {self.critic_pack!r}",
             "pass e.g. 2 (1: off)")
        need(self.effective_critic_pack <= self.adversarial_batch_size,
             f"--critic-pack {self.critic_pack} is larger than the adversarial batch ({self.adversarial_batch_size})",
             "pass a smaller --critic-pack or a larger --gan-batch-size")
        need(self.gan_loss in GAN_LOSSES, f"unknown --gan-loss {self.gan_loss!r}", f"use one of {', '.join(GAN_LOSSES)}")
        need(self.r1_weight >= 0, "--r1-weight must be >= 0", "pass e.g. 1.0")
        need(isinstance(self.instance_noise, (int, float)) and not isinstance(self.instance_noise, bool)
             and 0 <= self.instance_noise <= 2, f"--instance-noise must be in [0, 2], got {self.instance_noise!r}",
             "pass e.g. 0.2 (0: off)")
        for name in ("seed_residual", "refit_dispersion", "allow_counterfactual", "lr_decay"):
            v = getattr(self, name)  # a params file's "false" (a string) would read as true
            need(isinstance(v, bool), f"{name} must be true or false, got {v!r}",
                 f"write {name}: true or {name}: false (no quotes) in the params file")
        need(self.lr_gan > 0 and self.lr_ae > 0, "learning rates must be > 0", "pass e.g. 1e-4")
        need(0.5 < self.label_smoothing <= 1.0, "--label-smoothing must be in (0.5, 1]", "pass e.g. 0.9")
        need(self.n_cells is None or (isinstance(self.n_cells, int) and self.n_cells >= 1),
             f"--n-cells must be >= 1, got {self.n_cells!r}", "pass a positive number or omit it")
        need(0.0 < self.rare_threshold < 1.0, "--rare-threshold must be in (0, 1)", "pass e.g. 0.03")
        need(not (self.effective_space == "gene" and self.effective_count_dist == "nb"),
             "--count-dist nb needs the VAE dispersion of --space latent",
             "use --count-dist poisson/multinomial with --space gene or --mode original")
        need(self.seed >= 0, "--seed must be >= 0", "pass e.g. 0")
        need(self.max_memory_gb is None or self.max_memory_gb > 0,
             f"--max-memory-gb must be > 0, got {self.max_memory_gb}", "pass e.g. 16, or omit it")
