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


def cli_in_process(args: list[str]):
    """``garage ARGS`` run by click in this process: the same LazyGroup error handling (exit code,
    one ``Error:`` line) as the console script, without a Python start-up and scanpy import per
    case.  The root logger's handlers, which the CLI points at the captured stderr, come back."""
    import logging

    from click.testing import CliRunner

    from garage.cli import main

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        return CliRunner().invoke(main, args, prog_name="garage")
    finally:
        root.handlers[:], root.level = saved[0], saved[1]


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
