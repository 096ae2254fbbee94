"""Progress on a non-terminal stderr (a pipeline task's log): lines with an ETA, not bars."""

from __future__ import annotations

import io
import logging

import pytest

from garage._utils import LogProgress, progress


def _ticking(step: float):
    t = [0.0]

    def clock():
        return t[0]

    def tick():
        t[0] += step

    return clock, tick


def test_log_lines_every_ten_percent_with_eta():
    clock, tick = _ticking(1.0)
    p = LogProgress(total=200, desc="gan", unit="step", clock=clock)
    for _ in range(200):
        tick()
        p.update(1)
    assert len(p.lines) == 10
    assert p.lines[0].startswith("gan:  10% (20/200 step)")
    assert "ETA 3m00s" in p.lines[0]  # 20 s for 20 steps, 180 steps to go
    assert p.lines[-1].startswith("gan: 100% (200/200 step)") and "ETA" not in p.lines[-1]


def test_quick_work_logs_nothing_and_resume_counts_from_initial():
    clock, tick = _ticking(0.01)
    p = LogProgress(total=50, desc="read", clock=clock)
    for _ in range(50):
        tick()
        p.update(1)
    assert p.lines == []
    clock, tick = _ticking(10.0)
    p = LogProgress(total=100, initial=50, desc="gan", unit="step", clock=clock)  # a resumed run
    tick()
    p.update(10)
    assert p.lines and p.lines[0].startswith("gan:  60% (60/100 step)")
    assert "ETA 0m40s" in p.lines[0]  # the ETA uses this run's rate: 10 steps in 10 s, 40 to go


def test_unknown_total_heartbeat_and_iteration():
    clock, tick = _ticking(61.0)
    p = LogProgress(desc="reading x.h5ad", unit="row", clock=clock)
    for _ in range(4):
        tick()
        p.update(500)
    assert [ln.split(" row,")[0] for ln in p.lines] == ["reading x.h5ad: 1,000", "reading x.h5ad: 2,000"]
    clock, tick = _ticking(1.0)
    items = []
    for x in LogProgress(range(30), desc="chunks", clock=clock):
        items.append(x)
        tick()
    assert items == list(range(30))


def test_progress_on_a_log_file_goes_through_the_logger(monkeypatch, caplog):
    monkeypatch.setattr("sys.stderr", io.StringIO())  # not a terminal
    bar = progress(total=10, desc="x")
    assert isinstance(bar, LogProgress)
    bar._clock = iter([100.0 + i for i in range(100)]).__next__
    bar._t0 = bar._last = 0.0
    with caplog.at_level(logging.INFO, logger="garage"):
        bar.update(10)
    assert any("x: 100% (10/10" in r.getMessage() for r in caplog.records)
    assert not isinstance(progress(total=10, disable=True), LogProgress)


# --- stages whose steps report nothing themselves (preprocess, evaluate) ------------------


def _log_mode(monkeypatch):
    """A non-terminal stderr (as under Nextflow or SLURM), with every 10 % line logged."""
    monkeypatch.setattr("sys.stderr", io.StringIO())
    monkeypatch.setattr(LogProgress, "LOG_MIN_S", 0.0)


def _pcts(messages, desc):
    import re

    return [int(m.group(1)) for m in (re.match(rf"{desc}: +(\d+)%", s) for s in messages) if m]


def test_step_progress_is_weighted_and_beats_during_a_silent_step(monkeypatch, caplog):
    import time

    from garage._utils import StepProgress

    _log_mode(monkeypatch)
    with caplog.at_level(logging.INFO, logger="garage"):
        steps = StepProgress("stage", {"quick": 1.0, "slow": 3.0}, heartbeat_s=0.05)
        with steps.step("quick", "a quick step"):
            pass
        assert steps.done == 25.0  # by weight, not 1 of 2 steps
        with steps.step("slow", "a slow step"):
            time.sleep(0.3)  # reports nothing itself: the heartbeat speaks for it
        steps.finish()
    msgs = [r.getMessage() for r in caplog.records]
    assert "a quick step ..." in msgs and any(s.startswith("a slow step: 0.") for s in msgs)
    beats = [s for s in msgs if "a slow step still running" in s]
    assert beats and "25% of the stage done" in beats[0] and "ETA" in beats[0]
    assert _pcts(msgs, "stage")[-1] == 100
    with pytest.raises(KeyError, match="no weight"):
        StepProgress("stage", {"a": 1.0}).begin("b")


