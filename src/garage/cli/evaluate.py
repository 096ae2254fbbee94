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
@click.option("--seeds", type=existing_file, default=None,
              help="PREFIX.seeds.h5ad (garage gat): obs['garage_seed'] marks the seed cells; "
                   "enables the seed-aware privacy metrics (seed_mia_auc).")
@click.option("--provenance", type=existing_file, default=None,
              help="PREFIX.provenance.tsv (garage gan; PRIVATE): the seed of each synthetic cell; "
                   "enables seed_nn_share (and the seed metrics without --seeds).")
@prefix_option
@outdir_option
@seed_option
@click.option("--n-repeats", type=click.IntRange(min=1), default=10, show_default=True,
              help="Draws of the real cells (holdout halves or bootstrap resamples); every metric "
                   "reports mean, std and a 95% interval over draws (1: no interval).")
@click.option("--max-cells", type=click.IntRange(min=10), default=2000, show_default=True,
              help="Cells per side in each balanced subsample (C2ST, MMD, gene statistics); at "
                   "most half of the holdout.")
@click.option("--wasserstein-max-cells", type=click.IntRange(min=2), default=1000,
              show_default=True, help="Cells per side for exact EMD.")
@click.option("--leiden-max-cells", type=click.IntRange(min=10), default=3000, show_default=True,
              help="Cells per side clustered for ari/nmi.")
@click.option("--privacy-max-cells", type=click.IntRange(min=2), default=5000,
              show_default=True,
              help="Query cells per set (synthetic, holdout, members, seeds) in the "
                   "nearest-neighbour privacy searches.")
@click.option("--classifier-max-cells", type=click.IntRange(min=10), default=5000,
              show_default=True, help="Training cells of one cell-type classifier (judge, TSTR).")
@click.option("--per-type-max-cells", type=click.IntRange(min=10), default=500, show_default=True,
              help="Cells per type and set in the per-type C2ST, spread and DCR.")
@click.option("--pca-max-cells", type=click.IntRange(min=10), default=10000, show_default=True,
              help="Train cells the shared PCA is fitted on (the only dense block).")
@click.option("--umap-max-cells", type=click.IntRange(min=10), default=2000, show_default=True,
              help="Cells per side (real, synthetic) in the UMAP picture.")
@click.option("--c2st-classifier", type=click.Choice(["knn", "rf"]), default="knn",
              show_default=True, help="Classifier of the two-sample test.")
@click.option("--c2st-draws", type=click.IntRange(min=1), default=20, show_default=True,
              help="Full-size draws (synthetic subsample and CV folds) the C2ST value averages; "
                   "fewer are faster and noisier.")
@click.option("--rare-threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=RARE_THRESHOLD, show_default=True,
              help="Fallback only, for real files without uns['garage']['rare_types'] (written "
                   "by garage preprocess, which decides rarity once).")
@click.option("--leiden-resolution", type=click.FloatRange(min=0, min_open=True), default=1.0,
              show_default=True, help="Fixed Leiden resolution for ari/nmi.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="BLAS/OpenMP threads (evaluation is many small operations; more threads "
                   "rarely help).")
@click.option("--max-memory-gb", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Memory budget of the pre-flight estimate (all of it usable); default: 90% of the "
                   "available memory (a container's or job's limit included). Over it: exit 3, "
                   "nothing written.")
@click.option("--plots/--no-plots", default=True, show_default=True,
              help="Write PREFIX.umap.png and PREFIX.per_type.png.")
def evaluate(real: Path, synthetic: Path, seeds: Path | None, provenance: Path | None, prefix: str,
             outdir: Path, threads: int, max_memory_gb: float | None, **kwargs) -> None:
    """Fidelity, per-type, utility and privacy metrics of synthetic vs real holdout cells.

    Every metric is reported next to its control (real train vs real holdout) with
    95% intervals; privacy_ok sums up the privacy checks.  Writes
    PREFIX.garage_metrics.json, PREFIX.per_type.tsv, PREFIX.per_condition.tsv (real
    files with a condition) and two PNG plots.
    """
    from ..evaluate import EvaluateConfig, run_evaluate

    out = run_evaluate(real, synthetic, outdir, prefix, EvaluateConfig(**kwargs), threads=threads,
                       seeds=seeds, provenance=provenance, max_memory_gb=max_memory_gb)
    for p in out.values():
        click.echo(str(p))
