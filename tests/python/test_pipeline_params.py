"""Params under Nextflow's strict syntax (the default from Nextflow 26.04): a command-line
``--use_gpu false`` reaches the config as the *string* 'false', which Groovy takes as true.

* nf-schema is pinned to a release that casts command-line params to their schema types
  when it validates them (2.7.2+, checked against nf-schema's changelog), and the pipeline's
  minimum Nextflow version and the nf-test CI matrix meet that release's own requirement;
* every boolean or number param that config or workflow code reads is coerced where it is
  read (``params.x.toString().toBoolean()`` / ``.toInteger()``), because nf-schema casts only
  the copy it validates and ``--validate_params false`` skips it altogether;
* the closures, evaluated with the string values, give what the booleans give.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from test_pipeline import (
    REPO,
    default_params,
    eval_closures,
    nf_classpath,  # noqa: F401  (fixture)
    render_ext_args,
    resolve_directive,
    process_settings,
    schema_params,
    strip_comments,
)

#: nf-schema release -> the minimum Nextflow its plugin manifest requires (build.gradle,
#: nextflowPlugin.nextflowVersion, read at each tag of github.com/nextflow-io/nf-schema)
NF_SCHEMA_REQUIRES = {
    "2.5.1": "25.04.0",
    "2.6.0": "25.10.0", "2.6.1": "25.10.0",
    "2.7.0": "25.10.0", "2.7.1": "25.10.0", "2.7.2": "25.10.0", "2.7.3": "25.10.0",
    "2.8.0": "26.04.0",
}
#: the first release whose validateParameters() casts command-line params to the schema types
#: under the strict syntax (changelog 2.7.0 "Cast parameters ... strict syntax", restricted to
#: command-line params by 2.7.2's cast_cli_params)
NF_SCHEMA_CASTS_CLI = "2.7.2"


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text))


def _nf_schema_pin() -> str:
    m = re.search(r"id\s+'nf-schema@([\d.]+)'", (REPO / "nextflow.config").read_text())
    assert m, "nextflow.config must pin nf-schema"
    return m.group(1)


def _manifest_min_nextflow() -> str:
    m = re.search(r"nextflowVersion\s*=\s*'!?>=([\d.]+)'", (REPO / "nextflow.config").read_text())
    assert m, "manifest.nextflowVersion must be a minimum (>=X)"
    return m.group(1)


def test_nf_schema_pin_casts_cli_params_and_fits_the_minimum_nextflow():
    pin, minimum = _nf_schema_pin(), _manifest_min_nextflow()
    assert pin in NF_SCHEMA_REQUIRES, f"nf-schema {pin}: add its Nextflow requirement to NF_SCHEMA_REQUIRES"
    assert _version(pin) >= _version(NF_SCHEMA_CASTS_CLI), \
        f"nf-schema {pin} validates command-line params as strings under the strict syntax"
    assert _version(minimum) >= _version(NF_SCHEMA_REQUIRES[pin]), \
        f"nf-schema {pin} needs Nextflow >= {NF_SCHEMA_REQUIRES[pin]}, the manifest allows {minimum}"
    # the oldest Nextflow CI tests is the manifest's minimum; the docs say the same
    yaml = pytest.importorskip("yaml")
    nft = yaml.safe_load((REPO / ".github/workflows/nf-test.yml").read_text())
    versions = nft["jobs"]["nf-test"]["strategy"]["matrix"]["NXF_VER"]
    pinned = sorted((v for v in versions if re.fullmatch(r"[\d.]+", v)), key=_version)
    assert pinned and pinned[0] == minimum, f"nf-test matrix {versions} must start at {minimum}"
    usage = (REPO / "docs/usage.md").read_text()
    assert f"Needs Nextflow >= {minimum.rsplit('.', 1)[0]}" in usage


# ---------------------------------------------------------------------------------------
# Every read of a boolean or number param is coerced
# ---------------------------------------------------------------------------------------
PARAM_READERS = ("nextflow.config", "conf", "main.nf", "workflows", "subworkflows", "modules")
BOOL_COERCE = ".toString().toBoolean()"
NUMBER_COERCE = (".toString().toInteger()", ".toString().toDouble()")


def _typed_params() -> tuple[set[str], set[str]]:
    booleans, numbers = set(), set()
    for name, spec in schema_params().items():
        types = spec["type"] if isinstance(spec["type"], list) else [spec["type"]]
        if types == ["boolean"]:
            booleans.add(name)
        elif set(types) <= {"integer", "number"}:
            numbers.add(name)
    return booleans, numbers


def _reader_files(root: Path) -> list[Path]:
    files: list[Path] = []
    for item in PARAM_READERS:
        p = root / item
        files += [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.suffix in (".nf", ".config"))
    return [f for f in files if f.exists()]


def uncoerced_param_reads(root: Path) -> list[str]:
    """Reads of boolean params without ``.toString().toBoolean()``, and reads of number params
    that are neither coerced, nor interpolated into a string, nor compared with null."""
    booleans, numbers = _typed_params()
    problems = []
    for f in _reader_files(root):
        text = strip_comments(f.read_text())
        for m in re.finditer(r"\bparams\.([A-Za-z_]\w*)", text):
            name, after = m.group(1), text[m.end():]
            if name not in booleans and name not in numbers:
                continue
            if re.match(r"\s*=(?!=)", after):  # an assignment (profile gpu: params.use_gpu = true)
                continue
            line = text.count("\n", 0, m.start()) + 1
            where = f"{f.relative_to(root)}:{line}: params.{name}"
            if name in booleans and not after.startswith(BOOL_COERCE):
                problems.append(f"{where} is read without {BOOL_COERCE} ('false' would be true)")
            if name in numbers:
                interpolated = text[max(0, m.start() - 2):m.start()] == "${" and after.startswith("}")
                null_test = re.match(r"\s*[!=]=\s*null\b", after)
                if not (interpolated or null_test or after.startswith(NUMBER_COERCE)):
                    problems.append(f"{where} is used as a number without .toString().toInteger()/.toDouble()")
    return problems


def test_boolean_and_number_params_are_coerced_where_read():
    booleans, numbers = _typed_params()
    assert {"use_gpu", "validate_params", "version"} <= booleans and "seed" in numbers
    assert uncoerced_param_reads(REPO) == []


@pytest.mark.parametrize("rel, old, new", [
    ("conf/modules.config", "params.use_gpu.toString().toBoolean() ? '--device cuda'", "params.use_gpu ? '--device cuda'"),
    ("main.nf", "params.validate_params.toString().toBoolean(),", "params.validate_params,"),
    ("nextflow.config", "clusterOptions = { params.use_gpu.toString().toBoolean() ?", "clusterOptions = { params.use_gpu ?"),
    ("conf/base.config", "cpus   = { 1 * task.attempt }", "cpus   = { params.seed > 0 ? 2 : 1 }"),
])
def test_uncoerced_read_is_caught(tmp_path, rel, old, new):
    root = tmp_path / "pipeline"
    root.mkdir()
    for item in (*PARAM_READERS, "nextflow_schema.json"):
        src = REPO / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, root / item)
    target = root / rel
    text = target.read_text()
    assert old in text, f"planting site not found in {rel}"
    target.write_text(text.replace(old, new, 1))
    assert uncoerced_param_reads(root), f"uncoerced read planted in {rel} not detected"


# ---------------------------------------------------------------------------------------
# The closures, with the values strict syntax hands over
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("value, on", [(True, True), (False, False), ("true", True), ("false", False),
                                       ("FALSE", False), ("True", True)])
def test_use_gpu_string_values_in_ext_args(value, on):
    params = default_params() | {"use_gpu": value}
    meta = {"id": "s", "label_key": "cell_type", "layer": None, "condition_key": None}
    for process in ("GARAGE_GAT", "GARAGE_GAN"):
        args = render_ext_args(process, params, meta)
        assert ("--device cuda" in args) is on and ("--device auto" in args) is (not on), (process, value, args)


def test_use_gpu_string_values_in_config_closures(nf_classpath):  # noqa: F811
    params = default_params()
    base = process_settings(nf_classpath, "conf/base.config")
    container = resolve_directive(base, "GARAGE_GAT", "container").source
    slurm = [s for s in process_settings(nf_classpath, "nextflow.config", profile="slurm")
             if s.path[-1] in ("clusterOptions", "queue") and s.closure]
    aws = [s for s in process_settings(nf_classpath, "nextflow.config", profile="awsbatch")
           if s.path[-1] == "queue" and s.closure]
    assert len(slurm) == 2 and len(aws) == 1
    sources = [container] + [s.source for s in slurm + aws]
    cases = [{"source": src, "params": params | {"use_gpu": value}}
             for value in ("false", False, "true", True) for src in sources]
    got = eval_closures(nf_classpath, cases)
    n = len(sources)
    assert got[0:n] == got[n:2 * n], f"'false' and false differ: {got[0:n]} vs {got[n:2 * n]}"
    assert got[2 * n:3 * n] == got[3 * n:4 * n], f"'true' and true differ: {got[2 * n:3 * n]} vs {got[3 * n:]}"
    assert "garage-cuda" not in got[0] and "garage-cuda" in got[2 * n]
