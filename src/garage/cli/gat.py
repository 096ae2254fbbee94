"""``garage gat``: stage 1, GAT seed selection."""

from __future__ import annotations

from pathlib import Path

import click

from ._options import (
    device_option,
    existing_file,
    outdir_option,
    prefix_option,
    seed_option,
    threads_option,
)

_unit = click.FloatRange(0, 1, min_open=False, max_open=True)


@click.command("gat")
@click.option("--input", "input_", type=existing_file, required=True,
              help="PREFIX.preprocessed.h5ad from `garage preprocess`.")
@prefix_option
@outdir_option
@click.option("--features", type=click.Choice(["pca", "hvg"]), default="pca", show_default=True,
              help="Node features: obsm['X_pca'] or log-normalised HVGs.")
@click.option("--layers", "n_layers", type=click.IntRange(min=1), default=2, show_default=True,
              help="GATConv layers.")
@click.option("--hidden", type=click.IntRange(min=1), default=32, show_default=True,
              help="Hidden units per head.")
@click.option("--heads", type=click.IntRange(min=1), default=4, show_default=True,
              help="Attention heads (concatenated).")
@click.option("--dropout", type=_unit, default=0.3, show_default=True, help="Feature dropout.")
@click.option("--attention-dropout", type=_unit, default=0.1, show_default=True,
              help="Dropout on attention coefficients while training.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, show_default="auto: 100 "
              "full-batch, 5 minibatch", help="Passes over the train cells.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=5e-3,
              show_default=True, help="Adam learning rate.")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=5e-4, show_default=True)
@click.option("--class-weight", type=click.Choice(["balanced", "sqrt", "none"]),
              default="balanced", show_default=True,
              help="Loss weight per type (balanced = the explicit rare priority).")
@click.option("--seed-fraction", type=click.FloatRange(0, 1, min_open=True), default=0.1,
              show_default=True, help="Seeds as a fraction of train cells.")
@click.option("--rare-threshold", type=_unit, default=None,
              show_default="unused: preprocess decides the rare types",
              help="Deprecated fallback: rare types are read from the input "
                   "(uns['garage']['rare_types'], decided by "
                   "`garage preprocess --rare-threshold`). "
                   "Only for inputs without that list (default then 0.03); ignored otherwise.")
@click.option("--rare-min-seeds", type=click.IntRange(min=0), default=10, show_default=True,
              help="Guaranteed seeds per rare type (all its train cells if fewer).")
@click.option("--seed-strategy", type=click.Choice(["score", "random", "coverage"]),
              default="score", show_default=True,
              help="How each type's quota is filled: top score; uniformly at random (ablation); "
                   "or the best-scoring central cell of each of `quota` regions of the type "
                   "(coverage; regions in obs['garage_seed_region']).")
@click.option("--centrality", type=click.Choice(["raw", "relative"]), default="raw",
              show_default=True,
              help="Attention centrality in the score: the raw sum of attention received "
                   "(grows with degree) or attention relative to a uniform share (about "
                   "independent of degree).")
@click.option("--coverage-space", type=click.Choice(["pca", "gat"]), default="pca",
              show_default=True, help="Coordinates the coverage strategy partitions types in.")
@click.option("--score-weight", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="lambda in score = centrality_rank^lambda * confidence^(1-lambda).")
@click.option("--minibatch-threshold", type=click.IntRange(min=0), default=50_000,
              show_default=True, help="Above this many cells: neighbour-sampled minibatches.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Seed cells per minibatch.")
@click.option("--num-neighbors", type=click.IntRange(min=1), default=10, show_default=True,
              help="Neighbours sampled per cell and layer (minibatch mode).")
@click.option("--inference-batch-size", type=click.IntRange(min=1), default=8192,
              show_default=True, help="Cells per chunk of the exact inference (minibatch mode).")
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=10, show_default=True,
              help="Write OUTDIR/PREFIX.gat.ckpt.pt every N epochs (0: never).")
@click.option("--max-memory-gb", type=click.FloatRange(min=0, min_open=True), default=None,
              show_default="available memory",
              help="Host memory budget of the pre-flight check on the CPU (on cuda the GPU's free "
                   "memory is the budget).")
@seed_option
@device_option
@threads_option
@click.option("--resume", is_flag=True,
              help="Continue from OUTDIR/PREFIX.gat.ckpt.pt when it exists.")
def gat(input_: Path, prefix: str, outdir: Path, device: str, threads: int | None,
        resume: bool, **kwargs) -> None:
    """Train the GAT, score cells by attention and pick seed cells (rare types first)."""
    from ..gat import GATConfig, run_gat

    out = run_gat(input_, outdir, prefix, GATConfig(**kwargs), device=device, threads=threads,
                  resume=resume)
    for key in ("h5ad", "model", "log"):
        click.echo(str(out[key]))
