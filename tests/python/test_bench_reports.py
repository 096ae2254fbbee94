"""Benchmark bookkeeping that the committed tables rest on: the seed-ablation table of
bench.fidelity and the partial reruns of bench.bench_scale (no training here)."""

from __future__ import annotations

import json
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench import bench_scale, fidelity  # noqa: E402


def _row(tmp_path, method, seed, rare_c2st, agreement):
    pt = tmp_path / f"{method}_{seed}.tsv"
    pd.DataFrame({"cell_type": ["A", "R1", "R2"], "is_rare": ["false", "true", "true"],
                  "c2st": [0.9, rare_c2st, np.nan], "c2st_control": [0.5, 0.45, np.nan]}).to_csv(pt, sep="\t",
                                                                                               index=False)
    metric = {"value": agreement, "control": 0.8}
    return {"dataset": "d", "method": method, "seed": seed, "status": "ok", "per_type": str(pt),
            "metrics": {"c2st_auc": {"value": 0.6, "control": 0.5}, "rare_agreement": metric,
                        "tstr_rare_f1": metric, "rare_dcr_ratio": {"value": 1.0, "control": 1.0},
                        "rare_spread_ratio": {"value": 0.9, "control": 1.0}}}


def test_seed_ablation_table_uses_rare_types_only(tmp_path):
    rows = [_row(tmp_path, "garage", s, 0.6 + 0.02 * s, 0.9) for s in range(3)]
    rows += [_row(tmp_path, "garage_random", s, 0.7, 0.7) for s in range(2)]
    summary = fidelity.summarise(rows)
    by = {r["method"]: r for _, r in summary.iterrows()}
    # the mean over rare types ignores the common type (0.9) and the rare type without a value
    assert np.isclose(by["garage"]["rare_c2st"], 0.62)
    assert np.isclose(by["real (control)"]["rare_c2st"], 0.45)
    assert by["garage_random"]["n_seeds"] == 2 and np.isclose(by["garage_random"]["rare_agreement"], 0.7)

    def cell(r, k):
        return "" if not np.isfinite(r[k]) else f"{r[k]:.3f}"

    lines = fidelity._seed_ablation(summary, cell)
    table = [ln for ln in lines if ln.startswith("| d |")]
    assert [ln.split(" | ")[1] for ln in table] == ["real (control)", "garage", "garage_random"]
    assert "0.620" in table[1] and "0.700" in table[2]


def test_seed_ablation_table_absent_without_an_ablation(tmp_path):
    summary = fidelity.summarise([_row(tmp_path, "garage", 0, 0.6, 0.9)])
    assert fidelity._seed_ablation(summary, lambda r, k: "") == []


def test_targets_read_the_named_default_rows(tmp_path):
    """--targets-for: the issue-13 pass/fail lines judge the named method's rows, not 'garage',
    and the control row comes from that method's evaluations only."""
    rows = [_row(tmp_path, "garage", 0, 0.6, 0.9), _row(tmp_path, "garage@new", 0, 0.6, 0.5)]
    rows[1]["metrics"]["c2st_auc"]["control"] = 0.47  # tell the two evaluations' controls apart
    summary = fidelity.summarise(rows)
    old, new = fidelity.targets(summary), fidelity.targets(summary, "garage@new")
    assert "- d: rare agreement >= control - 0.05: PASS (0.900 vs 0.800)" in old
    assert "- d: rare agreement >= control - 0.05: FAIL (0.500 vs 0.800)" in new
    assert fidelity.targets(summary, "garage@absent") == []
    mixed = fidelity.summarise(rows, control_from="garage@new")
    control = mixed[mixed["method"] == "real (control)"]
    assert len(control) == 1 and control["n_seeds"].item() == 1
    assert np.isclose(control["c2st_auc"].item(), 0.47)
    assert "real (control)" not in set(fidelity.summarise(rows[1:])["method"])

