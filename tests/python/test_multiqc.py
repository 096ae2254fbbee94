"""The GARAGE MultiQC plugin, run for real: parse_logs/get_module_data and ``multiqc --strict``.

Metric files follow the schema of docs/developer.md.  ``write_sample`` writes
realistic, per-sample different ``PREFIX.garage_metrics.json`` and
``PREFIX.per_type.tsv`` files; when ``garage.evaluate`` is importable, one test
also runs it on bundled data and feeds its outputs to MultiQC.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from garage.constants import SUFFIX_METRICS, SUFFIX_PER_TYPE

REPO = Path(__file__).resolve().parents[2]
MULTIQC_BIN = Path(sys.executable).with_name("multiqc")

TYPES = ["CD4 T", "CD14 Monocytes", "B", "NK", "DC", "Platelet"]
RARE = ["DC", "Platelet"]
REAL_TRAIN = [380, 190, 130, 60, 22, 10]
REAL_HOLDOUT = [95, 48, 32, 15, 6, 4]

# name -> (better, control); the synthetic value is shifted per sample
METRIC_BASE = {
    "c2st_auc": ("closer to 0.5", 0.52),
    "mmd_rbf": ("lower", 0.004),
    "wasserstein_pca": ("lower", 1.9),
    "mean_corr": ("higher", 0.995),
    "var_corr": ("higher", 0.98),
    "zero_frac_corr": ("higher", 0.99),
    "libsize_ks": ("lower", 0.04),
    "ari": ("closer to control", 0.71),
    "nmi": ("closer to control", 0.74),
    "rare_agreement": ("higher", 0.93),
    "type_agreement": ("higher", 0.95),
    "tstr_macro_f1": ("higher", 0.88),
    "tstr_rare_f1": ("higher", 0.80),
    "augment_macro_f1": ("higher", 0.88),
    "dcr_ratio": ("closer to 1", 1.0),
    "exact_copies": ("zero", 0.0),
    "nndr_ratio": ("closer to 1", 1.0),
    "mia_auc": ("closer to 0.5", 0.5),
}


def metrics_doc(sample: str, quality: float) -> dict:
    """A metrics document in the documented schema; *quality* in [0, 1] (1 = as good as real)."""
    gap = 1.0 - quality
    values = {
        "c2st_auc": 0.52 + 0.4 * gap,
        "mmd_rbf": 0.004 + 0.08 * gap,
        "wasserstein_pca": 1.9 + 6 * gap,
        "mean_corr": 0.995 - 0.2 * gap,
        "var_corr": 0.98 - 0.4 * gap,
        "zero_frac_corr": 0.99 - 0.3 * gap,
        "libsize_ks": 0.04 + 0.5 * gap,
        "ari": 0.71 - 0.4 * gap,
        "nmi": 0.74 - 0.3 * gap,
        "rare_agreement": 0.93 - 0.8 * gap,
        "type_agreement": 0.95 - 0.5 * gap,
        "tstr_macro_f1": 0.88 - 0.5 * gap,
        "tstr_rare_f1": 0.80 - 0.7 * gap,
        "augment_macro_f1": 0.88 + 0.02 * quality,
        "dcr_ratio": 1.0 - 0.5 * gap,
        "exact_copies": float(round(12 * gap)),
        "nndr_ratio": 1.0 - 0.3 * gap,
        "mia_auc": 0.5 + 0.2 * gap,
    }
    metrics = {}
    for name, (better, control) in METRIC_BASE.items():
        exact = name == "exact_copies"
        v = int(values[name]) if exact else round(values[name], 5)
        c = int(control) if exact else round(control + 0.01 * (1 - quality), 5)
        metrics[name] = {
            "value": v,
            "std": 0.0 if exact else 0.01,
            "control": c,
            "control_std": 0.0 if exact else 0.005,
            "better": better,
            "ci_low": v if exact else round(v - 0.025, 5),
            "ci_high": v if exact else round(v + 0.025, 5),
            "control_ci_low": c if exact else round(c - 0.012, 5),
            "control_ci_high": c if exact else round(c + 0.012, 5),
            "n_real": sum(REAL_HOLDOUT) // 2,
        }
    n_syn = sum(REAL_TRAIN)
    return {
        "sample": sample,
        "garage_version": "0.1.0",
        "versions": {"python": "3.11.7", "garage-sc": "0.1.0", "torch": "2.13.0", "scanpy": "1.11.4"},
        "params": {"seed": 0, "n_epochs": 50},
        "n_cells": {"real_train": sum(REAL_TRAIN), "real_holdout": sum(REAL_HOLDOUT), "synthetic": n_syn},
        "metrics": metrics,
        "rare_types": RARE,
        "rare_n_real_holdout": {t: REAL_HOLDOUT[TYPES.index(t)] for t in RARE},
        "missing_types": ["Platelet"] if quality < 0.5 else [],
        "privacy_ok": quality >= 0.5,
        "privacy_reasons": [] if quality >= 0.5 else ["dcr_ratio 0.650 is below 0.9"],
        "privacy_notes": ["seed_nn_share not computed (pass --provenance PREFIX.provenance.tsv)"],
    }


def per_type_rows(quality: float) -> list[dict]:
    n_syn_total = sum(REAL_TRAIN)
    rows = []
    syn = []
    for ct, n in zip(TYPES, REAL_TRAIN):
        if ct == "Platelet" and quality < 0.5:
            syn.append(0)
        elif ct in RARE:
            syn.append(int(round(n * (0.5 + 0.5 * quality))))
        else:
            syn.append(n)
    syn[0] += n_syn_total - sum(syn)
    n_real = sum(REAL_TRAIN) + sum(REAL_HOLDOUT)
    for ct, tr, ho, s in zip(TYPES, REAL_TRAIN, REAL_HOLDOUT, syn):
        rare = ct in RARE
        agreement = None if s == 0 else round(0.97 - (0.6 if rare else 0.2) * (1 - quality), 4)
        rows.append(
            {
                "cell_type": ct,
                "n_real_train": tr,
                "n_real_holdout": ho,
                "n_synthetic": s,
                "frac_real": round((tr + ho) / n_real, 5),
                "frac_synthetic": round(s / n_syn_total, 5),
                "agreement": "NA" if agreement is None else agreement,
                "mmd": "NA" if s == 0 else round(0.01 + (0.2 if rare else 0.05) * (1 - quality), 5),
                "is_rare": "true" if rare else "false",
                "missing": "true" if s == 0 else "false",
            }
        )
    return rows


def write_sample(folder: Path, prefix: str, quality: float, sample: str | None = None) -> tuple[Path, Path]:
    """Write PREFIX.garage_metrics.json and PREFIX.per_type.tsv like ``garage evaluate`` does."""
    folder.mkdir(parents=True, exist_ok=True)
    mpath = folder / f"{prefix}{SUFFIX_METRICS}"
    mpath.write_text(json.dumps(metrics_doc(sample or prefix, quality), indent=2))
    tpath = folder / f"{prefix}{SUFFIX_PER_TYPE}"
    rows = per_type_rows(quality)
    with tpath.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter="\t")
        w.writeheader()
        w.writerows(rows)
    return mpath, tpath


@pytest.fixture
def results(tmp_path) -> Path:
    """An OUTDIR/evaluate folder with three samples of different quality."""
    ev = tmp_path / "results" / "evaluate"
    write_sample(ev, "pbmc_a", 0.9)
    write_sample(ev, "pbmc_b2", 0.6)
    write_sample(ev, "run3", 0.3, sample="pbmc_c")  # sample name differs from the file prefix
    return tmp_path / "results"


class _Records(logging.Handler):
    """Collects records of the garage loggers (MultiQC replaces the root handlers, so caplog misses them)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def warnings(self) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == logging.WARNING]


