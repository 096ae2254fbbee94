"""Bad input across the stages (issue 9): each case gets exit 2, one `Error:` line
naming the problem and the fix, no traceback, no output file, and unchanged inputs.
Missing hardware and too little memory are not bad input: exit 3 (RESOURCE_CASES), which
the pipeline retries with more resources.

The preprocess-level cases (counts, labels, formats, QC) are in test_preprocess.py and
the samplesheet cases in test_run.py; this file covers what crosses stage boundaries:
mismatched files, wrong file kinds, absurd options and missing hardware.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from garage import constants as C

GARAGE = [sys.executable, "-m", "garage.cli"]


def _sha(p: Path) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def stage_files(tmp_path_factory, preprocessed_small):
    """Real seeds (GAT) and a real generator (GAN) on the bundled data, fast settings."""
    from garage import gan, gat

    out = tmp_path_factory.mktemp("rel")
    g = gat.run_gat(preprocessed_small, out, "s", gat.GATConfig(**gat.TEST_OVERRIDES))
    # the bad-input cases need real files of every kind, not a good generator: a short GAN run
    from conftest import SHORT_GAN

    n = gan.run_gan(g["h5ad"], out, "s", gan.GANConfig(**{**gan.TEST_OVERRIDES, **SHORT_GAN}))
    pp = ad.read_h5ad(preprocessed_small)
    # a synthetic file on a different gene set
    other = ad.read_h5ad(n["h5ad"])
    other = other[:, : other.n_vars // 2].copy()
    other.write_h5ad(out / "other_genes.synthetic.h5ad")
    nolab = ad.read_h5ad(n["h5ad"])
    del nolab.obs[C.OBS_CELL_TYPE]
    nolab.write_h5ad(out / "nolabel.synthetic.h5ad")
    empty = ad.read_h5ad(n["h5ad"])[:0].copy()
    empty.write_h5ad(out / "empty.synthetic.h5ad")
    raw = ad.AnnData(pp.layers[C.LAYER_COUNTS].copy(), obs=pp.obs[[]].copy(), var=pp.var[[]].copy())
    raw.write_h5ad(out / "raw_counts.h5ad")
    (out / "corrupt.generator.pt").write_bytes(b"\x00not a torch file" * 50)
    (out / "table.csv").write_text("cell,g1\nc1,1\n")
    return {
        "pp": Path(preprocessed_small), "seeds": g["h5ad"], "gat_model": g["model"],
        "synthetic": n["h5ad"], "generator": n["model"], "dir": out,
        "other_genes": out / "other_genes.synthetic.h5ad", "nolabel": out / "nolabel.synthetic.h5ad",
        "empty": out / "empty.synthetic.h5ad", "raw": out / "raw_counts.h5ad",
        "corrupt_model": out / "corrupt.generator.pt", "table": out / "table.csv",
    }


# name -> (argv with {placeholders}, substring expected in the error line)
CASES = {
    "gat_on_raw_counts": (["gat", "--input", "{raw}"], "garage preprocess"),
    "gat_on_csv": (["gat", "--input", "{table}"], ".h5ad"),
    "gat_negative_epochs": (["gat", "--input", "{pp}", "--epochs", "-3"], "--epochs"),
    "gat_seed_fraction_gt_1": (["gat", "--input", "{pp}", "--seed-fraction", "1.5"], "--seed-fraction"),
    "gat_rare_threshold_gt_1": (["gat", "--input", "{pp}", "--rare-threshold", "2"], "--rare-threshold"),
    "gat_cuda_without_gpu": (["gat", "--input", "{pp}", "--device", "cuda"], "no CUDA GPU"),
    "gat_memory_guard": (["gat", "--input", "{pp}", "--max-memory-gb", "0.0001"], "memory"),
    "gan_without_seeds": (["gan", "--input", "{pp}"], "garage gat"),
    "gan_seed_mix_gt_1": (["gan", "--input", "{seeds}", "--seed-mix", "2"], "--seed-mix"),
    "gan_zero_epochs": (["gan", "--input", "{seeds}", "--epochs", "0"], "--epochs"),
    "gan_unknown_type": (["gan", "--input", "{seeds}", "--cells-per-type", "Martian=5"], "Martian"),
    "gan_bad_cells_per_type": (["gan", "--input", "{seeds}", "--cells-per-type", "DC"], "is not NAME=N"),
    "gan_cuda_without_gpu": (["gan", "--input", "{seeds}", "--device", "cuda"], "no CUDA GPU"),
    "generate_corrupt_model": (["generate", "--model", "{corrupt_model}"], "generator"),
    "generate_from_gat_model": (["generate", "--model", "{gat_model}"], "generator"),
    "generate_negative_cells": (["generate", "--model", "{generator}", "--n-cells", "-5"], "--n-cells"),
    "evaluate_other_gene_set": (["evaluate", "--real", "{pp}", "--synthetic", "{other_genes}"], "gene"),
    "evaluate_missing_cell_type": (["evaluate", "--real", "{pp}", "--synthetic", "{nolabel}"], "cell_type"),
    "evaluate_empty_synthetic": (["evaluate", "--real", "{pp}", "--synthetic", "{empty}"], "no cells"),
    "evaluate_real_not_preprocessed": (["evaluate", "--real", "{raw}", "--synthetic", "{synthetic}"], "garage preprocess"),
    "evaluate_missing_file": (["evaluate", "--real", "{pp}", "--synthetic", "/no/such.h5ad"], "does not exist"),
}


#: not enough resources: exit 3 (conf/base.config retries it), not 2
RESOURCE_CASES = {"gat_cuda_without_gpu", "gat_memory_guard", "gan_cuda_without_gpu"}


#: cases that also run as the console script (a fresh Python), one or two per stage, which must
#: agree with the in-process run: the same exit code and the same one error line, no traceback
CONSOLE_CASES = {"gat_on_csv", "gan_unknown_type", "gan_cuda_without_gpu", "generate_corrupt_model",
                 "evaluate_other_gene_set"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_stage_bad_input(name, stage_files, tmp_path, cli_in_process, cli_console):
    """Run in-process through click (conftest.cli_in_process: the CLI's own error handling, no
    Python start-up per case); CONSOLE_CASES also as `python -m garage.cli`, with the same checks."""
    argv, expect = CASES[name]
    argv = [a.format(**{k: str(v) for k, v in stage_files.items()}) for a in argv]
    inputs = [Path(a) for a in argv if Path(a).is_file()]
    before = {p: _sha(p) for p in inputs}
    out = tmp_path / "out"
    argv = [*argv, "--prefix", "x", "--outdir", str(out)]
    runs = [("in-process", cli_in_process(argv))]
    if name in CONSOLE_CASES:
        runs.append(("console", cli_console(argv)))
    first = None
    for how, res in runs:
        errors = [ln for ln in res.stderr.splitlines() if ln.startswith("Error:")]
        assert res.exit_code == (3 if name in RESOURCE_CASES else 2), (how, res.stderr[-1500:])
        assert len(errors) == 1, (how, res.stderr[-1500:])
        assert expect.lower() in errors[0].lower(), (how, errors[0])
        assert first is None or errors == first, (how, errors, first)
        assert "Traceback" not in res.stderr, how
        assert res.exception is None or isinstance(res.exception, SystemExit), (how, repr(res.exception))
        assert not out.exists() or not any(out.iterdir()), (how, list(out.iterdir()))
        assert all(_sha(p) == h for p, h in before.items()), f"{how}: an input was modified"
        first = errors


def test_debug_shows_traceback(stage_files, tmp_path):
    proc = subprocess.run(
        [*GARAGE, "--debug", "evaluate", "--real", str(stage_files["pp"]), "--synthetic",
         str(stage_files["other_genes"]), "--prefix", "x", "--outdir", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_atomic_write_leaves_nothing_on_crash(tmp_path):
    from garage._utils import atomic_path

    final = tmp_path / "x.h5ad"
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []


def test_synthetic_inputs_never_modified_by_evaluate(stage_files, tmp_path):
    before = _sha(stage_files["synthetic"]), _sha(stage_files["pp"])
    proc = subprocess.run(
        [*GARAGE, "evaluate", "--real", str(stage_files["pp"]), "--synthetic", str(stage_files["synthetic"]),
         "--prefix", "ok", "--outdir", str(tmp_path), "--n-repeats", "1", "--no-plots"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert (_sha(stage_files["synthetic"]), _sha(stage_files["pp"])) == before
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
    syn = ad.read_h5ad(stage_files["synthetic"])
    assert np.allclose(syn.X.data, np.round(syn.X.data))
