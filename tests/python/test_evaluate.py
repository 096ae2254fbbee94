"""garage evaluate: each metric behaves on real data with known answers.

"Synthetic" sets are built from the bundled real PBMC 3k subset (1,083 cells,
rare DC 32 and Platelet 14), so every expected answer is known:

* an independent real sample (half of the train cells, removed from the real
  file) must score like the control;
* copies of train cells must be caught by the privacy metrics;
* a dropped type must be flagged; a shifted set and per-gene-shuffled cells
  must be told apart from real cells.
"""

from __future__ import annotations

import json
import math
import re

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

from garage import constants as C
from garage.cli import main
from garage.errors import GarageError
from garage.evaluate import (
    BETTER,
    METRIC_NAMES,
    PER_TYPE_COLUMNS,
    SUFFIX_PER_TYPE_PLOT,
    SUFFIX_UMAP,
    TEST_OVERRIDES,
    EvaluateConfig,
    evaluate_adata,
)

# the contract in docs/developer.md
CONTRACT_METRICS = (
    "c2st_auc mmd_rbf wasserstein_pca mean_corr var_corr zero_frac_corr libsize_ks ari nmi "
    "rare_agreement type_agreement tstr_macro_f1 tstr_rare_f1 augment_macro_f1 dcr_ratio "
    "exact_copies nndr_ratio mia_auc"
).split()
CONTRACT_COLUMNS = (
    "cell_type n_real_train n_real_holdout n_synthetic frac_real frac_synthetic agreement mmd "
    "is_rare missing"
).split()
BETTER_VALUES = {"higher", "lower", "closer to 0.5", "closer to 1", "closer to control", "zero"}

CFG = EvaluateConfig(n_repeats=3, plots=False)


# --- building synthetic sets from real cells ----------------------------------------


def as_synthetic(cells: ad.AnnData, counts=None) -> ad.AnnData:
    """A synthetic-format AnnData: counts in X, obs cell_type/synthetic/seed id."""
    X = sp.csr_matrix(cells.layers[C.LAYER_COUNTS] if counts is None else counts, dtype=np.float32)
    obs = pd.DataFrame(
        {
            C.OBS_CELL_TYPE: pd.Categorical(cells.obs[C.OBS_LABEL].astype(str).to_numpy()),
            C.OBS_SYNTHETIC: True,
            C.OBS_SEED_ID: "",
        },
        index=[f"syn{i}" for i in range(X.shape[0])],
    )
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=cells.var_names.copy()))


def dense_counts(cells: ad.AnnData) -> np.ndarray:
    return np.asarray(cells.layers[C.LAYER_COUNTS].todense(), dtype=np.float32)


def train_of(real: ad.AnnData) -> ad.AnnData:
    return real[real.obs[C.OBS_SPLIT].astype(str) == C.SPLIT_TRAIN].copy()


@pytest.fixture(scope="module")
def real(preprocessed_small) -> ad.AnnData:
    return ad.read_h5ad(preprocessed_small)