@pytest.fixture
def garage_log():
    handler = _Records()
    logger = logging.getLogger("garage.multiqc")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@pytest.fixture
def mqc():
    """MultiQC's interactive API with a clean slate before and after."""
    import multiqc

    multiqc.reset()
    yield multiqc
    multiqc.reset()


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, NO_COLOR="1", TERM="dumb")
    return subprocess.run(
        [str(MULTIQC_BIN), "--no-ansi", "--no-version-check", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )


def read_tsv(path: Path) -> dict[str, dict[str, str]]:
    with path.open() as fh:
        return {row["Sample"]: row for row in csv.DictReader(fh, delimiter="\t")}


# ---------------------------------------------------------------- parsing (no MultiQC)
def test_parse_metrics_json_keeps_partial_files():
    from garage.multiqc._parse import parse_metrics_json

    doc = metrics_doc("s1", 0.8)
    del doc["metrics"]["mia_auc"]
    doc["metrics"]["c2st_auc"]["value"] = "oops"
    doc["metrics"]["mmd_rbf"]["control"] = None
    doc.pop("sample")
    parsed = parse_metrics_json(json.dumps(doc))
    assert parsed.sample is None
    assert "c2st_auc" not in parsed.metrics and "mia_auc" not in parsed.metrics
    assert parsed.metrics["mmd_rbf"].control is None
    assert parsed.metrics["mmd_rbf"].value == pytest.approx(doc["metrics"]["mmd_rbf"]["value"])
    assert parsed.n_cells == doc["n_cells"]
    text = " | ".join(parsed.problems)
    assert "sample" in text and "c2st_auc.value" in text and "mia_auc" in text


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty"),
        ('{"sample": "s1", "metrics": {"c2st_auc": {"value": 0.6', "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"sample": "s1"}', "no usable metrics"),
    ],
)
def test_parse_metrics_json_rejects_unusable_files(text, message):
    from garage.multiqc._parse import MetricsParseError, parse_metrics_json

    with pytest.raises(MetricsParseError, match=message):
        parse_metrics_json(text)


