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
# second-wave sections; not in DEFAULT_CONFIG's order (they follow the ones above as added)
SECTION_DIAGNOSIS = "garage-diagnosis"
SECTION_CONDITIONS = "garage-conditions"
SECTION_PICTURES = "garage-pictures"
#: custom-content sections written by :func:`run_report` (garage run's report)
SECTION_PARAMS = "garage-run-params"
SECTION_METHODS = "garage-methods"

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


#: (short key, full reference) of every method the report's methods section names
CITATIONS: tuple[tuple[str, str], ...] = (
    ("Veličković et al. 2018", "Veličković P, Cucurull G, Casanova A, Romero A, Liò P, Bengio Y. "
     "Graph Attention Networks. International Conference on Learning Representations (ICLR) 2018."),
    ("Gulrajani et al. 2017", "Gulrajani I, Ahmed F, Arjovsky M, Dumoulin V, Courville A. Improved "
     "Training of Wasserstein GANs. Advances in Neural Information Processing Systems 30 (NeurIPS) "
     "2017."),
    ("Lopez et al. 2018", "Lopez R, Regier J, Cole MB, Jordan MI, Yosef N. Deep generative modeling "
     "for single-cell transcriptomics. Nature Methods 15, 1053–1058 (2018)."),
    ("Wolf et al. 2018", "Wolf FA, Angerer P, Theis FJ. SCANPY: large-scale single-cell gene "
     "expression data analysis. Genome Biology 19, 15 (2018)."),
    ("Traag et al. 2019", "Traag VA, Waltman L, van Eck NJ. From Louvain to Leiden: guaranteeing "
     "well-connected communities. Scientific Reports 9, 5233 (2019)."),
    ("Lopez-Paz & Oquab 2017", "Lopez-Paz D, Oquab M. Revisiting Classifier Two-Sample Tests. "
     "International Conference on Learning Representations (ICLR) 2017."),
    ("Gretton et al. 2012", "Gretton A, Borgwardt KM, Rasch MJ, Schölkopf B, Smola A. A Kernel "
     "Two-Sample Test. Journal of Machine Learning Research 13, 723–773 (2012)."),
    ("Flamary et al. 2021", "Flamary R, Courty N, Gramfort A, et al. POT: Python Optimal "
     "Transport. Journal of Machine Learning Research 22(78), 1–8 (2021)."),
    ("Chen et al. 2020", "Chen D, Yu N, Zhang Y, Fritz M. GAN-Leaks: A Taxonomy of Membership "
     "Inference Attacks against Generative Models. ACM CCS 2020."),
    ("Shao & Wu 1989", "Shao J, Wu CFJ. A General Theory for Jackknife Variance Estimation. "
     "Annals of Statistics 17(3), 1176–1197 (1989)."),
    ("Efron & Tibshirani 1993", "Efron B, Tibshirani RJ. An Introduction to the Bootstrap. "
     "Chapman & Hall (1993)."),
    ("Ewels et al. 2016", "Ewels P, Magnusson M, Lundin S, Käller M. MultiQC: summarize analysis "
     "results for multiple tools and samples in a single report. Bioinformatics 32(19), 3047–3048 "
     "(2016)."),
)

METHODS_HTML = """
<p>Synthetic cells were made with GARAGE {version}. Counts were normalised to 10,000 per cell,
log-transformed, reduced to highly variable genes, projected on principal components and joined
in a k-nearest-neighbour graph with scanpy (Wolf et al. 2018). A graph attention network
(Veličković et al. 2018), trained to classify cell types with a class-balanced loss, scored how
representative each training cell is from the attention it receives and chose seed cells per
type, with a guaranteed quota for rare types. A conditional Wasserstein GAN with gradient penalty
(Gulrajani et al. 2017), run in the latent space of a negative-binomial variational autoencoder in
the style of scVI (Lopez et al. 2018), generated cells from noise mixed with seed cells of the
requested type; counts were drawn from the decoder's negative-binomial distribution.</p>
<p>Synthetic cells were compared with held-out real cells that no model saw, always next to a
control (real training cells against the same held-out cells), in a PCA fitted on real training
cells: a classifier two-sample test (Lopez-Paz &amp; Oquab 2017), kernel maximum mean discrepancy
(Gretton et al. 2012), exact Wasserstein distance (POT; Flamary et al. 2021), per-gene statistics,
Leiden clustering (Traag et al. 2019), cell-type agreement, train-on-synthetic utility,
distance-based privacy tests and distance-based membership-inference attacks (Chen et al. 2020),
including a seed-aware attack. 95% intervals come from resampling the real cells (delete-half jackknife,
Shao &amp; Wu 1989; stratified bootstrap, Efron &amp; Tibshirani 1993); a difference inside the
intervals is reported as no difference. The privacy checks are empirical attacks, not a
differential-privacy guarantee. This report was made with MultiQC (Ewels et al. 2016).</p>
"""