@pytest.fixture(scope="module")
def independent(real):
    """(real', sample): half of every type's train cells leave real and become 'synthetic'.

    The sample is real data the evaluation has never seen, like the holdout: the
    ideal generator's output.
    """
    rng = np.random.default_rng(0)
    lab = real.obs[C.OBS_LABEL].astype(str).to_numpy()
    tr = np.flatnonzero(real.obs[C.OBS_SPLIT].astype(str) == C.SPLIT_TRAIN)
    out = np.sort(
        np.concatenate([rng.permutation(tr[lab[tr] == t])[: (lab[tr] == t).sum() // 2]
                        for t in np.unique(lab[tr])])
    )
    keep = np.setdiff1d(np.arange(real.n_obs), out)
    return real[keep].copy(), real[out].copy()


@pytest.fixture(scope="module")
def independent_result(independent):
    real2, cells = independent
    return evaluate_adata(real2, as_synthetic(cells), CFG)


def m(doc, name):
    e = doc["metrics"][name]
    return e["value"], e["control"]


# --- the known answers ---------------------------------------------------------------


def test_independent_real_sample_scores_like_the_control(independent_result):
    doc = independent_result
    assert doc["missing_types"] == []
    assert set(doc["rare_types"]) == {"DC", "Platelet"}
    v, c = m(doc, "c2st_auc")
    assert abs(v - 0.5) < 0.08 and abs(v - c) < 0.08
    v, c = m(doc, "mmd_rbf")
    assert abs(v) < 0.004 and abs(v - c) < 0.004
    v, c = m(doc, "wasserstein_pca")
    assert abs(v / c - 1) < 0.1
    for name in ("mean_corr", "var_corr", "zero_frac_corr"):
        v, c = m(doc, name)
        assert v > 0.95 and abs(v - c) < 0.02, name
    v, c = m(doc, "libsize_ks")
    assert v < 0.2 and abs(v - c) < 0.1
    for name in ("ari", "nmi"):
        v, c = m(doc, name)
        assert abs(v - c) < 0.15, name
    for name in ("type_agreement", "tstr_macro_f1", "augment_macro_f1"):
        v, c = m(doc, name)
        assert abs(v - c) < 0.1, name
    # rare types have 3-6 holdout cells here: their control recall moves in steps of 1/6
    v, c = m(doc, "rare_agreement")
    assert abs(v - c) < 0.25
    for name in ("dcr_ratio", "nndr_ratio"):
        v, c = m(doc, name)
        assert 0.9 < v < 1.1 and 0.9 < c < 1.1, name
    v, c = m(doc, "mia_auc")
    assert abs(v - 0.5) < 0.07 and abs(c - 0.5) < 0.07
    assert m(doc, "exact_copies") == (0, 0)
    table = doc["per_type"]
    assert not table["missing"].any()
    assert table.loc[table["is_rare"], "cell_type"].tolist() == ["DC", "Platelet"]


def test_schema_means_and_stds(independent_result):
    doc = independent_result
    assert list(doc["metrics"]) == CONTRACT_METRICS == list(METRIC_NAMES)
    for name, e in doc["metrics"].items():
        assert set(e) == {"value", "std", "control", "control_std", "better"}, name
        assert e["better"] in BETTER_VALUES and e["better"] == BETTER[name]
        assert e["value"] is not None and math.isfinite(e["value"]), name
        assert e["std"] is not None and e["std"] >= 0, name
    # subsampled metrics really vary between repeats (std estimated from 3 draws)
    assert doc["metrics"]["c2st_auc"]["std"] > 0 and doc["metrics"]["mmd_rbf"]["control_std"] > 0
    assert doc["n_cells"]["synthetic"] == doc["per_type"]["n_synthetic"].sum()
    assert list(doc["per_type"].columns) == CONTRACT_COLUMNS == list(PER_TYPE_COLUMNS)
    sub = doc["params"]["subsample"]
    assert sub["two_sample"] == min(doc["n_cells"]["real_holdout"], sub["train_reference"])


def test_copies_of_training_cells_are_caught(real):
    train = train_of(real)
    doc = evaluate_adata(real, as_synthetic(train), CFG)
    assert m(doc, "exact_copies") == (train.n_obs, 0)
    v, c = m(doc, "dcr_ratio")
    assert v < 0.1 and abs(c - 1) < 0.1
    v, c = m(doc, "nndr_ratio")
    assert v < 0.1 and abs(c - 1) < 0.1
    v, c = m(doc, "mia_auc")
    assert v > 0.9 and abs(c - 0.5) < 0.07


def test_missing_type_is_flagged(independent):
    real2, cells = independent
    doc = evaluate_adata(real2, as_synthetic(cells[cells.obs[C.OBS_LABEL] != "DC"]),
                         EvaluateConfig(n_repeats=1, plots=False))
    assert doc["missing_types"] == ["DC"]
    table = doc["per_type"].set_index("cell_type")
    assert bool(table.loc["DC", "missing"]) and table.loc["DC", "n_synthetic"] == 0
    assert math.isnan(table.loc["DC", "agreement"]) and math.isnan(table.loc["DC", "mmd"])
    assert not table.drop("DC")["missing"].any()
    assert table.loc["DC", "n_real_train"] > 0 and bool(table.loc["DC", "is_rare"])
    # a missing rare type counts as 0 agreement: the mean over DC and Platelet <= 0.5
    v, c = m(doc, "rare_agreement")
    assert v <= 0.5 < c
    v, c = m(doc, "tstr_rare_f1")
    assert v < c


def test_shifted_set_is_detected(independent):
    real2, cells = independent
    x = dense_counts(cells)
    top = np.argsort(-x.sum(axis=0))[:100]  # the 100 most expressed HVGs, tripled
    x[:, top] = np.round(x[:, top] * 3.0)
    doc = evaluate_adata(real2, as_synthetic(cells, x), CFG)
    v, c = m(doc, "c2st_auc")
    assert v > c + 0.1 and v > 0.6
    v, c = m(doc, "mmd_rbf")
    assert v > c + 0.005 and v > 5 * doc["metrics"]["mmd_rbf"]["control_std"]
    v, c = m(doc, "wasserstein_pca")
    assert v > c
    v, c = m(doc, "libsize_ks")
    assert v > c + 0.1


def test_per_gene_shuffled_cells_are_detected(independent):
    """Shuffling each gene among the cells of a type keeps every per-gene
    distribution but destroys gene-gene correlation: C2ST must notice."""
    real2, cells = independent
    rng = np.random.default_rng(1)
    x = dense_counts(cells)
    lab = cells.obs[C.OBS_LABEL].astype(str).to_numpy()
    for t in np.unique(lab):
        idx = np.flatnonzero(lab == t)
        x[idx] = np.take_along_axis(x[idx], rng.random((len(idx), x.shape[1])).argsort(0), 0)
    doc = evaluate_adata(real2, as_synthetic(cells, x), CFG)
    v, c = m(doc, "c2st_auc")
    assert v > c + 0.05
    # per-gene statistics cannot see it: they stay at control level
    v, c = m(doc, "mean_corr")
    assert abs(v - c) < 0.01


# --- bad input -------------------------------------------------------------------------


def _syn(real, n=50):
    return as_synthetic(train_of(real)[:n])


def test_test_overrides_are_a_valid_fast_config():
    cfg = EvaluateConfig(**TEST_OVERRIDES)
    cfg.validate()
    assert cfg.n_repeats == 1 and cfg.max_cells <= 500


def test_bad_inputs_raise_garage_error(real):
    syn = _syn(real)
    cases = {
        "do not match": syn[:, 5:].copy(),
        "no obs['cell_type']": ad.AnnData(syn.X, obs=syn.obs.drop(columns=[C.OBS_CELL_TYPE]),
                                          var=syn.var),
        "has no cells": syn[:0].copy(),
    }
    unknown = syn.copy()
    unknown.obs[C.OBS_CELL_TYPE] = pd.Categorical(["Alien"] * unknown.n_obs)
    cases["do not occur in the real file"] = unknown
    lognorm = syn.copy()
    lognorm.X = sp.csr_matrix(np.log1p(syn.X.toarray() * 0.37), dtype=np.float32)
    cases["not integer counts"] = lognorm
    for msg, bad in cases.items():
        with pytest.raises(GarageError, match=re.escape(msg)):
            evaluate_adata(real, bad, CFG)
    raw = ad.AnnData(real.layers[C.LAYER_COUNTS].copy(), var=real.var[[]].copy())
    with pytest.raises(GarageError, match="not a GARAGE preprocessed file"):
        evaluate_adata(raw, syn, CFG)
    with pytest.raises(GarageError, match="n-repeats"):
        evaluate_adata(real, syn, EvaluateConfig(n_repeats=0))


def test_same_seed_same_numbers_genes_in_any_order(real):
    """Fixed seed -> identical numbers; synthetic genes in another order are realigned."""
    syn = _syn(real, 200)
    shuffled = syn[:, np.random.default_rng(0).permutation(syn.n_vars)].copy()
    cfg = EvaluateConfig(n_repeats=1, max_cells=100, plots=False, seed=3)
    assert evaluate_adata(real, syn, cfg)["metrics"] == evaluate_adata(real, shuffled, cfg)["metrics"]


# --- CLI -------------------------------------------------------------------------------


def test_cli_writes_all_outputs(real, preprocessed_small, tmp_path):
    syn = _syn(real, 400)
    syn_path = tmp_path / "s1.synthetic.h5ad"
    syn.write_h5ad(syn_path)
    out = tmp_path / "ev"
    res = CliRunner().invoke(main, [
        "evaluate", "--real", str(preprocessed_small), "--synthetic", str(syn_path),
        "--prefix", "s1", "--outdir", str(out), "--n-repeats", "1", "--max-cells", "150",
        "--wasserstein-max-cells", "100",
    ])
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["s1" + C.SUFFIX_METRICS, "s1" + C.SUFFIX_PER_TYPE,
                            "s1" + SUFFIX_UMAP, "s1" + SUFFIX_PER_TYPE_PLOT])
    for png in (SUFFIX_UMAP, SUFFIX_PER_TYPE_PLOT):
        assert (out / f"s1{png}").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((out / f"s1{C.SUFFIX_METRICS}").read_text())
    for key in ("sample", "garage_version", "versions", "params", "n_cells", "metrics",
                "rare_types", "missing_types"):
        assert key in doc
    assert doc["sample"] == "s1" and doc["params"]["n_repeats"] == 1
    assert set(doc["n_cells"]) == {"real_train", "real_holdout", "synthetic"}
    assert list(doc["metrics"]) == CONTRACT_METRICS
    for e in doc["metrics"].values():
        assert set(e) == {"value", "std", "control", "control_std", "better"}
    assert doc["metrics"]["exact_copies"]["value"] == 400
    table = pd.read_csv(out / f"s1{C.SUFFIX_PER_TYPE}", sep="\t")
    assert list(table.columns) == CONTRACT_COLUMNS
    assert set(table["cell_type"]) == set(real.obs[C.OBS_LABEL].astype(str))
    # the MultiQC plugin (written against the same contract) reads both files cleanly
    parse = pytest.importorskip("garage.multiqc._parse")
    parsed = parse.parse_metrics_json((out / f"s1{C.SUFFIX_METRICS}").read_text())
    assert not [p for p in parsed.problems if "missing" in p or "not" in p]
    rows, problems = parse.parse_per_type_tsv((out / f"s1{C.SUFFIX_PER_TYPE}").read_text())
    assert not problems and len(rows) == len(table)