def test_parse_per_type_tsv_types_and_problems(tmp_path):
    from garage.multiqc._parse import MetricsParseError, parse_per_type_tsv

    _, tsv = write_sample(tmp_path, "s1", 0.3)
    rows, problems = parse_per_type_tsv(tsv.read_text())
    assert problems == []
    assert [r["cell_type"] for r in rows] == TYPES
    platelet = rows[TYPES.index("Platelet")]
    assert platelet["n_synthetic"] == 0 and platelet["missing"] is True and platelet["is_rare"] is True
    assert platelet["agreement"] is None  # "NA"
    assert isinstance(rows[0]["n_real_train"], int) and rows[0]["n_real_train"] == REAL_TRAIN[0]

    bad = tsv.read_text().replace("\t380\t", "\tmany\t", 1)
    rows, problems = parse_per_type_tsv(bad)
    assert rows[0]["n_real_train"] is None and any("many" in p for p in problems)
    with pytest.raises(MetricsParseError, match="cell_type"):
        parse_per_type_tsv("a\tb\n1\t2\n")


# ---------------------------------------------------------------- MultiQC, in process
def test_hook_registers_search_patterns(mqc, results):
    mqc.parse_logs(str(results), quiet=True)
    assert mqc.config.sp["garage/metrics"] == {"fn": f"*{SUFFIX_METRICS}"}
    assert mqc.config.sp["garage/per_type"] == {"fn": f"*{SUFFIX_PER_TYPE}"}