def _html_table(rows: list[tuple[str, str]]) -> str:
    from html import escape

    body = "".join(
        f"<tr><th scope='row'>{escape(k)}</th><td><code>{escape(v)}</code></td></tr>" for k, v in rows
    )
    return f"<table class='table table-condensed'>{body}</table>"


def _flatten(prefix: str, value: Any, out: list[tuple[str, str]]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out.append((prefix, str(value)))


def _params_from_metrics(indir: Path) -> dict[str, Any]:
    """Evaluate parameters and versions recorded in the metrics files under *indir*."""
    import json

    from ..constants import SUFFIX_METRICS

    out: dict[str, Any] = {}
    for path in sorted(Path(indir).rglob(f"*{SUFFIX_METRICS}")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(doc, dict):
            continue
        keep = {k: v for k, v in (doc.get("params") or {}).items()
                if k not in ("subsample", "privacy_thresholds", "mmd_factors")}
        out[str(doc.get("sample") or path.name)] = {"garage": doc.get("garage_version"),
                                                    "evaluate": keep}
    return out


def custom_sections(params: dict[str, Any] | None, indir: Path) -> dict[str, dict[str, Any]]:
    """The parameter-summary and methods sections as MultiQC ``custom_data`` (inline HTML)."""
    from .. import __version__
    from html import escape

    rows: list[tuple[str, str]] = []
    if params:
        _flatten("", params, rows)
        source = "the parameters <code>garage run</code> used"
    else:
        _flatten("", _params_from_metrics(indir), rows)
        source = "the evaluation parameters recorded in each sample's metrics file"
    params_doc = {
        "section_name": "GARAGE parameter summary",
        "description": f"Every parameter of this run, from {source}.",
        "plot_type": "html",
        "data": _html_table(rows) if rows else "<p>No parameters recorded.</p>",
    }
    refs = "".join(f"<li>{escape(full)}</li>" for _, full in CITATIONS)
    methods_doc = {
        "section_name": "GARAGE methods description",
        "description": "Suggested text for a methods section, and the references it cites.",
        "plot_type": "html",
        "data": METHODS_HTML.format(version=escape(__version__)) + f"<h5>References</h5><ol>{refs}</ol>",
    }
    return {SECTION_PARAMS: params_doc, SECTION_METHODS: methods_doc}


def run_report(
    indir: Path,
    outdir: Path,
    config: Path | None = None,
    title: str | None = None,
    *,
    params: dict[str, Any] | None = None,
    methods: bool = True,
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
    params
        The run's parameters (e.g. ``{"preprocess": {...}, "gat": {...}, ...}``) for the
        parameter-summary section; ``None``: the evaluate parameters found in the
        metrics files.
    methods
        Add the parameter summary and a methods description with citations (as
        nf-core reports do).

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
    from ..constants import SUFFIX_METRICS

    if not any(indir.rglob(f"*{SUFFIX_METRICS}")):
        raise GarageError(
            f"no PREFIX{SUFFIX_METRICS} under {indir}",
            f"check that {indir} holds PREFIX{SUFFIX_METRICS} files from garage evaluate",
        )
    check_writable_dir(outdir)

    import multiqc
    from multiqc.core.update_config import ClConfig

    with tempfile.TemporaryDirectory(prefix="garage_mqc_") as tmp:
        config_files: list[str] = [str(_write_yaml(DEFAULT_CONFIG, Path(tmp) / "garage_default.yml"))]
        if methods:
            extra = {"custom_data": custom_sections(params, indir)}
            config_files.append(str(_write_yaml(extra, Path(tmp) / "garage_sections.yml")))
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
