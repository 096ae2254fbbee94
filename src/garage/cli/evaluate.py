"""``garage evaluate``."""

from __future__ import annotations

from ..constants import RARE_THRESHOLD

from pathlib import Path

import click

from ._options import existing_file, outdir_option, prefix_option, seed_option


@click.command("evaluate")
@click.option("--real", type=existing_file, required=True,
              help="PREFIX.preprocessed.h5ad (or PREFIX.seeds.h5ad) the synthetic cells came from.")
@click.option("--synthetic", type=existing_file, required=True,
              help="PREFIX.synthetic.h5ad: integer counts in X, obs['cell_type'].")
@prefix_option
@outdir_option
@seed_option
@click.option("--n-repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Repeated balanced subsamples; metrics report mean and std.")
@click.option("--max-cells", type=click.IntRange(min=10), default=2000, show_default=True,
              help="Cells per side in each balanced subsample (C2ST, MMD, gene statistics).")
@click.option("--wasserstein-max-cells", type=click.IntRange(min=2), default=1000,
              show_default=True, help="Cells per side for exact EMD.")
@click.option("--leiden-max-cells", type=click.IntRange(min=10), default=3000, show_default=True,
              help="Cells per side clustered for ari/nmi.")
@click.option("--privacy-max-cells", type=click.IntRange(min=2), default=20000,
              show_default=True, help="Synthetic cells in the distance-based privacy metrics.")
@click.option("--umap-max-cells", type=click.IntRange(min=10), default=2000, show_default=True,
              help="Cells per side (real, synthetic) in the UMAP picture.")
@click.option("--c2st-classifier", type=click.Choice(["knn", "rf"]), default="knn",
              show_default=True, help="Classifier of the two-sample test.")
@click.option("--rare-threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=RARE_THRESHOLD, show_default=True,
              help="A type is rare below this fraction of real cells (same as garage gat).")
@click.option("--leiden-resolution", type=click.FloatRange(min=0, min_open=True), default=1.0,
              show_default=True, help="Fixed Leiden resolution for ari/nmi.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="BLAS/OpenMP threads (evaluation is many small operations; more threads "
                   "rarely help).")
@click.option("--plots/--no-plots", default=True, show_default=True,
              help="Write PREFIX.umap.png and PREFIX.per_type.png.")
def evaluate(real: Path, synthetic: Path, prefix: str, outdir: Path, threads: int,
             **kwargs) -> None:
    """Fidelity, per-type, utility and privacy metrics of synthetic vs real holdout cells.

    Every metric is reported next to its control (real train vs real holdout).
    Writes PREFIX.garage_metrics.json, PREFIX.per_type.tsv and two PNG plots.
    """
    from ..evaluate import EvaluateConfig, run_evaluate

    out = run_evaluate(real, synthetic, outdir, prefix, EvaluateConfig(**kwargs), threads=threads)
    for p in out.values():
        click.echo(str(p))
