"""``garage run``."""

from __future__ import annotations

from pathlib import Path

import click

from ._options import device_option, seed_option, threads_option


@click.command("run")
@click.option("--input", "input_", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="CSV samplesheet: sample,counts[,label_key,layer,condition_key] (condition_key: "
                   "an obs column of a covariate such as donor or protocol; optional).")
@click.option("--outdir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Results folder (same layout as the Nextflow pipeline).")
@click.option("--profile", type=click.Choice(["test"]), default=None,
              help="test: bundled real data (PBMC 3k subset + pbmc68k_reduced), fast settings.")
@click.option("--params", "params_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None,
              help='JSON/YAML mapping stage -> options (config field names), e.g. {"gan": {"gan_steps": '
                   '2000, "shareable_model": true}}; gan also takes provenance: false.')
@click.option("--resume", is_flag=True, help="Reuse finished outputs and continue from checkpoints.")
@click.option("--no-report", is_flag=True, help="Skip the MultiQC report.")
@seed_option
@device_option
@threads_option
def run(input_, outdir, profile, params_file, resume, no_report, seed, device, threads) -> None:
    """Run preprocess -> gat -> gan -> evaluate -> MultiQC for every sample, in-process."""
    from ..errors import GarageError
    from ..run import exit_status, read_samplesheet, run_samples, test_samplesheet

    if input_ is None and profile != "test":
        raise GarageError("--input is required (or use --profile test)", "pass --input samplesheet.csv")
    samples = read_samplesheet(input_) if input_ is not None else test_samplesheet()
    results = run_samples(
        samples, outdir, profile=profile, params_file=params_file, seed=seed,
        device=device, threads=threads, resume=resume, report=not no_report,
    )
    ok = [r for r in results if r.status == "ok"]
    click.echo(f"garage run: {len(ok)} of {len(results)} samples completed; results in {outdir}", err=True)
    for r in results:
        if r.status != "ok":
            click.echo(f"  {r.sample}: {r.status}: {r.message}", err=True)
    report = Path(outdir) / "multiqc" / "multiqc_report.html"
    if report.exists():
        click.echo(f"  report: {report}", err=True)
    status = exit_status(results)  # 1 internal error > 3 out of resources > 2 bad input
    if status:
        raise click.exceptions.Exit(status)
