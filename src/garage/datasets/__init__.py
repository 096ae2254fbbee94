"""Small real datasets shipped with the package (made by scripts/make_test_data.py)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

#: name -> (file, label key)
DATASETS: dict[str, tuple[str, str]] = {
    "pbmc3k_small": ("pbmc3k_small.h5ad", "cell_type"),
    "pbmc68k_reduced": ("pbmc68k_reduced_counts.h5ad", "bulk_labels"),
}


def dataset_path(name: str) -> Path:
    """Path of a bundled dataset (``pbmc3k_small`` or ``pbmc68k_reduced``)."""
    return Path(str(files(__name__).joinpath(DATASETS[name][0])))


def label_key(name: str) -> str:
    return DATASETS[name][1]