def test_parse_logs_module_data(mqc, results, garage_log):
    mqc.parse_logs(str(results), quiet=True)
    assert mqc.list_modules() == ["garage"]
    data = mqc.get_module_data(module="garage")
    metrics = data["multiqc_garage_metrics"]
    # sample names come from the JSON's "sample" field (run3.* holds pbmc_c)
    assert set(metrics) == {"pbmc_a", "pbmc_b2", "pbmc_c"}
    for sample, quality in (("pbmc_a", 0.9), ("pbmc_b2", 0.6), ("pbmc_c", 0.3)):
        doc = metrics_doc(sample, quality)
        for name, entry in doc["metrics"].items():
            assert metrics[sample][name] == pytest.approx(entry["value"])
            assert metrics[sample][f"{name}_control"] == pytest.approx(entry["control"])
        assert metrics[sample]["n_synthetic"] == doc["n_cells"]["synthetic"]
    assert metrics["pbmc_c"]["missing_types"] == "Platelet"
    assert metrics["pbmc_a"]["c2st_auc"] < metrics["pbmc_b2"]["c2st_auc"] < metrics["pbmc_c"]["c2st_auc"]

    per_type = data["multiqc_garage_per_type"]
    assert len(per_type) == 3 * len(TYPES)
    row = per_type["pbmc_c · Platelet"]  # joined to the JSON's sample name, not the file prefix
    assert row["sample"] == "pbmc_c" and row["n_synthetic"] == 0 and row["missing"] is True

    gs = mqc.get_general_stats_data()
    assert set(gs) == {"pbmc_a", "pbmc_b2", "pbmc_c"}
    for col in ("c2st_auc", "mmd_rbf", "rare_agreement", "tstr_macro_f1", "dcr_ratio", "exact_copies"):
        assert gs["pbmc_b2"][f"GARAGE.{col}"] == pytest.approx(metrics["pbmc_b2"][col])

    from multiqc import report

    headers = next(h for h in report.general_stats_headers.values() if "c2st_auc" in h)
    # descriptions state the control, colour scales run from good to bad
    assert headers["c2st_auc"]["description"].endswith(
        "Control (the same test on real train vs real holdout cells): 0.521 to 0.527 across samples."
    )
    assert headers["c2st_auc"]["scale"] == "RdYlGn-rev" and headers["rare_agreement"]["scale"] == "RdYlGn"
    assert headers["exact_copies"]["description"].endswith("a training cell): 0.")
    assert headers["c2st_auc_control"]["hidden"] is True

    plots = mqc.list_plots()["garage"]
    names = [p if isinstance(p, str) else next(iter(p)) for p in plots]
    # files in the first-wave per-type schema: no diagnosis columns, so no diagnosis section
    assert names == ["Metrics vs control", "Cell types: real vs synthetic", "Per-type agreement", "Privacy"]

    assert report.software_versions["GARAGE"]["torch"] == ["2.13.0"]
    assert report.software_versions["GARAGE"]["garage-sc"] == ["0.1.0"]
    assert garage_log.warnings() == []


def test_malformed_and_partial_files_warn_and_the_rest_builds(mqc, results, garage_log):
    ev = results / "evaluate"
    (ev / f"broken{SUFFIX_METRICS}").write_text('{"sample": "broken", "metrics": {"c2st_auc": {"va')
    partial = metrics_doc("partial", 0.7)
    del partial["metrics"]["mia_auc"]
    partial["metrics"]["mmd_rbf"]["value"] = "n/a?"
    (ev / f"partial{SUFFIX_METRICS}").write_text(json.dumps(partial))
    (ev / f"junk{SUFFIX_PER_TYPE}").write_text("not a table\n")

    mqc.parse_logs(str(results), quiet=True)
    metrics = mqc.get_module_data(module="garage")["multiqc_garage_metrics"]
    assert set(metrics) == {"pbmc_a", "pbmc_b2", "pbmc_c", "partial"}
    assert "mia_auc" not in metrics["partial"] and "mmd_rbf" not in metrics["partial"]
    assert metrics["partial"]["c2st_auc"] == pytest.approx(partial["metrics"]["c2st_auc"]["value"])

    warnings = garage_log.warnings()
    assert any(w.startswith("broken:") and "not valid JSON" in w for w in warnings), warnings
    assert any(w.startswith("partial:") and "mia_auc" in w and "mmd_rbf" in w for w in warnings), warnings
    assert any(w.startswith("junk:") and "cell_type" in w for w in warnings), warnings
    assert len(warnings) == 3


