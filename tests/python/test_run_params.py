"""`garage run --params`: the `gan` section's run options (provenance, shareable_model).

Fast: the stages are replaced by stand-ins that record how `run_samples` calls them, so
nothing is trained here (tests/python/test_run.py runs the real stages).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from garage import run as garage_run
from garage.errors import GarageError


def test_gan_run_options_split_from_config_fields():
    over, opts = garage_run._gan_run_options({"gan_steps": 50, "provenance": False, "shareable_model": True})
    assert over == {"gan_steps": 50}
    assert opts == {"provenance": False, "shareable_model": True}
    assert garage_run._gan_run_options({}) == ({}, {"provenance": True, "shareable_model": False})


@pytest.mark.parametrize("name, value", [("provenance", "no"), ("shareable_model", 1)])
def test_gan_run_options_must_be_booleans(name, value):
    with pytest.raises(GarageError, match=f"{name}.*true or false"):
        garage_run._gan_run_options({name: value})


@pytest.fixture
def stand_ins(monkeypatch, tmp_path):
    """Replace every stage by a stand-in that writes nothing heavy and records its call."""
    import garage.evaluate as ev
    import garage.gan as gan
    import garage.gat as gat
    import garage.preprocess as pp

    calls: dict[str, dict] = {}

    def touch(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        return path

    def run_preprocess(counts, outdir, prefix, config):
        return {"h5ad": touch(Path(outdir) / f"{prefix}.preprocessed.h5ad")}

    def run_gat(inp, outdir, prefix, config, **kw):
        return {k: touch(Path(outdir) / f"{prefix}.{s}") for k, s in
                (("h5ad", "seeds.h5ad"), ("model", "gat.pt"), ("log", "gat_log.tsv"))}

    def run_gan(inp, outdir, prefix, config, *, provenance=True, shareable_model=False, **kw):
        calls["gan"] = {"provenance": provenance, "shareable_model": shareable_model, "config": config}
        out = {k: touch(Path(outdir) / f"{prefix}.{s}") for k, s in
               (("h5ad", "synthetic.h5ad"), ("model", "generator.pt"), ("log", "gan_log.tsv"))}
        if provenance:
            out["provenance"] = touch(Path(outdir) / f"{prefix}.provenance.tsv")
        return out

    def run_evaluate(real, synthetic, outdir, prefix, config, *, seeds=None, provenance=None, **kw):
        calls["evaluate"] = {"seeds": seeds, "provenance": provenance}
        return {"metrics": touch(Path(outdir) / f"{prefix}.garage_metrics.json")}

    monkeypatch.setattr(pp, "run_preprocess", run_preprocess)
    monkeypatch.setattr(gat, "run_gat", run_gat)
    monkeypatch.setattr(gan, "run_gan", run_gan)
    monkeypatch.setattr(ev, "run_evaluate", run_evaluate)
    counts = touch(tmp_path / "counts.h5ad")
    return calls, [garage_run.Sample("s1", counts, "cell_type")]


def _params(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "params.json"
    path.write_text(json.dumps(doc))
    return path


def test_params_gan_shareable_model_and_no_provenance(stand_ins, tmp_path):
    calls, samples = stand_ins
    params = _params(tmp_path, {"gan": {"gan_steps": 7, "shareable_model": True, "provenance": False}})
    results = garage_run.run_samples(samples, tmp_path / "out", params_file=params, report=False)
    assert [r.status for r in results] == ["ok"], results[0].message
    assert calls["gan"]["shareable_model"] is True and calls["gan"]["provenance"] is False
    assert calls["gan"]["config"].gan_steps == 7
    # no provenance file, so evaluate must not be handed one
    assert calls["evaluate"]["provenance"] is None and calls["evaluate"]["seeds"] is not None
    assert not (tmp_path / "out/gan/s1.provenance.tsv").exists()


def test_params_gan_defaults_keep_provenance(stand_ins, tmp_path):
    calls, samples = stand_ins
    results = garage_run.run_samples(samples, tmp_path / "out", report=False)
    assert [r.status for r in results] == ["ok"], results[0].message
    assert calls["gan"]["shareable_model"] is False and calls["gan"]["provenance"] is True
    assert Path(calls["evaluate"]["provenance"]).name == "s1.provenance.tsv"


def test_resume_without_provenance_reuses_gan_outputs(stand_ins, tmp_path):
    """With provenance: false a finished GAN stage is reused without a provenance file."""
    calls, samples = stand_ins
    params = _params(tmp_path, {"gan": {"provenance": False}})
    garage_run.run_samples(samples, tmp_path / "out", params_file=params, report=False)
    calls.clear()
    results = garage_run.run_samples(samples, tmp_path / "out", params_file=params, report=False, resume=True)
    assert [r.status for r in results] == ["ok"]
    assert "gan" not in calls and calls["evaluate"]["provenance"] is None


def test_unknown_gan_option_lists_the_run_options(stand_ins, tmp_path):
    _, samples = stand_ins
    params = _params(tmp_path, {"gan": {"epoch": 3}})
    with pytest.raises(GarageError) as err:
        garage_run.run_samples(samples, tmp_path / "out", params_file=params, report=False)
    assert "'epoch'" in str(err.value) and "shareable_model" in err.value.fix and "provenance" in err.value.fix


def test_run_help_documents_condition_key_and_gan_steps():
    from garage.cli.run import run

    out = CliRunner().invoke(run, ["--help"], terminal_width=200).output
    assert "condition_key" in out and "gan_steps" in out and "shareable_model" in out
    assert '"epochs"' not in out


def test_params_hint_uses_gan_steps(tmp_path):
    with pytest.raises(GarageError) as err:
        garage_run._load_params(_params(tmp_path, {"train": {}}))
    assert "gan_steps" in err.value.fix and "epochs" not in err.value.fix


def test_yaml_exponent_without_a_dot_is_read_as_the_number(stand_ins, tmp_path):
    """PyYAML reads ``2e-4`` (YAML 1.1: no dot) as a string; a float option takes it as the number,
    and a value that is no number fails with one line naming the option (not a TypeError)."""
    calls, samples = stand_ins
    params = tmp_path / "params.yml"
    params.write_text("gan:\n  lr_gan: 4e-4\n  kl_weight: 1e0\n")
    import yaml

    assert yaml.safe_load(params.read_text())["gan"]["lr_gan"] == "4e-4"  # the trap this guards against
    results = garage_run.run_samples(samples, tmp_path / "out", params_file=params, report=False)
    assert [r.status for r in results] == ["ok"], results[0].message
    assert calls["gan"]["config"].lr_gan == 4e-4 and calls["gan"]["config"].kl_weight == 1.0
    params.write_text("gan:\n  lr_gan: fast\n")
    with pytest.raises(GarageError, match=r"gan option 'lr_gan' in params must be a number \(got 'fast'\)") as err:
        garage_run.run_samples(samples, tmp_path / "out2", params_file=params, report=False)
    from garage.gan._config import LR_GAN_DEFAULT

    assert f"lr_gan: {LR_GAN_DEFAULT!r}" in err.value.fix


def test_params_numbers_for_every_numeric_kind():
    """Whole-number strings for int options, lists of numbers for tuple options, and true/false
    refused where a number is meant: each by one GarageError naming the option."""
    from garage.evaluate import EvaluateConfig
    from garage.gan import GANConfig

    cfg = garage_run._config(EvaluateConfig, {"max_cells": "2e3", "mmd_factors": [0.5, "1e0", 2]}, "evaluate")
    assert cfg.max_cells == 2000 and isinstance(cfg.max_cells, int)
    assert cfg.mmd_factors == (0.5, 1.0, 2.0)
    for over, what in (({"max_cells": "2.5e0"}, "max_cells.*whole number"),
                       ({"max_cells": 2500.5}, "max_cells.*whole number"),
                       ({"mmd_factors": 1.0}, "mmd_factors.*list of numbers"),
                       ({"mmd_factors": [1.0, "wide"]}, "mmd_factors.*must be a number")):
        with pytest.raises(GarageError, match=what):
            garage_run._config(EvaluateConfig, over, "evaluate")
    with pytest.raises(GarageError, match=r"gan option 'lr_gan' in params must be a number \(got True\)"):
        garage_run._config(GANConfig, {"lr_gan": True}, "gan")
    assert garage_run._config(GANConfig, {"gan_batch_size": None, "max_memory_gb": None}, "gan").gan_batch_size is None
