"""``garage gan`` (train + generate) and ``garage generate`` (more cells from a saved model)."""

from __future__ import annotations

from ..constants import RARE_THRESHOLD

from pathlib import Path

import click

from ._options import device_option, existing_file, outdir_option, prefix_option, seed_option, threads_option

COMPOSITIONS = ["original", "balanced", "uniform-rare-boost"]


def composition_options(f):
    f = click.option("--allow-counterfactual", is_flag=True, default=False,
                     help="Let --cells-per-group ask for a type x condition never seen in training "
                          "(the type decoded under that condition; flagged in obs['counterfactual']).")(f)
    f = click.option("--cells-per-group", default=None, metavar="TYPE|CONDITION=N,...",
                     help='Exact numbers for some type x condition groups, e.g. "B|STIM=300,DC|CTRL=50" '
                          "(models trained with a condition).")(f)
    f = click.option("--cells-per-type", default=None, metavar="TYPE=N,...",
                     help='Exact numbers for some types, e.g. "DC=200,Platelet=100"; the rest follow --composition.')(f)
    f = click.option("--composition", type=click.Choice(COMPOSITIONS), default="original", show_default=True,
                     help="Type proportions: as in train, equal, or rare types raised to an equal share.")(f)
    f = click.option("--n-cells", type=click.IntRange(min=1), default=None,
                     help="Synthetic cells to write (default: the number of train cells).")(f)
    return f


@click.command("gan")
@click.option("--input", "input_", type=existing_file, required=True,
              help="PREFIX.seeds.h5ad from `garage gat` (train cells and seeds).")
@prefix_option
@outdir_option
@click.option("--mode", type=click.Choice(["garage", "original"]), default="garage", show_default=True,
              help="garage: conditional hybrid-input WGAN-GP; original: the prototype "
                   "(unconditional, real seeds fed directly, label-smoothed BCE), for comparison.")
@click.option("--space", type=click.Choice(["latent", "gene"]), default="latent", show_default=True,
              help="Where the adversarial game runs: a count-VAE latent space, or the HVGs directly.")
@click.option("--gan-steps", type=click.IntRange(min=1), default=None,
              help="Generator steps of the adversarial phase [default: 6000].")
@click.option("--ae-steps", type=click.IntRange(min=1), default=None,
              help="Autoencoder optimiser steps (latent space) [default: chosen from the number of cells].")
@click.option("--decoder-steps", type=click.IntRange(min=0), default=None,
              help="Decoder fine-tuning steps on posterior means (latent space; 0: skip) [default: chosen].")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Deprecated: adversarial passes over the cells (converted to --gan-steps).")
@click.option("--ae-epochs", type=click.IntRange(min=1), default=None,
              help="Deprecated: autoencoder passes over the cells (converted to --ae-steps).")
@click.option("--decoder-epochs", type=click.IntRange(min=0), default=None,
              help="Deprecated: decoder passes over the cells (converted to --decoder-steps).")
@click.option("--val-fraction", type=click.FloatRange(0, 0.5, max_open=True), default=0.1, show_default=True,
              help="Share of each type (x condition) with >= 20 train cells held out for the stopping rules.")
@click.option("--patience", type=click.IntRange(min=0), default=0, show_default=True,
              help="Adversarial phase: stop after this many validation checks (of ~40) without a 2% "
                   "improvement (0, the default: run every step; the score plateaued while C2ST still improved).")