def test_a_stage_that_fails_stops_short_of_100(monkeypatch, caplog):
    from garage._utils import StepProgress

    _log_mode(monkeypatch)
    with caplog.at_level(logging.INFO, logger="garage"):
        steps = StepProgress("stage", {"a": 1.0, "b": 1.0}, heartbeat_s=0.05)
        with steps.step("a"):
            pass
        with pytest.raises(RuntimeError), steps.step("b"):
            raise RuntimeError("boom")
    pcts = _pcts([r.getMessage() for r in caplog.records], "stage")
    assert pcts == [50] and steps._beat is None  # the heartbeat thread stopped with the step
    # a caller that began a step and failed outside step() closes the stage: no thread lingers
    import threading

    steps = StepProgress("stage2", {"a": 1.0}, heartbeat_s=0.05)
    steps.begin("a")
    steps.close()
    assert not any(t.name == "stage2 heartbeat" for t in threading.enumerate())


def test_preprocess_reports_progress_by_weighted_steps(monkeypatch, caplog, small_counts_path, tmp_path):
    from garage.preprocess import STEP_WEIGHTS, PreprocessConfig, run_preprocess

    _log_mode(monkeypatch)
    with caplog.at_level(logging.INFO, logger="garage"):
        run_preprocess(small_counts_path, tmp_path, "p", PreprocessConfig(label_key="cell_type", seed=0))
    pcts = _pcts([r.getMessage() for r in caplog.records], "preprocess")
    assert pcts == sorted(pcts) and pcts[-1] == 100 and pcts.count(100) == 1
    # the kNN search carries the largest share of the measured time: the bar passes 40 % only with it
    before_knn = 100 * sum(v for k, v in STEP_WEIGHTS.items() if k in ("read", "validate", "qc", "hvg",
                                                                      "copy", "pca")) \
        / sum(v for k, v in STEP_WEIGHTS.items() if k != "leiden")
    assert before_knn < 40 and any(p < 40 for p in pcts)


def test_evaluate_reports_progress_by_weighted_steps(monkeypatch, caplog, preprocessed_small, tmp_path):
    import anndata as ad

    from garage import constants as C
    from garage.evaluate import EvaluateConfig, run_evaluate

    real = ad.read_h5ad(preprocessed_small)
    tr = real[real.obs[C.OBS_SPLIT].astype(str) == C.SPLIT_TRAIN]
    syn = ad.AnnData(X=tr.layers[C.LAYER_COUNTS].copy(), var=tr.var[[]].copy())
    syn.obs[C.OBS_CELL_TYPE] = tr.obs[C.OBS_LABEL].astype(str).to_numpy()
    syn.obs_names = [f"s{i}" for i in range(syn.n_obs)]
    syn_path = tmp_path / "syn.h5ad"
    syn.write_h5ad(syn_path)
    _log_mode(monkeypatch)
    with caplog.at_level(logging.INFO, logger="garage"):
        run_evaluate(preprocessed_small, syn_path, tmp_path / "ev", "e",
                     EvaluateConfig(n_repeats=2, plots=False, per_type_max_cells=100))
    pcts = _pcts([r.getMessage() for r in caplog.records], "evaluate")
    assert pcts == sorted(pcts) and pcts[-1] == 100 and pcts.count(100) == 1 and len(pcts) >= 3


def test_preprocess_that_fails_closes_its_progress(monkeypatch):
    """A bad matrix fails inside the stage: its progress is closed (no bar or heartbeat left open)
    and never finished (no 100 % line)."""
    import anndata as ad
    import numpy as np

    from garage._utils import StepProgress
    from garage.errors import GarageError
    from garage.preprocess import PreprocessConfig, preprocess_adata

    calls = []
    monkeypatch.setattr(StepProgress, "close", lambda self: calls.append("close"))
    monkeypatch.setattr(StepProgress, "finish", lambda self: calls.append("finish"))
    bad = ad.AnnData(np.full((30, 20), 0.5, dtype=np.float32))  # not counts
    bad.obs["cell_type"] = ["a"] * 30
    with pytest.raises(GarageError):
        preprocess_adata(bad, PreprocessConfig(label_key="cell_type", seed=0))
    assert calls == ["close"]
