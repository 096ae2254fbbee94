"""Shared fixtures: real data, preprocessed once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Under pytest-xdist (`make test` runs 2 workers) each worker, and every CLI it starts, gets one
# torch/BLAS thread unless the caller chose: two workers at torch's default of one thread per core
# would ask for twice the cores there are. Set here, before anything imports torch.
if os.environ.get("PYTEST_XDIST_WORKER") and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ.setdefault("MKL_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[2]
SHARED_PBMC3K = REPO.parent / "shared" / "data" / "pbmc3k.h5ad"


@pytest.fixture(scope="session")
def small_counts_path() -> Path:
    """Bundled real subset of PBMC 3k (1,083 cells; rare DC 32, Platelet 14)."""
    from garage.datasets import dataset_path

    return dataset_path("pbmc3k_small")


@pytest.fixture(scope="session")
def pbmc68k_counts_path() -> Path:
    """scanpy's pbmc68k_reduced with counts recovered (700 cells, 765 genes)."""
    from garage.datasets import dataset_path

    return dataset_path("pbmc68k_reduced")


@pytest.fixture(scope="session")
def pbmc3k_path() -> Path:
    if not SHARED_PBMC3K.exists():
        pytest.skip("../shared/data/pbmc3k.h5ad not present")
    return SHARED_PBMC3K


@pytest.fixture(scope="session")
def preprocessed_small(tmp_path_factory, small_counts_path) -> Path:
    """PREFIX.preprocessed.h5ad of the bundled PBMC 3k subset (computed once)."""
    from garage.preprocess import PreprocessConfig, run_preprocess

    out = tmp_path_factory.mktemp("pp_small")
    return run_preprocess(
        small_counts_path, out, "small", PreprocessConfig(label_key="cell_type", seed=0)
    )["h5ad"]


@pytest.fixture(scope="session")
def preprocessed_68k(tmp_path_factory, pbmc68k_counts_path) -> Path:
    from garage.preprocess import PreprocessConfig, run_preprocess

    out = tmp_path_factory.mktemp("pp_68k")
    return run_preprocess(
        pbmc68k_counts_path, out, "p68k", PreprocessConfig(label_key="bulk_labels", seed=0)
    )["h5ad"]


def _run_cli_in_process(args: list[str]):
    """``garage ARGS`` run by click in this process: the same LazyGroup error handling (exit code,
    one ``Error:`` line) as ``python -m garage.cli``, without a Python start-up and scanpy import
    per case.  stdout and stderr are captured at the file descriptors (C-level writes included).
    What the CLI sets process-wide comes back afterwards: the root logger's handlers (emptied
    first, so ``basicConfig(force=True)`` closes none of pytest's), the levels of the loggers it
    quietens, the random generators it seeds, torch's threads and determinism flag, os.environ."""
    import logging
    import random

    import numpy as np
    import torch
    from click.testing import CliRunner

    from garage.cli import main

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    quiet = {n: logging.getLogger(n).level for n in ("numba", "matplotlib", "h5py", "fontTools", "PIL")}
    rng = random.getstate(), np.random.get_state(), torch.get_rng_state()
    det, threads, env = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads(), dict(os.environ)
    root.handlers = []
    try:
        return CliRunner(capture="fd").invoke(main, args, prog_name="garage")
    finally:
        root.handlers[:], root.level = handlers, level
        for n, lv in quiet.items():
            logging.getLogger(n).setLevel(lv)
        random.setstate(rng[0]); np.random.set_state(rng[1]); torch.set_rng_state(rng[2])
        torch.use_deterministic_algorithms(det)
        torch.set_num_threads(threads)
        os.environ.clear()
        os.environ.update(env)


def _run_cli_console(args: list[str]):
    """``python -m garage.cli ARGS`` in a fresh Python, as a result shaped like
    ``_run_cli_in_process``'s (``exit_code``, ``stderr``, ``exception``), so one set of checks
    reads both."""
    import subprocess
    import sys
    from types import SimpleNamespace

    proc = subprocess.run([sys.executable, "-m", "garage.cli", *args], capture_output=True, text=True,
                          timeout=300)
    return SimpleNamespace(exit_code=proc.returncode, stderr=proc.stderr, exception=None)


@pytest.fixture
def cli_in_process():
    """The callable ``_run_cli_in_process`` (a fixture, so tests need no import of conftest)."""
    return _run_cli_in_process


@pytest.fixture
def cli_console():
    """The callable ``_run_cli_console``: the same command in a fresh Python."""
    return _run_cli_console


#: GAN step counts for tests of bookkeeping, bad input and file handling, where the generator's
#: quality is not what is asserted (the test profile's full length is trained elsewhere)
SHORT_GAN = {"gan_steps": 60, "ae_steps": 60, "decoder_steps": 20}


#: test files that take longest (their module fixtures train models), collected first: `make test`
#: runs `--dist loadfile --no-loadscope-reorder`, so xdist hands out whole files in collection order
#: (its default reorder is by number of tests, which put test_run.py, 18 tests but the longest
#: fixtures, 8th), and a long file handed out late leaves the other worker idle at the end
LONG_FILES = ("test_run.py", "test_gan.py", "test_preprocess.py", "test_reliability.py", "test_pipeline.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))  # stable: order inside a file kept