@pytest.fixture
def scale_sandbox(tmp_path, monkeypatch):
    """bench_scale writing under tmp_path, with no input resampling and no plot."""
    monkeypatch.setattr(bench_scale, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(bench_scale, "WORK", tmp_path / "work")
    monkeypatch.setattr(bench_scale, "_n_genes", lambda counts: 5)
    monkeypatch.setattr(bench_scale, "write_resampled", lambda src, n, out: Path(out).write_text("x"))
    monkeypatch.setattr(bench_scale, "_plot", lambda *a, **k: None)


def test_join_adds_only_the_named_methods_in_the_tables_dataset_order(tmp_path, monkeypatch):
    """--join CSV=METHODS: the peers' rows of an earlier table join the new rows, per dataset in
    the new table's order; other methods and datasets of the CSV stay out, and the report names the
    source; a method the CSV lacks is refused."""
    new = pd.DataFrame({"dataset": ["b", "b", "a"], "method": ["garage@x", "real (control)", "garage@x"],
                        "c2st_gap": [0.01, 0.0, 0.02]})
    old = pd.DataFrame({"dataset": ["a", "b", "b", "c"], "method": ["scvi", "scvi", "garage@old", "scvi"],
                        "c2st_gap": [0.05, 0.06, 0.09, 0.07]})
    csv = tmp_path / "fidelity_test_old.csv"
    old.to_csv(csv, index=False)
    both, note = fidelity.join_rows(new, f"{csv}=scvi", "test")
    assert list(zip(both["dataset"], both["method"])) == [
        ("b", "garage@x"), ("b", "real (control)"), ("b", "scvi"), ("a", "garage@x"), ("a", "scvi")]
    assert np.isclose(both.loc[(both["dataset"] == "a") & (both["method"] == "scvi"), "c2st_gap"].item(), 0.05)
    assert str(csv) in note and "none there" not in note
    assert (both.loc[both["method"] == "scvi", "source"] == str(csv)).all()
    assert both.loc[both["method"] == "garage@x", "source"].isna().all()
    # a method the CSV has for one dataset only is named; one it lacks, another split's table and
    # a method already in the table are refused
    _, note = fidelity.join_rows(new, f"{csv}=scvi,garage@old", "test")
    assert "none there for garage@old on a" in note
    with pytest.raises(SystemExit, match="no rows of"):
        fidelity.join_rows(new, f"{csv}=knn_interp", "test")
    with pytest.raises(SystemExit, match="not a table of the val split"):
        fidelity.join_rows(new, f"{csv}=scvi", "val")
    with pytest.raises(SystemExit, match="already in this table"):
        fidelity.join_rows(new, f"{csv}=garage@x", "test")
    # the report says where joined rows came from
    summary = fidelity.summarise([_row(tmp_path, "garage", 0, 0.6, 0.9)])
    pd.DataFrame({"dataset": ["d"], "method": ["scvi"], "n_seeds": [3], "c2st_gap": [0.07]}).to_csv(csv, index=False)
    joined, note = fidelity.join_rows(summary, f"{csv}=scvi", "test")
    monkeypatch.setattr(fidelity, "RESULTS", tmp_path)
    text = fidelity.write_report(joined, "test", "cmd", "t", "garage", [note]).read_text()
    assert f"rows of scvi: from `{csv}`" in text and "| scvi |" in text
    # rows scored by another evaluation (or by one the CSV does not name) are marked in the note;
    # rows of the same evaluation are not
    assert "not shown to be scored by the same evaluation" in note and "there: none" in note
    summary["eval"] = "tree1"
    for other, flagged in (("tree1", False), ("tree0", True)):
        pd.DataFrame({"dataset": ["d"], "method": ["scvi"], "n_seeds": [3], "c2st_gap": [0.07],
                      "eval": [other]}).to_csv(csv, index=False)
        assert ("same evaluation" in fidelity.join_rows(summary, f"{csv}=scvi", "test")[1]) == flagged


def test_variant_options_become_cli_flags():
    """A variant's JSON options as `garage gan` flags: booleans as --x / --no-x, except options that
    became on/off choices (critic_path: true -> --critic-path on), so the notes' commands still run."""
    assert fidelity._opt_args({"critic_path": True, "seed_residual": False, "seed_mix": 0.8}) == [
        "--critic-path", "on", "--no-seed-residual", "--seed-mix", "0.8"]
    assert fidelity._opt_args({"critic_path": "off"}) == ["--critic-path", "off"]

def test_scale_rerun_replaces_only_the_rows_it_measures(tmp_path, monkeypatch, scale_sandbox):
    calls = []

    def fake_measure(cmd, **kw):
        calls.append(cmd)
        if "--_scvi" in cmd:  # the scVI child writes its JSON
            Path(cmd[cmd.index("--_out") + 1]).write_text(json.dumps({"train_s": 7.0, "epochs": 3,
                                                                       "train_cells": 4}))
        else:
            pp = tmp_path / "work" / "scale" / "s100" / "s100.preprocessed.h5ad"
            pp.parent.mkdir(parents=True, exist_ok=True)
            pp.write_text("x")
        return {"status": "ok", "wall_s": 1.0, "cpu_s": 1.0, "peak_mb": 10.0}

    monkeypatch.setattr(bench_scale, "measure", fake_measure)

    def args(**kw):
        base = dict(sizes=[100], stages=list(bench_scale.STAGES), skip_scvi=True, device="cpu", threads=None,
                    seed=0, mem_cap_gb=None, timeout_min=None, extra={}, merge=True, note="", name="t",
                    command="c")
        return Namespace(**{**base, **kw})

    bench_scale.run(args())  # GARAGE stages only
    rows = bench_scale.run(args(stages=[], skip_scvi=False))  # then scVI alone
    stages = sorted(r["stage"] for r in rows)
    assert stages == sorted([*bench_scale.STAGES, "scvi_train"])  # the stage rows survived the scVI rerun
    assert sum("--_scvi" in c for c in calls) == 1 and len(calls) == len(bench_scale.STAGES) + 1
    rows = bench_scale.run(args(stages=["gan"]))  # a rerun of one stage replaces that row only
    assert sorted(r["stage"] for r in rows) == stages
    assert all(r.get("commit") and r.get("measured") and r.get("run") == "c" for r in rows)
    md = (tmp_path / "results" / "t.md").read_text()
    assert "| commit | measured |" in md and "5 genes" in md


def test_scale_interrupted_rerun_keeps_the_old_rows(tmp_path, monkeypatch, scale_sandbox):
    """A rerun that dies in its second stage replaces only the row it measured; the old rows of
    the later stages stay (they used to be dropped at the start of the rerun)."""
    monkeypatch.setattr(bench_scale, "measure",
                        lambda cmd, **kw: {"status": "ok", "wall_s": 1.0, "cpu_s": 1.0, "peak_mb": 10.0})
    args = Namespace(sizes=[100], stages=list(bench_scale.STAGES), skip_scvi=True, device="cpu", threads=None,
                     seed=0, mem_cap_gb=None, timeout_min=None, extra={}, merge=True, note="", name="t",
                     command="first")
    bench_scale.run(args)

    def dies_in_gat(cmd, **kw):
        if "gat" in cmd:
            raise KeyboardInterrupt
        return {"status": "ok", "wall_s": 2.0, "cpu_s": 2.0, "peak_mb": 20.0}

    monkeypatch.setattr(bench_scale, "measure", dies_in_gat)
    args.command = "second"
    with pytest.raises(KeyboardInterrupt):
        bench_scale.run(args)
    rows = json.loads((tmp_path / "results" / "t.json").read_text())["rows"]
    by = {r["stage"]: r for r in rows}
    assert sorted(by) == sorted(bench_scale.STAGES)
    assert by["preprocess"]["run"] == "second" and by["preprocess"]["wall_s"] == 2.0
    assert all(by[s]["run"] == "first" for s in ("gat", "gan", "evaluate"))


def test_scale_row_records_the_commit_that_ran(tmp_path, monkeypatch, scale_sandbox):
    """A commit landing while a stage runs must not be credited with that stage's row."""
    head = ["aaa"]
    monkeypatch.setattr(bench_scale, "git_commit", lambda: head[0])

    def measure(cmd, **kw):
        head[0] = "bbb"  # a commit lands during the stage
        return {"status": "ok", "wall_s": 1.0, "cpu_s": 1.0, "peak_mb": 10.0}

    monkeypatch.setattr(bench_scale, "measure", measure)
    args = Namespace(sizes=[100], stages=["preprocess"], skip_scvi=True, device="cpu", threads=None,
                     seed=0, mem_cap_gb=None, timeout_min=None, extra={}, merge=False, note="", name="t",
                     command="c")
    rows = bench_scale.run(args)
    assert rows[0]["commit"] == "aaa"


def test_old_commit_method_runs_that_commits_stages(tmp_path, monkeypatch):
    """garage#REV: GAT and GAN run from REV's own src/ (git archive), the cache is keyed on REV."""
    import subprocess

    monkeypatch.setattr(fidelity, "WORK", tmp_path / "work")
    monkeypatch.setattr(fidelity, "FID", tmp_path / "fid")
    monkeypatch.setattr(fidelity, "prepare", lambda name, split: tmp_path / "pp.h5ad")
    calls = []

    def fake_measure(cmd, env=None, **kw):
        calls.append((cmd, env))
        return {"rc": 1, "wall_s": 0.0, "peak_mb": 0}

    monkeypatch.setattr(fidelity, "measure", fake_measure)
    row = fidelity.run_one("d", "test", "garage#HEAD", 0, {}, None)
    sha = subprocess.run(["git", "-C", str(fidelity.REPO), "rev-parse", "HEAD"], capture_output=True,
                         text=True, check=True).stdout.strip()
    src = tmp_path / "work" / "trees" / sha[:12] / "src"
    # the extracted tree is that commit's src/, byte for byte
    shown = subprocess.run(["git", "-C", str(fidelity.REPO), "show", f"{sha}:src/garage/__init__.py"],
                           capture_output=True, check=True).stdout
    assert (src / "garage" / "__init__.py").read_bytes() == shown
    cmd, env = calls[0]
    assert "gat" in cmd and env["PYTHONPATH"] == str(src)
    assert row["status"] == "gat failed" and (tmp_path / "fid" / "d" / "test" / "garage_rev_HEAD_s0").is_dir()
    # the current code's rows are keyed differently (no cached row is mixed up with the old commit's)
    calls.clear()
    other = fidelity.run_one("d", "test", "garage", 0, {}, None)
    assert calls[0][1] is None and other["key"] != row["key"]
    with pytest.raises(SystemExit, match="not a commit"):
        fidelity.run_one("d", "test", "garage#no-such-rev", 0, {}, None)


def test_a_row_scored_by_another_evaluation_is_scored_again_not_retrained(tmp_path, monkeypatch, capsys):
    """The row key names the training; the row's "eval" the evaluation code. A cached row of the same
    training scored by another evaluation (or by none recorded: rows from before round 20) is scored
    again from its own synthetic file without training; --report-only never returns it as current;
    --code-rev reports that commit's rows as they were scored."""
    monkeypatch.setattr(fidelity, "WORK", tmp_path / "work")
    monkeypatch.setattr(fidelity, "FID", tmp_path / "fid")
    monkeypatch.setattr(fidelity, "prepare", lambda name, split: tmp_path / "pp.h5ad")
    assert fidelity._eval_version().split(":")[0]  # a tree id of src/garage/evaluate
    calls = []

    def fake_measure(cmd, env=None, **kw):
        cmd = [str(c) for c in cmd]
        calls.append(cmd)
        if "evaluate" in cmd:
            outdir = Path(cmd[cmd.index("--outdir") + 1])
            outdir.mkdir(parents=True, exist_ok=True)
            (outdir / "eval.garage_metrics.json").write_text(json.dumps(
                {"metrics": {"c2st_auc": {"value": 0.6 if "scored-again" in fidelity._eval_version() else 0.7}}}))
        else:  # training: a synthetic file appears
            out = Path(cmd[cmd.index("--_out") + 1])
            (out / "x.synthetic.h5ad").write_text("")
        return {"rc": 0, "wall_s": 1.0, "peak_mb": 1}

    monkeypatch.setattr(fidelity, "measure", fake_measure)
    row = fidelity.run_one("d", "val", "scvi", 0, {}, None)
    assert row["eval"] == fidelity._eval_version() and row["metrics"]["c2st_auc"]["value"] == 0.7
    assert len(calls) == 2 and "evaluate" in calls[1]
    calls.clear()
    assert fidelity.run_one("d", "val", "scvi", 0, {}, None) == row and not calls  # cached as is
    monkeypatch.setattr(fidelity, "_eval_version", lambda: "scored-again")
    assert fidelity.run_one("d", "val", "scvi", 0, {}, None, report_only=True) is None
    monkeypatch.setattr(fidelity, "CODE_REV", "HEAD")
    assert fidelity.run_one("d", "val", "scvi", 0, {}, None, report_only=True)["eval"] == row["eval"]
    monkeypatch.setattr(fidelity, "CODE_REV", None)
    again = fidelity.run_one("d", "val", "scvi", 0, {}, None)
    assert len(calls) == 1 and "evaluate" in calls[0]  # no training
    assert again["key"] == row["key"] and again["eval"] == "scored-again"
    assert again["metrics"]["c2st_auc"]["value"] == 0.6 and again["train_s"] == row["train_s"]
    # a failed run is reported as failed, and trained again on the next run (not reused)
    rc = {"train": 1}

    def flaky_measure(cmd, env=None, **kw):
        if "--_train" in [str(c) for c in cmd] and rc["train"]:
            calls.append(["train failed"])
            return {"rc": rc["train"], "wall_s": 1.0, "peak_mb": 1}
        return fake_measure(cmd, env, **kw)

    monkeypatch.setattr(fidelity, "measure", flaky_measure)
    calls.clear()
    assert fidelity.run_one("d", "val", "scvi", 1, {}, None)["status"] == "train failed"
    assert fidelity.run_one("d", "val", "scvi", 1, {}, None, report_only=True)["status"] == "train failed"
    rc["train"] = 0
    fixed = fidelity.run_one("d", "val", "scvi", 1, {}, None)
    assert fixed["status"] == "ok" and fixed["metrics"]["c2st_auc"]["value"] == 0.6
    assert "trained again (its last run: train failed)" in capsys.readouterr().out


def test_pair_matches_runs_by_dataset_split_and_seed(tmp_path, monkeypatch, capsys):
    """bench.pair: each variant run is compared with the reference run of the same dataset, split and
    seed (its row.json may sit one folder up), never with another seed's; a variant run without a
    reference is named and left out; a glob that matches one run twice is refused."""
    import json

    from bench import _common, pair

    def run(folder, ds, seed, auc, mia, nested=False):
        base = tmp_path / folder
        ev = (base / "uncalibrated" if nested else base) / "evaluate"
        ev.mkdir(parents=True)
        (base / "row.json").write_text(json.dumps({"status": "ok", "dataset": ds, "split": "val", "seed": seed}))
        m = {"c2st_auc": {"value": auc, "control": 0.5}, "mia_auc": {"value": mia}}
        (ev / "eval.garage_metrics.json").write_text(json.dumps({"metrics": m}))

    run("ref/a_s0", "a", 0, 0.60, 0.52, nested=True)
    run("ref2/a_s1", "a", 1, 0.70, 0.53)  # a second reference glob
    run("var/a_s0", "a", 0, 0.55, 0.54)
    run("var/a_s1", "a", 1, 0.72, 0.50)
    run("var/b_s0", "b", 0, 0.50, 0.50)
    (tmp_path / "var/c_s0").mkdir()  # unfinished: named, left out
    monkeypatch.setattr(_common, "RESULTS", tmp_path / "results")
    assert pair.main(["--runs", str(tmp_path / "var/*"), "--reference", str(tmp_path / "ref/*/uncalibrated"),
                      "--reference", str(tmp_path / "ref2/*"), "--tag", "t"]) == 0
    df = pd.read_csv(tmp_path / "results" / "pair_t.csv").sort_values("seed")
    assert df["c2st_gap_ref"].round(3).tolist() == [0.1, 0.2]
    assert df["c2st_gap_var"].round(3).tolist() == [0.05, 0.22]
    md = (tmp_path / "results" / "pair_t.md").read_text()
    assert "b val s0" in md and "c_s0: no row.json" in md and "C2ST gap lower with the variant in 1" in md and "mean difference -0.0150" in md and "0.150 / 0.135 (-0.015, -0.050 to +0.020)" in md
    # bench.fidelity's one-seed tables stand in for run folders that are gone; the .md gives split and seed
    header = "dataset,method,n_seeds,c2st_gap,mia_auc,rare_agreement\n"
    for name, seed, gap in (("ref_s0", 0, 0.10), ("var_s0", 0, 0.04), ("var_s1", 1, 0.2), ("two", 0, 0.3)):
        (tmp_path / "tab").mkdir(exist_ok=True)
        (tmp_path / "tab" / f"{name}.csv").write_text(header + f"a,garage@x,1,{gap},0.5,\na,real (control),1,0.0,0.5,0.9\n")
        seeds = "0,1" if name == "two" else str(seed)
        (tmp_path / "tab" / f"{name}.md").write_text(f"# t\n\nCommand: `python -m bench.fidelity --split val --seeds {seeds}`\n")
    assert pair.main(["--runs", str(tmp_path / "tab/[vt]*.csv"), "--reference", str(tmp_path / "tab/ref_*.csv"),
                      "--tag", "tab"]) == 0
    df = pd.read_csv(tmp_path / "results" / "pair_tab.csv")
    assert df["c2st_gap_var"].round(3).tolist() == [0.04] and df["c2st_gap_ref"].round(3).tolist() == [0.1]
    md = (tmp_path / "results" / "pair_tab.md").read_text()
    assert "two.csv: not a one-seed" in md and "a val s1" in md and "0.100 / 0.040 (-0.060)" in md
    assert "| a | val | 0 | 0.100 / 0.040 (-0.060) | 0.500 / 0.500 (+0.000) | – |" in md  # blank: a dash
    (tmp_path / "tab" / "lost.csv").write_text(header + "a,garage@x,1,0.1,0.5,\n")  # no .md beside it
    (tmp_path / "tab" / "mean.csv").write_text(header + "a,garage@x,3,0.1,0.5,\n")  # a mean over 3 seeds
    (tmp_path / "tab" / "mean.md").write_text("Command: `python -m bench.fidelity --split val --seeds 0`\n")
    assert pair.main(["--runs", str(tmp_path / "tab/[lmv]*.csv"), "--reference", str(tmp_path / "tab/ref_*.csv"),
                      "--tag", "tab"]) == 0
    md = (tmp_path / "results" / "pair_tab.md").read_text()
    assert "lost.csv: no lost.md beside it" in md and "mean.csv: expected one method row over one seed" in md
    # a table of two methods (bench.fidelity --methods garage,scvi): GLOB::METHOD picks each side's row
    (tmp_path / "both").mkdir()
    for seed, g, v in ((0, 0.05, 0.08), (1, 0.09, 0.07)):
        (tmp_path / "both" / f"s{seed}.csv").write_text(header + f"a,garage,1,{g},0.5,\na,scvi,1,{v},0.6,\n"
                                                          "a,real (control),1,0.0,0.5,0.9\n")
        (tmp_path / "both" / f"s{seed}.md").write_text(f"Command: `python -m bench.fidelity --seeds {seed}`\n")
    both = str(tmp_path / "both/*.csv")
    assert pair.main(["--runs", both + "::garage", "--reference", both + "::scvi", "--tag", "both"]) == 0
    df = pd.read_csv(tmp_path / "results" / "pair_both.csv").sort_values("seed")
    assert df["c2st_gap_var"].round(3).tolist() == [0.05, 0.09] and df["c2st_gap_ref"].round(3).tolist() == [0.08, 0.07]
    assert df["mia_auc_ref"].round(3).tolist() == [0.6, 0.6]
    assert pair.main(["--runs", both, "--reference", both + "::scvi", "--tag", "both"]) == 1  # no row named: none pair
    assert "s0.csv: expected one method row (name one with GLOB::METHOD)" in capsys.readouterr().err
    assert pair.main(["--runs", both + "::scvi", "--reference", both + "::nope", "--tag", "both"]) == 1
    assert "of method 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="names no method"):
        pair.main(["--runs", both + "::", "--reference", both + "::scvi", "--tag", "both"])
    run("dup/x", "a", 0, 0.6, 0.5)
    run("dup/y", "a", 0, 0.6, 0.5)
    with pytest.raises(SystemExit, match="match two runs"):
        pair.main(["--runs", str(tmp_path / "dup/*"), "--reference", str(tmp_path / "ref/*/uncalibrated"),
                   "--tag", "t"])


def test_machine_records_the_thread_setting(monkeypatch):
    """Every bench table's Machine line names OMP_NUM_THREADS: the thread count changes a run's
    float summation order (and, oversubscribed, its speed), so a table must say which it ran at."""
    from bench._common import machine

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert machine()["omp_num_threads"] == "1"
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert machine()["omp_num_threads"] == "unset"


def test_per_type_read_averages_seeds_and_keeps_types_with_enough_holdout_cells(tmp_path):
    """bench.per_type_read: per type, the mean over the seeds' C2ST and spread ÷ control of each method,
    types with < 20 holdout cells left out, and a clear stop when the GARAGE or scVI runs are missing."""
    from bench import per_type_read

    def write(method, seed, c2st, spread):
        d = tmp_path / "ds" / "val" / f"{method}_s{seed}" / "evaluate"
        d.mkdir(parents=True)
        pd.DataFrame({"cell_type": ["big", "mid", "tiny"], "n_real_holdout": [100, 40, 5],
                      "c2st_control": [0.5, 0.5, 0.5], "c2st": c2st, "spread_ratio": spread,
                      "spread_ratio_control": [1.0, 1.0, 0.5]}).to_csv(d / "eval.per_type.tsv", sep="\t", index=False)

    write("garage", 1, [0.60, 0.70, 0.9], [0.9, 1.0, 1.0])
    write("garage", 2, [0.64, 0.50, 0.9], [1.1, 0.8, 1.0])
    write("scvi", 1, [0.55, 0.52, 0.5], [1.0, 1.2, 1.0])
    table = per_type_read.parse_table("ds:val:1,2:garage")
    assert table == ("ds", "val", [1, 2], "garage", [])
    k, n, _, c2st, spread = per_type_read.per_type("ds", "val", "garage", [1, 2], tmp_path)
    assert k == 2 and c2st["big"] == pytest.approx(0.62) and spread["mid"] == pytest.approx(0.9)
    text = "\n".join(per_type_read.report([table], tmp_path))
    assert "big" in text and "mid" in text and "tiny" not in text
    assert "garage (2)" in text and "scvi (1)" in text
    with pytest.raises(SystemExit, match="no garage_pk2 or no scvi"):
        per_type_read.report([("ds", "val", [1, 2], "garage_pk2", [])], tmp_path)
    with pytest.raises(SystemExit, match="is not DATASET:SPLIT:SEEDS:GARAGE"):
        per_type_read.parse_table("ds:val")


def test_pair_interval_pools_pair_tables_and_refuses_overlap(tmp_path, capsys):
    """bench.pair_interval: the mean paired difference (variant − reference) with its 95 % Student-t
    interval, pooled over tables; a run that two tables both hold is refused, not counted twice."""
    from bench import pair_interval

    def table(name, seeds, ref, var):
        pd.DataFrame({"dataset": "a", "split": "val", "seed": seeds, "c2st_gap_ref": ref,
                      "c2st_gap_var": var}).to_csv(tmp_path / name, index=False)

    table("one.csv", [1, 2], [0.10, 0.10], [0.08, 0.11])
    table("two.csv", [3], [0.10], [0.07])
    assert pair_interval.main([str(tmp_path / "one.csv"), str(tmp_path / "two.csv")]) == 0
    out = capsys.readouterr().out
    # differences -0.02, +0.01, -0.03: mean -0.0133, sd 0.02082, t(0.975, 2) = 4.3027 -> half-width 0.0517
    assert "3 paired runs from 2 table(s)" in out
    assert ("c2st_gap: 3 runs, mean -0.0133 [95 % t -0.0650, +0.0384], with the variant lower in 2, equal in 0, "
            "higher in 1") in out
    assert "one.csv: no readable .md beside it: methods not named" in out
    m, lo, hi = pair_interval.interval(np.array([0.5]))
    assert m == 0.5 and np.isnan(lo) and np.isnan(hi)
    table("dup.csv", [2], [0.1], [0.1])
    assert pair_interval.main([str(tmp_path / "one.csv"), str(tmp_path / "dup.csv")]) == 2
    assert "a val s2 appears twice" in capsys.readouterr().err
    # not a pair table, empty, missing: one line each, exit 2
    pd.DataFrame({"dataset": ["a"], "method": ["garage"], "c2st_gap": [0.1]}).to_csv(tmp_path / "fid.csv", index=False)
    (tmp_path / "empty.csv").write_text("")
    for bad, why in (("fid.csv", "not a bench.pair table (no split, seed column)"),
                     ("empty.csv", "cannot read a bench.pair table"), ("nope.csv", "cannot read a bench.pair table")):
        assert pair_interval.main([str(tmp_path / bad)]) == 2
        err = capsys.readouterr().err
        assert why in err and len(err.strip().splitlines()) == 1


def test_holdout_size_cuts_only_the_holdout():
    """bench.holdout_size: a cut keeps every train cell and exactly N holdout cells, drawn by the cut's
    seed (another seed, another draw); N above the holdout's size is refused."""
    import anndata as ad

    from bench.holdout_size import cut_holdout
    from garage import constants as C

    split = np.array([C.SPLIT_TRAIN] * 30 + [C.SPLIT_HOLDOUT] * 20)
    real = ad.AnnData(np.zeros((50, 3), dtype=np.float32))
    real.obs[C.OBS_SPLIT] = pd.Categorical(split)
    a, b, again = cut_holdout(real, 7, 100), cut_holdout(real, 7, 101), cut_holdout(real, 7, 100)
    for cut in (a, b):
        s = cut.obs[C.OBS_SPLIT].astype(str)
        assert (s == C.SPLIT_TRAIN).sum() == 30 and (s == C.SPLIT_HOLDOUT).sum() == 7
    assert list(a.obs_names) == list(again.obs_names) and list(a.obs_names) != list(b.obs_names)
    with pytest.raises(SystemExit, match="must be in 1..20"):
        cut_holdout(real, 21, 100)


def test_holdout_size_refuses_bad_options_before_scoring(tmp_path, monkeypatch):
    """--cuts 0 and an --out that cannot be written stop at once, before any run is read or scored."""
    from bench import holdout_size

    monkeypatch.setattr("glob.glob", lambda g: (_ for _ in ()).throw(AssertionError("read runs")))
    with pytest.raises(SystemExit) as e:
        holdout_size.main(["--runs", "x", "--n-holdout", "3", "--cuts", "0", "--out", str(tmp_path / "o.json")])
    assert e.value.code == 2
    (tmp_path / "a_file").write_text("")  # a folder that cannot be made, whoever runs the test
    with pytest.raises(SystemExit, match="bench.holdout_size: cannot create output directory"):
        holdout_size.main(["--runs", "x", "--n-holdout", "3", "--out", str(tmp_path / "a_file" / "o.json")])


def _test_and_val_files():
    """A test-split file (60 train, 20 holdout cells, two types) and its validation re-split (the
    train cells only, 12 of them moved to a validation holdout), as bench.fidelity writes them."""
    import anndata as ad

    from garage import constants as C

    n = 80
    test = ad.AnnData(np.arange(n * 3, dtype=np.float32).reshape(n, 3))
    test.obs_names = [f"c{i}" for i in range(n)]
    test.obs[C.OBS_LABEL] = pd.Categorical(np.where(np.arange(n) % 4 == 0, "rare", "big"))
    test.obs[C.OBS_SPLIT] = pd.Categorical([C.SPLIT_TRAIN] * 60 + [C.SPLIT_HOLDOUT] * 20)
    val = test[:60].copy()
    val.obs[C.OBS_SPLIT] = pd.Categorical([C.SPLIT_TRAIN] * 48 + [C.SPLIT_HOLDOUT] * 12)
    return test, val


def test_holdout_test_mode_keeps_the_validation_train_cells():
    """--holdout test: the validation split's train cells (exactly) against the test holdout (exactly);
    a validation file that is not a re-split of the test file's train cells is refused."""
    from bench.holdout_size import test_holdout_with_val_train
    from garage import constants as C

    test, val = _test_and_val_files()
    out = test_holdout_with_val_train(test, val)
    s = out.obs[C.OBS_SPLIT].astype(str)
    assert list(out.obs_names[s == C.SPLIT_TRAIN]) == [f"c{i}" for i in range(48)]
    assert list(out.obs_names[s == C.SPLIT_HOLDOUT]) == [f"c{i}" for i in range(60, 80)]
    with pytest.raises(SystemExit, match="not a re-split"):
        test_holdout_with_val_train(test, val[:50].copy())


def test_holdout_unseen_mode_draws_only_unseen_cells_per_type():
    """--holdout unseen: the validation train cells kept as train; a holdout of the validation
    holdout's size drawn per type from the cells those train cells leave out (validation and test
    holdouts), never from them; another cut seed, another draw."""
    from bench.holdout_size import unseen_holdout
    from garage import constants as C

    test, val = _test_and_val_files()
    a, b, again = unseen_holdout(test, val, 100), unseen_holdout(test, val, 101), unseen_holdout(test, val, 100)
    train = {f"c{i}" for i in range(48)}
    for cut in (a, b):
        s = cut.obs[C.OBS_SPLIT].astype(str)
        assert set(cut.obs_names[s == C.SPLIT_TRAIN]) == train
        hold = cut.obs_names[s == C.SPLIT_HOLDOUT]
        assert len(hold) == 12 and not set(hold) & train
        lab = cut.obs.loc[hold, C.OBS_LABEL].astype(str)
        assert (lab == "rare").sum() == 3  # per type: 8 of the 32 unseen cells are rare, 12/32 of them
    assert list(a.obs_names) == list(again.obs_names) and list(a.obs_names) != list(b.obs_names)
    # the pool is both holdouts: over a few draws, cells of each are drawn
    drawn = set().union(*(set(unseen_holdout(test, val, 100 + c).obs_names) - train for c in range(5)))
    assert drawn & {f"c{i}" for i in range(48, 60)} and drawn & {f"c{i}" for i in range(60, 80)}


def _toy_test_file(tmp_path, monkeypatch, graph: bool = False):
    """A benchmark dataset "toy" under a temporary bench.fidelity work folder: 100 cells (every
    fifth "rare"), the first 80 train and the last 20 test holdout; with *graph*, a PCA and a
    15-neighbour kNN graph as `garage preprocess` writes them. Returns the AnnData."""
    import anndata as ad

    from bench import fidelity
    from garage import constants as C

    n = 100
    a = ad.AnnData(np.ones((n, 3), dtype=np.float32))
    a.obs_names = [f"c{i}" for i in range(n)]
    a.obs[C.OBS_LABEL] = pd.Categorical(np.where(np.arange(n) % 5 == 0, "rare", "big"))
    a.obs[C.OBS_SPLIT] = pd.Categorical([C.SPLIT_TRAIN] * 80 + [C.SPLIT_HOLDOUT] * 20)
    a.uns[C.UNS_KEY] = {}
    if graph:
        import scanpy as sc

        a.obsm["X_pca"] = np.random.default_rng(0).normal(size=(n, 5)).astype(np.float32)
        sc.pp.neighbors(a, n_neighbors=15, use_rep="X_pca", random_state=0)
    monkeypatch.setattr(fidelity, "FID", tmp_path)
    (tmp_path / "toy").mkdir()
    a.write_h5ad(tmp_path / "toy" / "toy.preprocessed.h5ad")
    return a


def test_validation_folds_redraw_the_holdout_from_train_cells_only(tmp_path, monkeypatch):
    """--split valK: every fold re-splits the test file's train cells only (no test cell, 20 % per
    type held out), each fold with its own seed and so its own holdout; the same fold twice is the
    same split; a name outside the folds is refused; a join never takes another fold's table."""
    import anndata as ad

    from bench import fidelity
    from garage import constants as C

    _toy_test_file(tmp_path, monkeypatch)
    held = {}
    for split in ("val", "val2", "val3"):
        v = ad.read_h5ad(fidelity.prepare("toy", split))
        s = v.obs[C.OBS_SPLIT].astype(str)
        assert set(v.obs_names) == {f"c{i}" for i in range(80)}  # the test holdout never enters
        assert (s == C.SPLIT_HOLDOUT).sum() == 16
        assert (v.obs.loc[s == C.SPLIT_HOLDOUT, C.OBS_LABEL].astype(str) == "rare").sum() == 3  # 20 % of 16
        held[split] = frozenset(v.obs_names[s == C.SPLIT_HOLDOUT])
    assert len(set(held.values())) == 3
    again = ad.read_h5ad(tmp_path / "toy" / "toy.val2.preprocessed.h5ad")
    (tmp_path / "toy" / "toy.val2.preprocessed.h5ad").unlink()
    redo = ad.read_h5ad(fidelity.prepare("toy", "val2"))
    assert list(redo.obs[C.OBS_SPLIT]) == list(again.obs[C.OBS_SPLIT])
    assert fidelity.val_seed("val") == fidelity.VAL_SEED and fidelity.val_seed("val3") == fidelity.VAL_SEED + 2
    for bad in ("val1", "val10", "test"):
        with pytest.raises(SystemExit, match="not a validation split"):
            fidelity.val_seed(bad)
    with pytest.raises(SystemExit, match="not a table of the val split"):
        fidelity.join_rows(pd.DataFrame({"method": ["garage"]}), str(tmp_path / "fidelity_val2_x.csv") + "=scvi", "val")


def test_holdout_halves_keeps_a_stratified_half_of_the_holdout():
    """--holdout halves: every train cell kept; about half of each type's holdout cells (per
    type), drawn by the cut's seed."""
    import anndata as ad

    from bench.holdout_size import half_holdout
    from garage import constants as C

    test, _ = _test_and_val_files()  # holdout: 20 cells, 5 rare and 15 big
    a, b = half_holdout(test, 100), half_holdout(test, 101)
    for cut in (a, b):
        s = cut.obs[C.OBS_SPLIT].astype(str)
        assert (s == C.SPLIT_TRAIN).sum() == 60
        lab = cut.obs.loc[s == C.SPLIT_HOLDOUT, C.OBS_LABEL].astype(str)
        # stratified_split drops round(n / 2) of each type (Python's rounding: 2 of 5, 8 of 15)
        assert (lab == "rare").sum() == 3 and (lab == "big").sum() == 7
    assert list(a.obs_names) != list(b.obs_names)


def test_thinned_split_keeps_the_holdout_and_a_fraction_of_each_type(tmp_path, monkeypatch):
    """--split SPLIT@F: the same holdout cells, the train cells thinned to F per type (the same
    cells every time); a bad F or split is refused by --split's own parser."""
    import argparse

    import anndata as ad

    from bench import fidelity
    from garage import constants as C

    a = _toy_test_file(tmp_path, monkeypatch, graph=True)
    thin = ad.read_h5ad(fidelity.prepare("toy", "test@0.5"))
    # the graph is built again on the kept cells: each keeps its 14 nearest others among them
    # (a subset of the old graph would keep only the old neighbours that survived)
    assert (thin.obsp["distances"] > 0).sum(1).min() == 14
    s = thin.obs[C.OBS_SPLIT].astype(str)
    assert list(thin.obs_names[s == C.SPLIT_HOLDOUT]) == [f"c{i}" for i in range(80, 100)]
    tr = thin.obs.loc[s == C.SPLIT_TRAIN, C.OBS_LABEL].astype(str)
    assert (tr == "rare").sum() == 8 and (tr == "big").sum() == 32 and set(tr.index) < {f"c{i}" for i in range(80)}
    val = ad.read_h5ad(fidelity.prepare("toy", "val"))
    vthin = ad.read_h5ad(fidelity.prepare("toy", "val@0.5"))
    hv = val.obs[C.OBS_SPLIT].astype(str) == C.SPLIT_HOLDOUT
    assert set(vthin.obs_names[vthin.obs[C.OBS_SPLIT].astype(str) == C.SPLIT_HOLDOUT]) == set(val.obs_names[hv])
    assert (vthin.obs[C.OBS_SPLIT].astype(str) == C.SPLIT_TRAIN).sum() == 32
    (tmp_path / "toy" / "toy.test.train0.5.preprocessed.h5ad").unlink()
    assert list(ad.read_h5ad(fidelity.prepare("toy", "test@0.5")).obs_names) == list(thin.obs_names)
    full = ad.read_h5ad(fidelity.prepare("toy", "test@1"))  # every cell, the graph built again
    assert list(full.obs_names) == list(a.obs_names) and (full.obsp["distances"] > 0).sum(1).min() == 14
    for bad in ("val@1.5", "val@0", "val@x", "val@.5", "val@1.0", "train@0.5", "val10"):
        with pytest.raises(argparse.ArgumentTypeError):
            fidelity.split_arg(bad)


def test_holdout_difference_pairs_rows_by_seed_holdout_and_cut(tmp_path, capsys):
    """--difference: VARIANT - REFERENCE gap per seed for each holdout, cut and holdout size where
    both were scored; per holdout kind the mean and spread over cuts of the means over the seeds
    paired in every cut, and the within-holdout seed sd; duplicates, a missing method and wrong
    options are one clear error; outputs without a holdout field are the run's own holdout."""
    from bench import holdout_size

    def row(method, seed, cut, gap, holdout="unseen", n=10):
        return {"dataset": "d", "split": "val", "holdout": holdout, "cut": cut, "seed": seed,
                "method": method, "n_holdout": n, "gap": gap}

    rows = [row("g", 0, 0, 0.10), row("g", 1, 0, 0.12), row("s", 0, 0, 0.08), row("s", 1, 0, 0.08),
            row("g", 0, 1, 0.05), row("s", 0, 1, 0.06), row("g", 1, 1, 0.2),  # seed 1, cut 1: no partner
            row("g", 0, 2, 0.09), row("s", 0, 2, 0.08), row("g", 1, 2, 0.1), row("s", 1, 2, 0.1),
            row("g", 0, 0, 0.3, "own"), row("s", 0, 0, 0.2, "own", n=5)]  # different sizes: no pair
    old = [{k: v for k, v in row(m, 0, 0, gap, n=7).items() if k != "holdout"} for m, gap in (("g", 0.5), ("s", 0.1))]
    (tmp_path / "a.json").write_text(json.dumps({"rows": rows}))
    (tmp_path / "old.json").write_text(json.dumps({"rows": old}))
    src = ["--from", str(tmp_path / "a.json"), "--from", str(tmp_path / "old.json")]
    assert holdout_size.main(["--difference", "g", "s", *src]) == 0
    out = capsys.readouterr().out
    assert "| d | val | unseen | 0 | 10 | +0.0200 | +0.0400 | +0.0300 |" in out
    assert "| d | val | unseen | 1 | 10 | -0.0100 |  | -0.0100 |" in out
    assert "| d | val | own | 0 | 7 | +0.4000 |  | +0.4000 |" in out  # the old file's row
    assert "| d | val | own | 0 | 5 |" not in out and "| d | val | own | 0 | 10 |" not in out
    # seed 1 is not paired in cut 1, so the kind's summary uses seed 0 only: cuts 0, 1, 2 -> .02, -.01, .01
    assert ("d val on unseen: 3 holdout(s), seeds 0: mean of the per-cut means +0.0067, range -0.0100 to "
            "+0.0200, sd over cuts 0.0153 (seeds 1 left out: not paired in every cut)") in out
    both = rows[:4] + rows[4:6] + [row("g", 1, 1, 0.1), row("s", 1, 1, 0.1)] + rows[7:11]
    (tmp_path / "b.json").write_text(json.dumps({"rows": both}))
    assert holdout_size.main(["--difference", "g", "s", "--from", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    # both seeds in every cut: differences (.02, .04), (-.01, 0), (.01, 0); per-cut means .03, -.005,
    # .005; per-cut seed sds 0.0141, 0.0071, 0.0071 -> root mean variance 0.0100
    assert "seeds 0,1: mean of the per-cut means +0.0100" in out and "seed-to-seed sd within one holdout 0.0100" in out
    # each seed over the cuts (.0067, .0133), then a t-interval over the 2 seeds (t 12.71 x .0047 / sqrt 2)
    assert "per seed over the cuts s0 +0.0067, s1 +0.0133, 95 % t over seeds -0.0324 to +0.0524" in out
    with pytest.raises(SystemExit, match="needs rows of both g and x"):
        holdout_size.main(["--difference", "g", "x", *src])
    with pytest.raises(SystemExit, match="the same scoring twice"):
        holdout_size.main(["--difference", "g", "s", *src, "--from", str(tmp_path / "a.json")])
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(SystemExit, match="cannot read rows from"):
        holdout_size.main(["--difference", "g", "s", "--from", str(tmp_path / "bad.json")])
    for bad in (["--difference", "g", "s"], ["--difference", "g", "s", *src, "--out", "x.json"]):
        with pytest.raises(SystemExit) as e:
            holdout_size.main(bad)
        assert e.value.code == 2


def test_holdout_size_refuses_conflicting_cut_options(tmp_path, monkeypatch):
    """--cuts with a whole holdout, --n-holdout with a mode that sizes its own holdout, and a run
    list without --out stop at once, before any run is read."""
    from bench import holdout_size

    monkeypatch.setattr("glob.glob", lambda g: (_ for _ in ()).throw(AssertionError("read runs")))
    out = str(tmp_path / "o.json")
    for bad in (["--runs", "x", "--holdout", "test", "--cuts", "3", "--out", out],
                ["--runs", "x", "--cuts", "2", "--out", out],
                ["--runs", "x", "--holdout", "unseen", "--n-holdout", "5", "--out", out],
                ["--runs", "x"]):
        with pytest.raises(SystemExit) as e:
            holdout_size.main(bad)
        assert e.value.code == 2, bad


def test_split_names_reach_tables_and_reports(tmp_path, monkeypatch):
    """A one-seed table of a thinned or second-fold split keeps that split in bench.pair's key (so
    it never pairs with fold 1's runs), and bench.fidelity's report names the fold and the thinning."""
    from bench import _common, fidelity, pair

    header = "dataset,method,n_seeds,c2st_gap,mia_auc,rare_agreement\n"
    for name, split in (("a", "val@0.5"), ("b", "val2"), ("c", "val")):
        (tmp_path / f"{name}.csv").write_text(header + "d,garage,1,0.1,0.5,\nd,scvi,1,0.2,0.5,\n")
        (tmp_path / f"{name}.md").write_text(f"Command: `python -m bench.fidelity --split {split} --seeds 3`\n")
        key, _, _ = pair._table(tmp_path / f"{name}.csv", "garage")
        assert key == ("d", split, 3)
    monkeypatch.setattr(fidelity, "RESULTS", tmp_path / "results")
    import pandas as pd

    empty = pd.DataFrame({"dataset": [], "method": [], "n_seeds": []})
    monkeypatch.setattr(fidelity, "_overview", lambda *a, **k: [])
    monkeypatch.setattr(fidelity, "_seed_ablation", lambda *a, **k: [])
    monkeypatch.setattr(fidelity, "targets", lambda *a, **k: [])
    for split, title in (("val2@0.5", "validation split (fold 2, re-split seed 1010), train cells thinned to 0.5 per type (seed 2027)"),
                         ("val", "validation split (fold 1, re-split seed 1009)"), ("test", "test split")):
        path = fidelity.write_report(empty, split, "cmd", "t")
        assert path.name == f"fidelity_{split}_t.md" and (path.parent / f"fidelity_{split}_t.csv").exists()
        assert path.read_text().splitlines()[0] == f"# Fidelity on the {title}"


def test_finished_runs_names_what_it_leaves_out(tmp_path):
    """_common.finished_runs: a run folder counts only with status ok and a synthetic file; a failed
    run, one without its synthetic file and one without row.json are each named, not returned."""
    import io

    from bench._common import finished_runs

    def folder(name, status, syn=True, row=True):
        f = tmp_path / name
        f.mkdir()
        if row:
            (f / "row.json").write_text(json.dumps({"status": status, "seed": 0}))
        if syn:
            (f / "x.synthetic.h5ad").write_text("")

    folder("ok_s0", "ok")
    folder("failed_s0", "train failed")
    folder("nosyn_s0", "ok", syn=False)
    folder("norow_s0", "ok", row=False)
    log = io.StringIO()
    runs = finished_runs([str(tmp_path / "*_s0")], log=log)
    assert [f.name for f, _, _ in runs] == ["ok_s0"] and runs[0][2].name == "x.synthetic.h5ad"
    assert all(f"{n}_s0: no finished" in log.getvalue() for n in ("failed", "nosyn", "norow"))


def test_code_rev_only_with_report_only():
    """--code-rev / --any-code pick which cached rows to report: without --report-only they are refused
    (they would otherwise be ignored while new runs train)."""
    from bench import fidelity

    for bad in (["--code-rev", "HEAD"], ["--any-code"]):
        with pytest.raises(SystemExit) as e:
            fidelity.main(["--datasets", "nope", *bad])
        assert e.value.code == 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_measured_command_dies_with_the_benchmark(tmp_path):
    """A benchmark process that is killed takes the command it measures with it (a left-over
    training once kept writing into a run folder that the restarted benchmark was using)."""
    import os
    import subprocess
    import time

    pid_file = tmp_path / "pid"
    child = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    bench_proc = subprocess.Popen([sys.executable, "-c", "import sys; from bench._common import measure; "
                                   f"measure([sys.executable, '-c', {child!r}])"], cwd=Path(__file__).parents[2])
    t0 = time.time()
    while not (pid_file.exists() and pid_file.read_text()) and time.time() - t0 < 30:
        time.sleep(0.1)
    pid = int(pid_file.read_text())

    def alive(p):
        try:
            state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state != "Z"

    try:
        assert alive(pid)
        bench_proc.kill()
        bench_proc.wait()
        t0 = time.time()
        while alive(pid) and time.time() - t0 < 10:
            time.sleep(0.1)
        assert not alive(pid)
    finally:  # a failure leaves nothing running
        bench_proc.kill()
        if alive(pid):
            os.kill(pid, 9)


def test_state_gate_read_lists_split_types_and_how_often_each_was_split(tmp_path, capsys):
    """bench.state_gate_read: per gated run, the types split (fit cells per state, read from the saved
    state counts) and the recorded excess; per type over the runs, how many split it; a clear stop when
    nothing matches."""
    import torch

    from bench import state_gate_read

    def write(seed, counts, excess):
        d = tmp_path / "ds" / "val2" / f"garage_sg_s{seed}"
        d.mkdir(parents=True)
        torch.save({"categories": ["A", "B"], "k_states": 2, "state_counts": torch.tensor(counts).view(4, 1),
                    "state_excess": excess}, d / "garage_sg.generator.pt")

    write(1, [60, 40, 90, 0], {"A": [2, 0.06], "B": [2, 0.01]})
    write(2, [100, 0, 90, 0], {"A": [2, 0.02], "B": [3, -0.01]})
    write(3, [0, 0, 50, 40], {})  # trained before the record existed: its split still counts
    out = tmp_path / "r.md"
    state_gate_read.main(["--runs", str(tmp_path / "ds" / "val2" / "garage_sg_s*"), "--out", str(out)])
    text = out.read_text()
    assert "| ds | 1 | A [60, 40] | A k2 +0.060; B k2 +0.010 |" in text
    assert "| ds | 2 | none | A k2 +0.020; B k3 -0.010 |" in text
    assert "| ds | 3 | B [50, 40] | not recorded |" in text
    assert "| ds | A | 1 / 3 | +0.020, +0.040, +0.060 (2) |" in text
    assert "| ds | B | 1 / 3 | -0.010, +0.000, +0.010 (2) |" in text
    assert text in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no run folder with one generator"):
        state_gate_read.main(["--runs", str(tmp_path / "nothing*")])


def test_latent_interp_probe_moves_each_anchor_towards_a_neighbour_of_its_own_type():
    """bench.latent_interp_probe.interpolate: every code lies on the segment from its anchor to one of the
    anchor's k nearest cells of the same type (never the anchor itself, never another type)."""
    from sklearn.neighbors import NearestNeighbors

    from bench.latent_interp_probe import interpolate

    rng = np.random.default_rng(0)
    codes = np.concatenate([rng.normal(size=(50, 3)), rng.normal(size=(50, 3)) + 20.0])
    types = np.repeat([0, 1], 50)
    anchors = np.concatenate([rng.choice(50, 200), 50 + rng.choice(50, 200)])
    want = np.repeat([0, 1], 200)
    pool = {t: (np.flatnonzero(types == t), NearestNeighbors().fit(codes[types == t]), want == t) for t in (0, 1)}
    k = 3
    out = interpolate(codes, anchors, pool, k, np.random.default_rng(1))
    for i, a in enumerate(anchors):
        rows = np.flatnonzero(types == types[a])
        d = np.linalg.norm(codes[rows] - codes[a], axis=1)
        near = rows[np.argsort(d)[1:k + 1]]  # the anchor's k nearest of its type, itself excluded
        step = out[i] - codes[a]
        hit = False
        for j in near:  # out = anchor + lam * (neighbour - anchor) for one neighbour, 0 <= lam <= 1
            lam = step @ (codes[j] - codes[a]) / np.sum((codes[j] - codes[a]) ** 2)
            hit |= bool(-1e-9 <= lam <= 1 + 1e-9 and np.allclose(codes[a] + lam * (codes[j] - codes[a]), out[i]))
        assert hit, i
    assert (out[:200, 0] < 10).all() and (out[200:, 0] > 10).all()  # no code left its type's cluster
    assert (np.linalg.norm(out - codes[anchors], axis=1) > 1e-6).mean() > 0.9  # the codes did move
    # a type left out of the pool (too few fit cells): its anchors stay where they are
    solo = interpolate(codes, anchors, {0: pool[0]}, k, np.random.default_rng(1))
    assert np.array_equal(solo[200:], codes[anchors[200:]])


def test_library_probe_samplers_keep_the_model_mean_and_change_only_the_residual():
    """bench.library_probe.make_sampler: ``model`` is the shipped sampler; ``shape`` keeps each group's
    mean, code shift and scale and takes the residual's shape from the group's train sizes (a
    skewed group stays skewed); ``marginal`` draws the group's own sizes; a group under min_cells
    keeps the Gaussian; generation's own random stream is left as the shipped sampler leaves it."""
    import torch
    from scipy.stats import skew

    from bench.library_probe import make_sampler
    from garage.gan._train import sample_library_conditional

    rng = np.random.default_rng(0)
    skewed = np.log(rng.gamma(1.5, 2.0, 4000)) + 6.0  # log of a gamma: left-skewed
    tiny = rng.normal(5.0, 0.3, 10)
    pools = [skewed, tiny]
    params = torch.tensor([[skewed.mean(), skewed.std()], [5.0, 0.3]], dtype=torch.float64)
    n = 20000
    groups = torch.tensor([0] * n + [1] * n)
    codes = torch.zeros(2 * n, 2, dtype=torch.float64)
    codes[:, 0] = torch.linspace(-1, 1, 2 * n, dtype=torch.float64)
    coef = torch.tensor([0.5, 0.0], dtype=torch.float64)
    code_mean = torch.zeros(2, 2, dtype=torch.float64)

    def draw(arm):
        f = make_sampler(arm, pools, min_cells=30)
        return f(params, groups, codes, coef, code_mean, 0.8, torch.Generator().manual_seed(1)).log().numpy()

    assert make_sampler("model", pools, 30) is sample_library_conditional
    gauss, shape, marg = draw("model"), draw("shape"), draw("marginal")
    shift = (codes[:, 0] * 0.5).numpy()
    g0 = slice(0, n)
    # shape: the same mean and spread as the model's (code shift included), the pool's skew
    assert abs(shape[g0].mean() - gauss[g0].mean()) < 0.02
    assert abs((shape[g0] - shift[g0]).std() - (gauss[g0] - shift[g0]).std()) < 0.03
    assert skew(shape[g0] - shift[g0]) < -0.8
    assert abs(skew(gauss[g0] - shift[g0])) < 0.1
    # marginal: values of the group's own pool, the code ignored
    assert np.isin(np.round(marg[g0], 6), np.round(skewed, 6)).all()
    # a group under min_cells: shape keeps the model's Gaussian draw exactly
    assert np.allclose(shape[n:], gauss[n:])
    # generation's own stream is used exactly as the shipped sampler uses it: what generation
    # draws next (codes, counts) is the same in every arm
    after = []
    for arm in ("model", "shape", "marginal"):
        gen = torch.Generator().manual_seed(3)
        make_sampler(arm, pools, min_cells=30)(params, groups, codes, coef, code_mean, 0.8, gen)
        after.append(torch.rand(5, generator=gen))
    assert torch.equal(after[0], after[1]) and torch.equal(after[0], after[2])


def test_library_probe_pools_follow_the_models_group_order(tmp_path):
    """bench.library_probe.group_logsizes: per type x condition in the model's order, the log HVG
    count sums of the train cells only, read from the stages' own label and condition columns."""
    import anndata as ad
    import scipy.sparse as sp

    from bench.library_probe import group_logsizes
    from garage import constants as C

    counts = np.array([[1, 1], [2, 2], [3, 3], [4, 4], [5, 5], [6, 6]], dtype=np.float32)
    obs = pd.DataFrame({C.OBS_LABEL: ["B", "A", "A", "B", "A", "B"],
                        C.OBS_CONDITION: ["x", "x", "y", "y", "x", "x"],
                        C.OBS_SPLIT: ["train", "train", "train", "train", "holdout", "train"],
                        "cell_type": [" B ", "A", "A", "B", "A", "B"]}, index=[f"c{i}" for i in range(6)])
    a = ad.AnnData(X=sp.csr_matrix(counts), obs=obs)
    a.layers[C.LAYER_COUNTS] = sp.csr_matrix(counts * 10)
    a.write_h5ad(tmp_path / "r.h5ad")
    pools = group_logsizes(tmp_path / "r.h5ad", ["A", "B"], ["x", "y"])
    want = [[40.0], [60.0], [20.0, 120.0], [80.0]]  # A|x, A|y, B|x, B|y; the holdout cell left out
    assert [sorted(np.exp(p).round(3).tolist()) for p in pools] == want
    one = group_logsizes(tmp_path / "r.h5ad", ["A", "B"], [])  # a model without a condition: per type
    assert [sorted(np.exp(p).round(3).tolist()) for p in one] == [[40.0, 60.0], [20.0, 80.0, 120.0]]


def test_library_probe_summary_pairs_the_arms_of_each_file(tmp_path, capsys):
    """bench.library_probe --summarize: shape minus model per file, files without both arms skipped,
    and the mean with its t interval; no usable file is an error."""
    from bench import library_probe

    for i, (m, v) in enumerate([(0.06, 0.05), (0.07, 0.08), (0.05, 0.03)]):
        (tmp_path / f"p{i}.json").write_text(json.dumps({"run": f"r{i}", "arms": {
            "model": {"c2st_gap": m}, "shape": {"c2st_gap": v}}}))
    (tmp_path / "only_model.json").write_text(json.dumps({"run": "x", "arms": {"model": {"c2st_gap": 0.1}}}))
    lines, d = library_probe.summarize(sorted(tmp_path.glob("*.json")))
    assert np.allclose(d, [-0.01, 0.01, -0.02]) and len(lines) == 3
    assert library_probe.main(["--summarize", *map(str, sorted(tmp_path.glob("*.json")))]) == 0
    out = capsys.readouterr().out
    assert "3 runs, mean -0.0067 [95 % t -0.0446, +0.0313]" in out and "lower in 2 of 3" in out
    with pytest.raises(SystemExit):  # an unknown arm is refused, not drawn as the model draws
        library_probe.main(["--run", str(tmp_path), "--real", str(tmp_path), "--arms", "model,shap",
                            "--out", str(tmp_path / "o.json")])
    with pytest.raises(SystemExit, match="no file scored both"):
        library_probe.main(["--summarize", str(tmp_path / "only_model.json")])