def test_cli_mismatched_genes_exit_2_one_line_no_outputs(real, preprocessed_small, tmp_path):
    bad = _syn(real)[:, 10:].copy()
    bad_path = tmp_path / "bad.synthetic.h5ad"
    bad.write_h5ad(bad_path)
    out = tmp_path / "ev"
    res = CliRunner().invoke(main, [
        "-q", "evaluate", "--real", str(preprocessed_small), "--synthetic", str(bad_path),
        "--prefix", "bad", "--outdir", str(out),
    ])
    assert res.exit_code == 2
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error:") and "genes" in err[0]
    assert "Fix:" in err[0] and "Traceback" not in res.output
    assert not out.exists() or not any(out.iterdir())


def test_cli_real_file_not_preprocessed(real, tmp_path, preprocessed_small):
    raw = ad.AnnData(real.layers[C.LAYER_COUNTS].copy(), var=real.var[[]].copy())
    raw_path = tmp_path / "raw.h5ad"
    raw.write_h5ad(raw_path)
    syn_path = tmp_path / "s.synthetic.h5ad"
    _syn(real).write_h5ad(syn_path)
    res = CliRunner().invoke(main, ["evaluate", "--real", str(raw_path), "--synthetic",
                                    str(syn_path), "--prefix", "x", "--outdir", str(tmp_path / "o")])
    assert res.exit_code == 2 and "garage preprocess" in res.stderr
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