def test_per_type_joins_its_metrics_file_across_staging_folders(mqc, tmp_path):
    """Nextflow's MULTIQC stages inputs as ``?/*``: the JSON and the TSV of one sample sit apart."""
    mpath, tpath = write_sample(tmp_path / "staged" / "1", "run9", 0.8, sample="donor9")
    (tmp_path / "staged" / "2").mkdir()
    tpath.rename(tmp_path / "staged" / "2" / tpath.name)
    mqc.parse_logs(str(tmp_path / "staged"), quiet=True)
    data = mqc.get_module_data(module="garage")
    assert set(data["multiqc_garage_metrics"]) == {"donor9"}
    assert {row["sample"] for row in data["multiqc_garage_per_type"].values()} == {"donor9"}


def test_module_raises_no_samples_found(mqc, tmp_path):
    from multiqc.base_module import ModuleNoSamplesFound

    from garage.multiqc.module import MultiqcModule

    with pytest.raises(ModuleNoSamplesFound):
        MultiqcModule()  # no files registered at all

    (tmp_path / f"only{SUFFIX_METRICS}").write_text("{ truncated")
    (tmp_path / "other.txt").write_text("nothing for MultiQC\n")
    mqc.reset()
    mqc.parse_logs(str(tmp_path), quiet=True)
    assert "garage" not in mqc.list_modules()


