"""The release workflow's tag check (.github/scripts/check-release-tag.sh), run for real: a tag
releases the images only when it is the package version exactly, with or without a `v`."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from test_pipeline import REPO

SCRIPT = REPO / ".github/scripts/check-release-tag.sh"
CONFIG = """params {
    version                = false
    container_registry     = 'ghcr.io/garage-sc'
    container_tag          = '{tag}'
}
manifest {
    nextflowVersion = '!>=25.10.0'
    version         = '{manifest}'
}
"""


def _check(tmp_path: Path, tag: str, version: str, container_tag: str | None = None,
           manifest: str | None = None) -> subprocess.CompletedProcess:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(f'[project]\nname = "garage"\nversion = "{version}"\n')
    config = tmp_path / "nextflow.config"
    config.write_text(CONFIG.replace("{tag}", container_tag or version).replace("{manifest}", manifest or version))
    return subprocess.run(["bash", str(SCRIPT), tag, str(pyproject), str(config)],
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("tag, version, ok", [
    ("v0.1.0", "0.1.0", True),
    ("0.1.0", "0.1.0", True),
    ("v0.1.0-rc1", "0.1.0", False),     # the old prefix match let these through
    ("v0.1.0rc1", "0.1.0", False),
    ("v0.1.01", "0.1.0", False),
    ("v0.1.0.post1", "0.1.0", False),
    ("0.1", "0.1.0", False),
    ("vv0.1.0", "0.1.0", False),
    ("V0.1.0", "0.1.0", False),
    ("v0.2.0rc1", "0.2.0rc1", True),    # an rc tag for an rc version
    ("v0.2.0", "0.2.0rc1", False),
])
def test_tag_must_equal_the_version(tmp_path, tag, version, ok):
    proc = _check(tmp_path, tag, version)
    assert (proc.returncode == 0) is ok, proc.stdout + proc.stderr
    if ok:
        assert proc.stdout.strip() == version
    else:  # on stderr: the workflow captures stdout with $(...), which would swallow the annotation
        assert proc.stderr.startswith("::error::") and proc.stdout == ""


def test_config_versions_must_match_too(tmp_path):
    bad_tag = _check(tmp_path, "v0.1.0", "0.1.0", container_tag="0.1.0-dev")
    assert bad_tag.returncode == 1 and "container_tag" in bad_tag.stderr
    bad_manifest = _check(tmp_path, "v0.1.0", "0.1.0", manifest="0.0.9")
    assert bad_manifest.returncode == 1 and "manifest.version" in bad_manifest.stderr


def test_repository_versions_pass_and_the_workflow_uses_the_script():
    version = re.search(r'(?m)^version = "([^"]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    proc = subprocess.run(["bash", str(SCRIPT), f"v{version}"], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and proc.stdout.strip() == version, proc.stdout + proc.stderr
    yaml = pytest.importorskip("yaml")
    wf = yaml.safe_load((REPO / ".github/workflows/release-images.yml").read_text())
    runs = [s.get("run", "") for s in wf["jobs"]["image"]["steps"]]
    check = [r for r in runs if "check-release-tag.sh" in r]
    assert len(check) == 1 and '"${GITHUB_REF_NAME}"' in check[0] and "IMAGE_TAG=${version}" in check[0]
    assert not any('"${version}"*' in r for r in runs), "no prefix match of the tag"
