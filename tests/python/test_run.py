"""`garage run`: samplesheet validation and the end-to-end in-process run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from garage import constants as C
from garage.errors import GarageError
from garage.run import read_samplesheet

GARAGE = [sys.executable, "-m", "garage.cli"]


def _sheet(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "samplesheet.csv"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "text, expect",
    [
        ("sample,label_key\na,cell_type\n", "missing column(s) ['counts']"),
        ("sample,counts\n", "has no samples"),
        ("sample,counts,label_key\na,{small},cell_type\na,{small},cell_type\n", "duplicate sample id 'a'"),
        ("sample,counts,label_key\na,/no/such/file.h5ad,cell_type\n", "does not exist"),
        ("sample,counts,label_key\nbad id,{small},cell_type\n", "has spaces/special characters"),
        ("sample,counts,label_key,colour\na,{small},cell_type,red\n", "unknown column(s) ['colour']"),
        ("sample,counts,label_key\na,,cell_type\n", "empty 'counts'"),
    ],
)
def test_bad_samplesheets(tmp_path, small_counts_path, text, expect):
    sheet = _sheet(tmp_path, text.format(small=small_counts_path))
    with pytest.raises(GarageError, match=None) as exc:
        read_samplesheet(sheet)
    assert expect in str(exc.value)
    # and through the CLI: one line, exit 2, nothing written
    out = tmp_path / "out"
    proc = subprocess.run([*GARAGE, "run", "--input", str(sheet), "--outdir", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert [ln for ln in proc.stderr.splitlines() if ln.startswith("Error:")] == [
        ln for ln in proc.stderr.splitlines() if ln.strip()
    ]
    assert expect in proc.stderr and not out.exists()


def test_relative_paths_resolve_against_samplesheet(tmp_path, small_counts_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "x.h5ad").write_bytes(small_counts_path.read_bytes())
    sheet = _sheet(tmp_path, "sample,counts,label_key\ns1,data/x.h5ad,cell_type\n")
    (s,) = read_samplesheet(sheet)
    assert s.counts == (data / "x.h5ad").resolve() and s.label_key == "cell_type"


@pytest.fixture(scope="module")
def test_profile_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run_test_profile")
    proc = subprocess.run([*GARAGE, "run", "--profile", "test", "--outdir", str(out)],
                          capture_output=True, text=True)
    return out, proc


def test_profile_test_runs_every_stage(test_profile_run):
    out, proc = test_profile_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    for sample in ("pbmc3k_small", "pbmc68k_reduced"):
        for rel in (f"preprocess/{sample}.preprocessed.h5ad", f"gat/{sample}.seeds.h5ad",
                    f"gat/{sample}.gat.pt", f"gat/{sample}.gat_log.tsv",
                    f"gan/{sample}.synthetic.h5ad", f"gan/{sample}.generator.pt",
                    f"gan/{sample}.gan_log.tsv", f"gan/{sample}.provenance.tsv",
                    f"evaluate/{sample}.garage_metrics.json", f"evaluate/{sample}.per_type.tsv"):
            assert (out / rel).is_file(), rel
        syn = ad.read_h5ad(out / f"gan/{sample}.synthetic.h5ad")
        assert syn.obs["synthetic"].all()
        data = syn.X.data
        assert np.allclose(data, np.round(data)) and data.min() >= 0
        metrics = json.loads((out / f"evaluate/{sample}.garage_metrics.json").read_text())
        assert metrics["sample"] == sample
        assert 0.0 <= metrics["metrics"]["c2st_auc"]["value"] <= 1.0
        # garage run hands evaluate the seeds and the private provenance: the seed-aware checks ran
        assert metrics["metrics"]["seed_mia_auc"]["value"] is not None
        assert isinstance(metrics["privacy_ok"], bool)
    html = out / "multiqc" / "multiqc_report.html"
    text = html.read_text()
    assert html.is_file() and "garage" in text.lower()
    # the shareable report names no real cell of either input
    for sample in ("pbmc3k_small", "pbmc68k_reduced"):
        real = ad.read_h5ad(out / f"preprocess/{sample}.preprocessed.h5ad", backed="r")
        names = [n for n in real.obs_names.astype(str) if len(n) >= 8]
        assert not [n for n in names if n in text][:3]
    summary = (out / "pipeline_info" / "garage_run_summary.tsv").read_text().splitlines()
    assert len(summary) == 3 and all("\tok\t" in ln for ln in summary[1:])


def test_every_stage_uses_the_one_rare_list(test_profile_run):
    """One definition of rare (issue 15).  On the bundled PBMC subset DC is just under 3% of all
    cells but just over 3% of the train split: a per-stage threshold would disagree.  Every
    stage must carry the list preprocess decided."""
    out, proc = test_profile_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    sample = "pbmc3k_small"
    pp = ad.read_h5ad(out / f"preprocess/{sample}.preprocessed.h5ad", backed="r")
    lab = pp.obs[C.OBS_LABEL].astype(str).to_numpy()
    train = pp.obs[C.OBS_SPLIT].astype(str).to_numpy() == C.SPLIT_TRAIN
    share_all, share_train = np.mean(lab == "DC"), np.mean(lab[train] == "DC")
    assert share_all < 0.03 < share_train  # the near-threshold case
    decided = sorted(map(str, pp.uns[C.UNS_KEY][C.UNS_RARE_TYPES]))
    assert decided == ["DC", "Platelet"]
    seeds = ad.read_h5ad(out / f"gat/{sample}.seeds.h5ad", backed="r")
    syn = ad.read_h5ad(out / f"gan/{sample}.synthetic.h5ad", backed="r")
    metrics = json.loads((out / f"evaluate/{sample}.garage_metrics.json").read_text())
    assert sorted(map(str, seeds.uns[C.UNS_KEY][C.UNS_RARE_TYPES])) == decided
    assert sorted(map(str, syn.uns[C.UNS_KEY][C.UNS_RARE_TYPES])) == decided
    assert sorted(metrics["rare_types"]) == decided
    # the GAT gave DC the rare quota: every train DC cell (under rare_min) is a seed
    s_lab = seeds.obs[C.OBS_LABEL].astype(str).to_numpy()
    s_train = seeds.obs[C.OBS_SPLIT].astype(str).to_numpy() == C.SPLIT_TRAIN
    is_seed = seeds.obs[C.OBS_SEED].astype(bool).to_numpy()
    n_dc_train = int(((s_lab == "DC") & s_train).sum())
    assert int(((s_lab == "DC") & is_seed).sum()) >= min(n_dc_train, 10)


def test_bad_sample_fails_alone(tmp_path, pbmc68k_counts_path):
    """A sheet with the optional condition_key column (set for one sample): the bad sample fails
    alone, the good one is conditioned on its covariate."""
    from garage.datasets import dataset_path

    bad = ad.read_h5ad(pbmc68k_counts_path)
    bad.X = bad.X * 0.5  # not integer counts any more
    bad_path = tmp_path / "bad.h5ad"
    bad.write_h5ad(bad_path)
    good_path = dataset_path("sc_mixology_small")
    sheet = _sheet(
        tmp_path,
        f"sample,counts,label_key,condition_key\ngood,{good_path},cell_type,protocol\n"
        f"bad,{bad_path},bulk_labels,\n",
    )
    out = tmp_path / "out"
    # what is tested is the batch's bookkeeping and the covariate, not the synthetic cells'
    # quality (test_profile_test_runs_every_stage trains at the test profile's full length)
    short = tmp_path / "short.json"
    from conftest import SHORT_GAN

    short.write_text(json.dumps({"gan": SHORT_GAN}))
    proc = subprocess.run(
        [*GARAGE, "run", "--input", str(sheet), "--outdir", str(out), "--profile", "test", "--no-report",
         "--params", str(short)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "1 of 2 samples completed" in proc.stderr
    assert "bad: failed:" in proc.stderr and "not integer counts" in proc.stderr
    assert (out / "evaluate" / "good.garage_metrics.json").is_file()
    syn = ad.read_h5ad(out / "gan" / "good.synthetic.h5ad")
    assert set(syn.obs["protocol"].astype(str)) == {"CEL-seq2", "Drop-seq"}
    assert not list(out.rglob("bad.*"))  # nothing half-written for the bad sample


def test_resume_reuses_finished_stages(test_profile_run):
    out, proc = test_profile_run
    assert proc.returncode == 0
    syn = out / "gan" / "pbmc3k_small.synthetic.h5ad"
    seeds = out / "gat" / "pbmc3k_small.seeds.h5ad"
    before = syn.stat().st_mtime_ns, seeds.stat().st_mtime_ns
    again = subprocess.run([*GARAGE, "run", "--profile", "test", "--outdir", str(out), "--resume",
                            "--no-report"], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "reusing finished outputs" in again.stderr
    assert (syn.stat().st_mtime_ns, seeds.stat().st_mtime_ns) == before
    assert (out / "evaluate" / "pbmc3k_small.garage_metrics.json").is_file()


def test_out_of_resources_sample_fails_alone(tmp_path, small_counts_path, monkeypatch):
    """Not enough memory (ResourceError, MemoryError) fails that sample only, like a bad
    sample; the summary names the status and the exit status is 3 (retry with more)."""
    from garage import preprocess
    from garage.errors import ResourceError
    from garage.run import Sample, exit_status, run_samples

    def fake_preprocess(counts, outdir, prefix, config, **kw):
        raise {"big": ResourceError("preprocessing needs about 90 GB", "use a larger node"),
               "huge": MemoryError(), "broken": GarageError("table is empty")}[prefix]

    monkeypatch.setattr(preprocess, "run_preprocess", fake_preprocess)
    samples = [Sample(name, small_counts_path, "cell_type") for name in ("big", "huge", "broken")]
    results = run_samples(samples, tmp_path / "out", report=False)
    assert [(r.sample, r.status) for r in results] == [
        ("big", "out-of-resources"), ("huge", "out-of-resources"), ("broken", "failed")]
    assert "needs about 90 GB" in results[0].message and "out of memory" in results[1].message
    summary = (tmp_path / "out" / "pipeline_info" / "garage_run_summary.tsv").read_text()
    assert "big\tout-of-resources\t" in summary and "broken\tfailed\t" in summary
    assert exit_status(results) == 3


def _stub_stages(monkeypatch, tmp_path, stop_in: str, stop: BaseException):
    """Every stage replaced by a stub that returns file names at once; *stop_in* (a sample name, or
    'report') raises *stop* there."""
    from garage import evaluate, gan, gat, multiqc, preprocess

    def pre(counts, outdir, prefix, config, **kw):
        if prefix == stop_in:
            raise stop
        if prefix == "bad":
            raise GarageError("table\tis empty\nsecond line")
        return {"h5ad": tmp_path / f"{prefix}.pp.h5ad"}

    monkeypatch.setattr(preprocess, "run_preprocess", pre)
    monkeypatch.setattr(gat, "run_gat", lambda pp, d, prefix, *a, **k: {"h5ad": d / f"{prefix}.seeds.h5ad"})
    monkeypatch.setattr(gan, "run_gan", lambda g, d, prefix, *a, **k: {"h5ad": d / f"{prefix}.syn.h5ad"})
    monkeypatch.setattr(evaluate, "run_evaluate", lambda pp, syn, d, prefix, *a, **k: {"json": d / "m.json"})

    def report(*a, **k):
        if stop_in == "report":
            raise stop
        return tmp_path / "multiqc.html"

    monkeypatch.setattr(multiqc, "run_report", report)


@pytest.mark.parametrize("stop, message", [(SystemExit(143), "terminated by SIGTERM (exit 143)"),
                                           (KeyboardInterrupt(), "interrupted (Ctrl-C, exit 130)")])
def test_stopped_batch_still_writes_its_summary(tmp_path, small_counts_path, monkeypatch, stop, message):
    """A batch stopped by SIGTERM (the CLI's SystemExit(143)) or Ctrl-C re-raises it, and its summary
    names the finished samples, the one that stopped and the ones that never ran; messages stay one
    TSV field."""
    from garage.run import Sample, run_samples

    _stub_stages(monkeypatch, tmp_path, "third", stop)
    samples = [Sample(name, small_counts_path, "cell_type") for name in ("first", "bad", "third", "fourth")]
    with pytest.raises(type(stop)):
        run_samples(samples, tmp_path / "out")
    rows = [r.split("\t") for r in
            (tmp_path / "out" / "pipeline_info" / "garage_run_summary.tsv").read_text().splitlines()[1:]]
    assert [r[:2] for r in rows] == [["first", "ok"], ["bad", "failed"], ["third", "terminated"],
                                     ["fourth", "not-run"]]
    assert all(len(r) == 4 for r in rows) and rows[1][3] == "table is empty second line"
    assert rows[2][3] == message


def test_stop_during_the_report_keeps_every_finished_sample(tmp_path, small_counts_path, monkeypatch):
    """SIGTERM while the MultiQC report is made: every sample finished, and the summary says so."""
    from garage.run import Sample, run_samples

    _stub_stages(monkeypatch, tmp_path, "report", SystemExit(143))
    samples = [Sample(name, small_counts_path, "cell_type") for name in ("first", "second")]
    with pytest.raises(SystemExit) as info:
        run_samples(samples, tmp_path / "out")
    assert info.value.code == 143
    rows = (tmp_path / "out" / "pipeline_info" / "garage_run_summary.tsv").read_text().splitlines()[1:]
    assert [r.split("\t")[:2] for r in rows] == [["first", "ok"], ["second", "ok"]]


def test_a_summary_that_cannot_be_written_keeps_the_stop_exit(tmp_path, small_counts_path, monkeypatch):
    """A failing summary write (disk full on a node being killed) must not turn exit 143 into 1."""
    from garage import run as run_mod
    from garage.run import Sample, run_samples

    _stub_stages(monkeypatch, tmp_path, "first", SystemExit(143))

    def broken(*a, **k):
        raise OSError("No space left on device")

    monkeypatch.setattr(run_mod, "_write_summary", broken)
    with pytest.raises(SystemExit) as info:
        run_samples([Sample("first", small_counts_path, "cell_type")], tmp_path / "out")
    assert info.value.code == 143


def test_a_stop_inside_a_failure_handler_marks_the_sample_terminated(tmp_path, small_counts_path, monkeypatch):
    """SIGTERM while a failed sample's error is logged: that sample is 'terminated' (not 'failed'),
    timed from its own start, and the samples after it 'not-run'."""
    import types

    from garage import run as run_mod
    from garage.run import Sample, run_samples

    _stub_stages(monkeypatch, tmp_path, "none", SystemExit(143))
    clock = iter(range(100, 10_000, 100))  # every perf_counter() call advances 100 s
    monkeypatch.setattr(run_mod, "time", types.SimpleNamespace(perf_counter=lambda: float(next(clock))))
    real_logger = run_mod.logger

    class StopWhileLogging:
        def __getattr__(self, name):
            return getattr(real_logger, name)

        def error(self, fmt, *args):
            if args and args[0] == "bad":
                raise SystemExit(143)
            real_logger.error(fmt, *args)

    monkeypatch.setattr(run_mod, "logger", StopWhileLogging())
    samples = [Sample(name, small_counts_path, "cell_type") for name in ("first", "bad", "third")]
    with pytest.raises(SystemExit):
        run_samples(samples, tmp_path / "out", report=False)
    rows = [r.split("\t") for r in
            (tmp_path / "out" / "pipeline_info" / "garage_run_summary.tsv").read_text().splitlines()[1:]]
    assert [r[:3] for r in rows] == [["first", "ok", "100.0"], ["bad", "terminated", "100.0"],
                                     ["third", "not-run", "0.0"]]
    assert rows[1][3] == "terminated by SIGTERM (exit 143)"