# ---------------------------------------------------------------- MultiQC CLI
def test_multiqc_strict_cli_report(results, tmp_path):
    out = tmp_path / "mqc"
    proc = run_cli(
        "--strict", "--force", "--config", str(REPO / "assets" / "multiqc_config.yml"),
        "--outdir", str(out), str(results), cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    html = (out / "multiqc_report.html").read_text()
    assert "GARAGE synthetic single-cell report" in html  # title from assets/multiqc_config.yml
    for anchor in ("garage-metrics", "garage-composition", "garage-agreement", "garage-privacy"):
        assert f'id="{anchor}"' in html, anchor
    for title in ("C2ST AUC", "Rare agreement", "DCR ratio", "Exact copies"):
        assert title in html
    # intervals and the verdict they give (0.025 half-width vs 0.012: pbmc_a overlaps its control)
    assert "95% CI" in html and "no difference" in html and "worse than control" in html
    assert "pbmc_c: privacy NOT OK" in html and "pbmc_a: privacy OK" in html
    # sections appear in the configured order
    positions = [html.index(f'id="{a}"') for a in ("garage-metrics", "garage-composition",
                                                    "garage-agreement", "garage-privacy")]
    assert positions == sorted(positions)

    data = out / "multiqc_data"
    metrics = read_tsv(data / "multiqc_garage_metrics.txt")
    assert set(metrics) == {"pbmc_a", "pbmc_b2", "pbmc_c"}
    assert float(metrics["pbmc_c"]["exact_copies"]) == metrics_doc("pbmc_c", 0.3)["metrics"]["exact_copies"]["value"]
    assert len(read_tsv(data / "multiqc_garage_per_type.txt")) == 3 * len(TYPES)
    gs = read_tsv(data / "multiqc_general_stats.txt")
    assert float(gs["pbmc_a"]["garage-c2st_auc"]) == pytest.approx(metrics_doc("pbmc_a", 0.9)["metrics"]["c2st_auc"]["value"])
    assert {"garage-mmd_rbf", "garage-rare_agreement", "garage-dcr_ratio", "garage-exact_copies"} <= set(gs["pbmc_a"])
    versions = (data / "multiqc_software_versions.txt").read_text()
    assert "torch" in versions and "2.13.0" in versions
    assert "lint" not in proc.stderr.lower()


def test_multiqc_strict_cli_with_corrupt_file(results, tmp_path):
    ev = results / "evaluate"
    (ev / f"corrupt{SUFFIX_METRICS}").write_bytes(b"\x00\x01garbage{{{")
    out = tmp_path / "mqc"
    proc = run_cli("--strict", "--force", "--outdir", str(out), str(results), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = proc.stdout + proc.stderr
    assert re.search(r"corrupt: skipping .*corrupt\.garage_metrics\.json", log), log
    assert set(read_tsv(out / "multiqc_data" / "multiqc_garage_metrics.txt")) == {"pbmc_a", "pbmc_b2", "pbmc_c"}
    assert 'id="garage-metrics"' in (out / "multiqc_report.html").read_text()


# ---------------------------------------------------------------- run_report (garage run's report stage)
def test_run_report_in_process(results, tmp_path):
    from garage.multiqc import run_report

    html = run_report(results / "evaluate", tmp_path / "multiqc", title="Batch 7 fidelity")
    assert html == tmp_path / "multiqc" / "multiqc_report.html"
    text = html.read_text()
    assert "Batch 7 fidelity" in text and 'id="garage-privacy"' in text
    assert (tmp_path / "multiqc" / "multiqc_data" / "multiqc_garage_metrics.txt").is_file()


def test_unchecked_types_show_in_the_privacy_section(results, tmp_path):
    """Types no per-type or seed privacy check covered are named next to the verdict, with the
    note, even when privacy_ok is true: the report must not read as a clean pass for them."""
    from garage.multiqc import run_report

    mpath = results / "evaluate" / f"pbmc_a{SUFFIX_METRICS}"
    doc = json.loads(mpath.read_text())
    assert doc["privacy_ok"] is True
    doc["privacy_unchecked_types"] = ["Megakaryocyte"]
    doc["privacy_notes"].append("not checked: Megakaryocyte [per-type DCR: no real holdout cells]"
                                " - treat them as unverified")
    mpath.write_text(json.dumps(doc))
    html = run_report(results / "evaluate", tmp_path / "multiqc").read_text()
    assert "pbmc_a: privacy OK" in html
    assert re.search(r"unverified types.{0,200}Megakaryocyte", html), "no unverified types line"
    assert "not checked: Megakaryocyte [per-type DCR: no real holdout cells]" in html
    data = read_tsv(tmp_path / "multiqc" / "multiqc_data" / "multiqc_garage_metrics.txt")
    assert data["pbmc_a"]["privacy_unchecked_types"] == "Megakaryocyte"
    assert data["pbmc_b2"]["privacy_unchecked_types"] == ""


def test_run_report_errors(tmp_path):
    from garage.errors import GarageError
    from garage.multiqc import run_report

    with pytest.raises(GarageError, match="does not exist"):
        run_report(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GarageError, match="garage evaluate"):
        run_report(tmp_path / "empty", tmp_path / "out")


def test_assets_config_matches_run_report_defaults():
    import yaml

    from garage.multiqc import DEFAULT_CONFIG

    assets = yaml.safe_load((REPO / "assets" / "multiqc_config.yml").read_text())
    assert assets == DEFAULT_CONFIG


# ---------------------------------------------------------------- real `garage evaluate` outputs
def _synthetic_from_train(real, seed: int, drop: str | None = None, condition: bool = False):
    """Poisson-resampled real train cells in the synthetic schema (a deliberately memorising 'generator')."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    from garage import constants as C

    rng = np.random.default_rng(seed)
    train = real[real.obs[C.OBS_SPLIT] == C.SPLIT_TRAIN]
    if drop is not None:
        train = train[train.obs[C.OBS_LABEL] != drop]
    counts = sp.csr_matrix(train.layers[C.LAYER_COUNTS]).toarray()
    scale = rng.uniform(0.7, 1.3, size=(len(counts), 1))
    obs = pd.DataFrame(
        {
            C.OBS_CELL_TYPE: pd.Categorical(train.obs[C.OBS_LABEL].astype(str)),
            C.OBS_SYNTHETIC: True,
        },
        index=[f"syn{i}" for i in range(len(counts))],
    )
    if condition:
        obs[C.OBS_SYN_CONDITION] = pd.Categorical(train.obs[C.OBS_CONDITION].astype(str))
    X = sp.csr_matrix(rng.poisson(counts * scale).astype(np.float32))
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=real.var_names.copy()))


def _with_condition(real):
    """The real file with a condition: random halves 'ctrl'/'stim', 'stim' cells with 100 genes
    induced (Poisson(3) extra counts), recorded as preprocess records a --condition-key."""
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    from garage import constants as C

    rng = np.random.default_rng(3)
    real = real.copy()
    x = sp.csr_matrix(real.layers[C.LAYER_COUNTS]).toarray()
    cond = np.where(rng.random(real.n_obs) < 0.5, "stim", "ctrl")
    genes = np.argsort(-x.sum(axis=0))[100:200]
    rows = np.flatnonzero(cond == "stim")
    x[np.ix_(rows, genes)] += rng.poisson(3.0, (len(rows), len(genes)))
    real.layers[C.LAYER_COUNTS] = sp.csr_matrix(x)
    real.obs[C.OBS_CONDITION] = pd.Categorical(cond)
    real.uns[C.UNS_KEY] = {**real.uns[C.UNS_KEY], C.UNS_CONDITION_KEY: "treatment"}
    return real


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, preprocessed_small) -> Path:
    """OUTDIR/evaluate of three real `garage evaluate` runs on the bundled PBMC 3k subset: one
    with pictures and seeds, one missing a rare type, one with a condition."""
    evaluate = pytest.importorskip("garage.evaluate")
    import anndata as ad
    import numpy as np

    from garage import constants as C

    root = tmp_path_factory.mktemp("evaluated")
    real = ad.read_h5ad(preprocessed_small)
    cfg = evaluate.EvaluateConfig(**{**evaluate.TEST_OVERRIDES, "plots": False, "n_repeats": 3})
    # seeds: every 10th train cell, all of the rare types' train cells
    train = real.obs[C.OBS_SPLIT].astype(str) == C.SPLIT_TRAIN
    rare = real.obs[C.OBS_LABEL].astype(str).isin(real.uns[C.UNS_KEY][C.UNS_RARE_TYPES])
    seeds = real.copy()
    seeds.obs[C.OBS_SEED] = train & (rare | (np.arange(real.n_obs) % 10 == 0))
    seeds_path = root / "resampled.seeds.h5ad"
    seeds.write_h5ad(seeds_path)
    for prefix, seed, drop, plots in (("resampled", 1, None, True), ("no_platelet", 2, "Platelet", False)):
        syn = root / f"{prefix}.synthetic.h5ad"
        _synthetic_from_train(real, seed, drop).write_h5ad(syn)
        evaluate.run_evaluate(
            preprocessed_small, syn, root / "evaluate", prefix,
            evaluate.EvaluateConfig(**{**evaluate.TEST_OVERRIDES, "plots": plots, "n_repeats": 3,
                                       "umap_max_cells": 300}),
            seeds=seeds_path if prefix == "resampled" else None,
        )
    creal = _with_condition(real)
    creal_path = root / "conditioned.preprocessed.h5ad"
    creal.write_h5ad(creal_path)
    syn = root / "conditioned.synthetic.h5ad"
    _synthetic_from_train(creal, 4, condition=True).write_h5ad(syn)
    evaluate.run_evaluate(creal_path, syn, root / "evaluate", "conditioned",
                          evaluate.EvaluateConfig(**{**cfg.__dict__, "condition_min_cells": 8}))
    return root / "evaluate"


def test_real_evaluate_outputs(evaluated, mqc, garage_log, tmp_path):
    from garage.multiqc._parse import METRIC_NAMES

    mqc.parse_logs(str(evaluated), quiet=True)
    assert garage_log.warnings() == []  # the real files are complete
    data = mqc.get_module_data(module="garage")
    metrics = data["multiqc_garage_metrics"]
    assert set(metrics) == {"resampled", "no_platelet", "conditioned"}
    for sample in metrics:
        doc = json.loads((evaluated / f"{sample}{SUFFIX_METRICS}").read_text())
        assert set(doc["metrics"]) == set(METRIC_NAMES)
        for name, entry in doc["metrics"].items():
            if entry["value"] is not None:
                assert metrics[sample][name] == pytest.approx(entry["value"])
                if entry["ci_low"] is not None:
                    assert metrics[sample][f"{name}_ci_low"] == pytest.approx(entry["ci_low"])
    # dropping a rare type shows up where a user would look for it
    assert metrics["no_platelet"]["missing_types"] == "Platelet"
    assert metrics["no_platelet"]["rare_agreement"] < metrics["resampled"]["rare_agreement"]
    assert metrics["resampled"]["privacy_ok"] is False  # Poisson-resampled train cells leak
    per_type = data["multiqc_garage_per_type"]
    assert per_type["no_platelet · Platelet"]["missing"] is True
    assert per_type["resampled · Platelet"]["n_synthetic"] > 0
    assert per_type["resampled · B"]["c2st_n"] > 0
    per_condition = data["multiqc_garage_per_condition"]
    assert {r["metric"] for r in per_condition.values()} >= {"c2st_auc", "condition_lfc_corr"}

    out = tmp_path / "mqc"
    proc = run_cli(
        "--strict", "--force", "--config", str(REPO / "assets" / "multiqc_config.yml"),
        "--outdir", str(out), str(evaluated), cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    html = (out / "multiqc_report.html").read_text()
    for anchor in ("garage-metrics", "garage-composition", "garage-agreement", "garage-diagnosis",
                   "garage-privacy", "garage-conditions", "garage-pictures"):
        assert f'id="{anchor}"' in html, anchor
    assert "no_platelet" in html
    assert "Missing from the synthetic data:</strong> no_platelet: Platelet" in html
    assert "resampled: privacy NOT OK" in html and "seed_mia_auc" in html
    # each picture garage evaluate drew is embedded (the UMAP and per-type PNG of "resampled")
    pictures = re.findall(r'data-garage-picture="(\w+)"><img src="data:image/png;base64,', html)
    assert sorted(pictures) == ["per_type", "umap"]
    gs = read_tsv(out / "multiqc_data" / "multiqc_general_stats.txt")
    assert set(gs) == {"resampled", "no_platelet", "conditioned"}


def test_run_report_has_parameters_and_methods(evaluated, tmp_path):
    from garage.multiqc import run_report

    params = {"gan": {"epochs": 300, "composition": "balanced"}, "evaluate": {"n_repeats": 3}}
    html = run_report(evaluated, tmp_path / "multiqc", params=params).read_text()
    for anchor in ("garage-run-params", "garage-methods", "garage-pictures", "garage-metrics"):
        assert anchor in html, anchor
    assert "gan.composition" in html and "balanced" in html
    for cite in ("Veličković", "Gulrajani", "Lopez R", "Ewels P", "Wolf FA"):
        assert cite in html, cite


def test_run_report_leaves_caller_logging_alone(results, tmp_path):
    from garage.multiqc import run_report

    root = logging.getLogger()
    handler = logging.StreamHandler()
    root.addHandler(handler)
    before = (root.handlers[:], root.level)
    try:
        run_report(results / "evaluate", tmp_path / "multiqc")
        assert (root.handlers, root.level) == before
    finally:
        root.removeHandler(handler)
