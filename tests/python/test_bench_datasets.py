"""bench.datasets: registry shape and the offline paths (no fetched snapshot needed)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench import datasets as ds  # noqa: E402


def test_registry_specs_are_complete():
    for name, spec in ds.DATASETS.items():
        for key in ("description", "tissue", "technology", "source", "citation", "label_key",
                    "condition_keys", "expected", "filtering", "sha256"):
            assert key in spec, (name, key)
        assert re.fullmatch(r"[0-9a-f]{64}", spec["sha256"]), name
        assert len(spec["expected"]) == 2 and spec["filtering"], name
        if spec["source"]["kind"] == "github":
            assert name in ds._BUILDERS
            for src in spec["source"]["repos"].values():
                assert re.fullmatch(r"[0-9a-f]{40}", src["commit"]) and src["paths"], name


def test_package_dataset_builds_and_matches_registry(tmp_path):
    out = ds.build("pbmc68k_reduced", tmp_path)
    s = ds.summarize(out, ds.DATASETS["pbmc68k_reduced"])
    assert (s["cells"], s["genes"]) == (700, 765)
    assert s["sha256"] == ds.DATASETS["pbmc68k_reduced"]["sha256"]
    assert s["rare_types"] == {"CD4+/CD45RO+ Memory": 19, "CD34+": 13,
                               "CD4+/CD45RA+/CD25- Naive T": 8}


def test_a_build_appears_under_its_name_only_when_complete(tmp_path, monkeypatch):
    """Two benchmark runs started at once both build the dataset: each writes and checks a temporary
    copy of its own and renames it into place, so the final name never holds a partial file, and a
    build that fails its check leaves nothing (an earlier copy under the final name stays intact)."""
    out = tmp_path / "pbmc68k_reduced.h5ad"
    check = ds._check_layout
    seen = []

    def spy(path, spec, name=None):
        seen.append((Path(path), out.exists(), name))
        check(path, spec, name)

    monkeypatch.setattr(ds, "_check_layout", spy)
    assert ds.build("pbmc68k_reduced", tmp_path) == out
    assert seen[0][0] != out and seen[0][1] is False  # checked as a temporary copy, before the rename
    assert Path(seen[0][2]).name == "pbmc68k_reduced_counts.h5ad"  # its errors name the source file
    good = out.read_bytes()

    def broken(path, spec, name=None):
        Path(path).write_bytes(b"half")
        raise ValueError("layout")

    monkeypatch.setattr(ds, "_check_layout", broken)
    with pytest.raises(ValueError, match="layout"):
        ds.build("pbmc68k_reduced", tmp_path)
    assert out.read_bytes() == good and sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_missing_snapshot_names_the_fetch_source(tmp_path, monkeypatch):
    monkeypatch.setenv("GARAGE_MIRROR_DIR", str(tmp_path / "none"))
    with pytest.raises(FileNotFoundError, match="fetch github:zhiyhu/CIDER"):
        ds.build("baron_mouse", tmp_path)


def test_counts_must_be_integers():
    with pytest.raises(ValueError, match="integers"):
        ds._as_counts(np.array([[0.0, 1.5]]))
    X = ds._as_counts(np.array([[0.0, 2.0], [3.0, 0.0]]))
    assert X.format == "csr" and X.dtype == np.float32 and X.nnz == 2