@click.option("--batch-size", type=click.IntRange(min=2), default=128, show_default=True)
@click.option("--noise-dim", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--n-latent", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--hidden", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--seed-mix", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Probability that a cell's generator input includes a seed cell of its type.")
@click.option("--kl-weight", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Weight of the VAE's KL term (latent space).")
@click.option("--seed-residual/--no-seed-residual", default=True, show_default=True,
              help="Latent space: a seeded cell is its seed's latent code plus a generated offset.")
@click.option("--seed-floor", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Privacy: weight of the penalty keeping seeded cells at least as far from their seed as its "
                   "k-th real neighbour (0: off).")
@click.option("--seed-floor-k", type=click.IntRange(min=1), default=3, show_default=True,
              help="The neighbour that sets a seed's privacy radius.")
@click.option("--critic-path", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="garage mode: tell the critic which fakes were seeded, so seeded and unseeded cells must each "
                   "look real, not only their mixture. auto: on with --shareable-model (it makes unseeded "
                   "cells only), off otherwise.")
@click.option("--decoder-dropout", type=click.FloatRange(0, 1, max_open=True), default=0.2, show_default=True,
              help="Latent space: dropout in the decoder during the autoencoder phase (against memorising the "
                   "cells of a small input; 0: off).")
@click.option("--calibrate", type=click.Choice(["none", "mean", "diag"]), default="none", show_default=True,
              help="Latent space, experimental: after training, move each type's generated codes to its fit cells' "
                   "mean (mean) and per-dimension sd (diag); aggregate statistics, shrunk for small types. It did "
                   "not improve realism in the benchmarks (round 12 of bench/results/fidelity_notes.md).")
@click.option("--posterior-noise", type=click.FloatRange(0, 4), default=0.0, show_default=True,
              help="Latent space, privacy: the critic's real codes are drawn around each cell's posterior mean "
                   "with this multiple of its posterior sd, capped at the codes' sd per dimension (0: the means).")
@click.option("--library", type=click.Choice(["conditional", "lognormal", "joint", "depth"]), default="conditional",
              show_default=True,
              help="Library sizes: a per-type log-normal, the same with its mean following the generated code "
                   "(conditional), generated with each cell's code (joint), or drawn first from the group's "
                   "quantiles with the generator conditioned on it (depth, experimental).")
@click.option("--refit-dispersion/--no-refit-dispersion", default=True, show_default=True,
              help="Latent space: refit the NB dispersion at the cells' posterior means after the VAE phase.")
@click.option("--ema-decay", type=click.FloatRange(0, 1, max_open=True), default=0.99, show_default=True,
              help="Generate with a moving average of the generator's weights (0: the last weights).")
@click.option("--gan-batch-size", type=click.IntRange(min=2), default=None,
              help="Minibatch size of the adversarial phase (default: --batch-size).")
@click.option("--type-states", type=click.IntRange(min=1), default=1, show_default=True,
              help="Latent space: condition on up to N k-means states inside each type (1: off).")
@click.option("--state-min-cells", type=click.IntRange(min=10), default=50, show_default=True,
              help="Fit cells every within-type state must hold (smaller types keep one state).")
@click.option("--state-gate", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="With --type-states: split a type only where its codes' k-means silhouette beats "
                   "a one-Gaussian reference by this much, at the k that beats it most (0: off).")
@click.option("--n-critic", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--type-balance", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Adversarial batches draw type t with weight n_t^-x (0 uniform, 1 balanced).")
@click.option("--gp-weight", type=click.FloatRange(min=0), default=10.0, show_default=True)
@click.option("--critic-pack", type=click.IntRange(1, 8), default=1, show_default=True,
              help="garage mode, latent space, experimental: the critic judges packs of this many cells of one type "
                   "(and condition) at once (PacGAN), so too-alike cells of a type are seen (1: off).")
@click.option("--gan-loss", type=click.Choice(["wgan-gp", "ns-r1"]), default="wgan-gp", show_default=True,
              help="garage mode only, experimental: Wasserstein critic with gradient penalty, or the non-saturating "
                   "logistic loss with an R1 penalty on real cells (--r1-weight); not better than wgan-gp in the "
                   "benchmarks (round 14 of bench/results/fidelity_notes.md).")
@click.option("--r1-weight", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Weight of the R1 penalty (used by --gan-loss ns-r1 only).")
@click.option("--lr-decay/--no-lr-decay", default=False, show_default=True,
              help="Decay the adversarial learning rates linearly to 0 over the adversarial phase (both modes) "
                   "(worse in the benchmarks: round 14 of bench/results/fidelity_notes.md).")
@click.option("--instance-noise", type=click.FloatRange(0, 2), default=0.0, show_default=True,
              help="garage mode, latent space, experimental: Gaussian noise of this sd (standardised code units) "
                   "added to real and generated codes wherever the critic sees them (0: off); realism unchanged "
                   "in the benchmarks, a lower membership attack on one small dataset at 0.5 (round 15 of "
                   "bench/results/fidelity_notes.md).")
@click.option("--lr-gan", type=click.FloatRange(min=0, min_open=True), default=2e-4, show_default=True,
              help="Adam learning rate of the generator and the critic, the same for every mode, space and loss "
                   "(4e-4, the default of garage mode in latent space with wgan-gp in rounds 16-17, was not "
                   "confirmed on fresh validation seeds: round 17 of bench/results/fidelity_notes.md).")
@click.option("--lr-ae", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True)
@click.option("--count-dist", type=click.Choice(["auto", "nb", "poisson", "multinomial"]), default="auto",
              show_default=True, help="Count sampling; auto = nb in latent space, poisson otherwise.")
@composition_options
@click.option("--rare-threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=RARE_THRESHOLD,
              show_default=True,
              help="Only for inputs without uns['garage']['rare_types'] (not from garage preprocess).")
@click.option("--max-memory-gb", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Memory budget of the pre-flight check (default: available memory, cgroup-capped).")
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=500, show_default=True,
              help="Write OUTDIR/PREFIX.gan.ckpt.pt every N optimiser steps (0: never).")
@click.option("--provenance/--no-provenance", default=True, show_default=True,
              help="Write PREFIX.provenance.tsv (PRIVATE: names the seed cell of each synthetic cell).")
@click.option("--shareable-model", is_flag=True,
              help="Write PREFIX.generator.pt without seed codes, seed names or training-cell digests "
                   "(it then generates unseeded cells only, and so does this run).")
@click.option("--resume", is_flag=True, help="Continue from OUTDIR/PREFIX.gan.ckpt.pt.")
@seed_option
@device_option
@threads_option
def gan(input_: Path, prefix: str, outdir: Path, resume: bool, device: str, threads, provenance: bool,
        shareable_model: bool, **kwargs) -> None:
    """Train the conditional GAN on train cells and write labelled synthetic counts."""
    from ..gan import GANConfig, run_gan

    out = run_gan(input_, outdir, prefix, GANConfig(**kwargs), device=device, threads=threads, resume=resume,
                  provenance=provenance, shareable_model=shareable_model)
    click.echo(str(out["h5ad"]))


@click.command("generate")
@click.option("--model", type=existing_file, required=True, help="PREFIX.generator.pt from `garage gan`.")
@prefix_option
@outdir_option
@composition_options
@click.option("--provenance", is_flag=True,
              help="Also write PREFIX.generated.provenance.tsv (PRIVATE: names each cell's seed cell).")
@seed_option
@device_option
def generate(model: Path, prefix: str, outdir: Path, n_cells, composition, cells_per_type, cells_per_group,
             allow_counterfactual, provenance, seed, device) -> None:
    """More synthetic cells from a saved generator, without retraining."""
    from ..gan import run_generate

    out = run_generate(model, outdir, prefix, n_cells=n_cells, composition=composition,
                       cells_per_type=cells_per_type, seed=seed, device=device, cells_per_group=cells_per_group,
                       allow_counterfactual=allow_counterfactual, provenance=provenance)
    click.echo(str(out["h5ad"]))
