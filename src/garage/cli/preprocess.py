"""``garage preprocess``."""

from __future__ import annotations

from pathlib import Path

import click

from ..constants import RARE_THRESHOLD

from ._options import existing_path, outdir_option, prefix_option, seed_option


@click.command("preprocess")
@click.option("--input", "input_", type=existing_path, required=True,
              help="Counts: .h5ad, 10x .h5, 10x mtx folder, or .csv/.tsv[.gz].")
@prefix_option
@outdir_option
@click.option("--label-key", default=None, help="obs column with cell types (default: Leiden clusters).")
@click.option("--condition-key", default=None,
              help="obs column with a condition or batch covariate (e.g. treatment, donor, protocol); "
                   "the model is conditioned on it. Default: none.")
@click.option("--layer", default=None, help=".h5ad layer holding raw counts (default: X).")
@click.option("--transpose", is_flag=True, help="Table input is genes x cells.")
@click.option("--make-unique", is_flag=True, help="Make duplicate gene names unique instead of failing.")
@click.option("--min-genes", type=click.IntRange(min=0), default=50, show_default=True,
              help="QC: minimum detected genes per cell.")
@click.option("--min-cells", type=click.IntRange(min=0), default=3, show_default=True,
              help="QC: minimum cells per gene.")
@click.option("--n-top-genes", type=click.IntRange(min=2), default=2000, show_default=True,
              help="Highly variable genes (seurat_v3 on counts).")
@click.option("--n-pcs", type=click.IntRange(min=2), default=50, show_default=True)
@click.option("--n-neighbors", type=click.IntRange(min=2), default=15, show_default=True)
@click.option("--holdout-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=0.2, show_default=True, help="Per-type fraction held out for evaluation.")
@click.option("--leiden-resolution", type=click.FloatRange(min=0, min_open=True), default=1.0,
              show_default=True, help="Resolution when labels come from Leiden.")
@click.option("--rare-threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=RARE_THRESHOLD, show_default=True,
              help="A type below this fraction of the cells is rare; decided here once, read by every later stage.")
@click.option("--max-memory-gb", type=click.FloatRange(min=0, min_open=True), default=None,
              show_default="available memory",
              help="Memory budget for the pre-flight estimate (made from the input's shape and "
                   "stored counts before reading it).")
@seed_option
def preprocess(input_: Path, prefix: str, outdir: Path, **kwargs) -> None:
    """QC, HVGs, PCA, kNN graph and a stratified train/holdout split.

    Reading and QC stay sparse (memory linear in the stored counts); a run
    that would not fit in memory stops before reading, with advice.
    """
    from ..preprocess import PreprocessConfig, run_preprocess

    out = run_preprocess(input_, outdir, prefix, PreprocessConfig(**kwargs))
    click.echo(str(out["h5ad"]))
