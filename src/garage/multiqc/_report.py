"""``run_report``: build the MultiQC report of a GARAGE run (the ``report`` stage)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from ..errors import GarageError

logger = logging.getLogger(__name__)

#: Anchors of the GARAGE module and its sections (also used in assets/multiqc_config.yml).
MODULE_ANCHOR = "garage"
SECTION_METRICS = "garage-metrics"
SECTION_COMPOSITION = "garage-composition"
SECTION_AGREEMENT = "garage-agreement"
SECTION_PRIVACY = "garage-privacy"

#: The report settings ``run_report`` always applies (before a user ``config``).
#: assets/multiqc_config.yml holds the same settings for the Nextflow MULTIQC
#: module; tests/python/test_multiqc.py checks that the two agree.
DEFAULT_CONFIG: dict[str, Any] = {
    "title": "GARAGE synthetic single-cell report",
    "subtitle": "Fidelity, rare cell types and privacy of synthetic cells against held-out real cells",
    "intro_text": (
        "Results of <code>garage evaluate</code>: how close the synthetic cells are to held-out real "
        "cells, whether rare cell types survive, and whether synthetic cells give away training cells. "
        "Every metric sits next to a control computed on real cells only."
    ),
    "custom_logo": None,
    "report_section_order": {
        MODULE_ANCHOR: {"order": 1000},
        SECTION_METRICS: {"order": 10},
        SECTION_COMPOSITION: {"order": 20},
        SECTION_AGREEMENT: {"order": 30},
        SECTION_PRIVACY: {"order": 40},
        "software_versions": {"order": -1000},
    },
    "export_plots": False,
    # fixed names, so a title does not rename the outputs (docs/developer.md layout)
    "output_fn_name": "multiqc_report.html",
    "data_dir_name": "multiqc_data",
    "plots_dir_name": "multiqc_plots",
}

#: Large binary outputs of the other stages; MultiQC never needs to open them.
IGNORE_PATTERNS: tuple[str, ...] = ("*.h5ad", "*.pt")


def _write_yaml(cfg: dict[str, Any], path: Path) -> Path:
    import yaml  # a MultiQC dependency

    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_report(
    indir: Path,
    outdir: Path,
    config: Path | None = None,
    title: str | None = None,
) -> Path:
    """Run MultiQC (in this process) on *indir* and write the report to *outdir*.

    Parameters
    ----------
    indir
        Folder searched for GARAGE outputs (``PREFIX.garage_metrics.json``,
        ``PREFIX.per_type.tsv``) and anything else MultiQC recognises.
    outdir
        Folder for ``multiqc_report.html`` and ``multiqc_data/`` (overwritten).
    config
        Optional MultiQC config YAML, applied after :data:`DEFAULT_CONFIG`.
    title
        Report title (overrides both configs).

    Returns
    -------
    Path
        ``outdir / "multiqc_report.html"``.

    Raises
    ------
    GarageError
        If *indir* or *config* does not exist, no GARAGE output is found, or
        MultiQC fails.
    """
    indir = Path(indir)
    outdir = Path(outdir)
    if not indir.is_dir():
        raise GarageError(f"report input folder {indir} does not exist", "pass the --outdir of a GARAGE run")
    if config is not None and not Path(config).is_file():
        raise GarageError(f"MultiQC config {config} does not exist", "pass an existing YAML file or none")
    from .._utils import check_writable_dir

    check_writable_dir(outdir)

    import multiqc
    from multiqc.core.update_config import ClConfig

    with tempfile.TemporaryDirectory(prefix="garage_mqc_") as tmp:
        config_files: list[str] = [str(_write_yaml(DEFAULT_CONFIG, Path(tmp) / "garage_default.yml"))]
        if config is not None:
            config_files.append(str(config))
        cfg = ClConfig(
            output_dir=str(outdir),
            config_files=config_files,
            title=title,
            force=True,
            quiet=True,
            no_ansi=True,
            no_version_check=True,
            ignore=list(IGNORE_PATTERNS),
        )
        # MultiQC replaces the root logger's handlers and level; give the caller its logging back
        root = logging.getLogger()
        saved = (root.handlers[:], root.level, root.propagate)
        try:
            result = multiqc.run(str(indir), cfg=cfg)
        finally:
            root.handlers[:] = saved[0]
            root.setLevel(saved[1])
            root.propagate = saved[2]

    html = outdir / "multiqc_report.html"
    if result.sys_exit_code != 0 or not html.is_file():
        msg = result.message or f"exit code {result.sys_exit_code}"
        raise GarageError(
            f"MultiQC did not write a report from {indir}: {msg}",
            f"check that {indir} holds PREFIX.garage_metrics.json files from garage evaluate",
        )
    logger.debug("MultiQC report: %s", html)
    return html
