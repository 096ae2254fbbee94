"""Small real datasets shipped with the package (made by scripts/make_test_data.py)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

#: name -> (file, label key): the samples of ``garage run --profile test``
DATASETS: dict[str, tuple[str, str]] = {
    "pbmc3k_small": ("pbmc3k_small.h5ad", "cell_type"),
    "pbmc68k_reduced": ("pbmc68k_reduced_counts.h5ad", "bulk_labels"),
}
#: name -> (file, label key, condition key): real data with a covariate, for the covariate tests
#: (sc_mixology cell lines under two protocols; two lines exist under one protocol only)
COVARIATE_DATASETS: dict[str, tuple[str, str, str]] = {
    "sc_mixology_small": ("sc_mixology_small.h5ad", "cell_type", "protocol"),
}


def dataset_path(name: str) -> Path:
    """Path of a bundled dataset (``pbmc3k_small``, ``pbmc68k_reduced`` or ``sc_mixology_small``)."""
    entry = DATASETS.get(name) or COVARIATE_DATASETS[name]
    return Path(str(files(__name__).joinpath(entry[0])))


def label_key(name: str) -> str:
    return (DATASETS.get(name) or COVARIATE_DATASETS[name])[1]
