"""Progress on a non-terminal stderr (a pipeline task's log): lines with an ETA, not bars."""

from __future__ import annotations

import io
import logging

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
