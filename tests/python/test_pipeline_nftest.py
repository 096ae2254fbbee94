"""nf-test files and the CI that runs them, checked without nf-test:

* every ``input[i] = ...`` of a module test (its ``when`` block and its ``setup`` runs) gives
  a tuple of the size the process declares for input i, wherever that size can be read from
  the expression: a list literal, ``X.out.name`` (the size of that output), ``.join`` (the
  key counts once), ``.combine``, ``.map { a, b -> [ ... ] }`` and size-keeping operators;
* ``.github/scripts/nf-test-ci.sh`` runs ``nf-test test --ci`` only on test files that have a
  snapshot and runs the others without ``--ci`` (writing their snapshots, which the workflow
  uploads as an artifact), run here with a stand-in ``nf-test`` that records its arguments;
* the nf-test version CI pins is the one the docs name.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_pipeline import REPO, _statements, split_top_level, strip_comments

OPEN = {"(": ")", "[": "]", "{": "}"}


def _match(text: str, i: int) -> int:
    """Index just past the bracket that closes the one at text[i] (quotes skipped)."""
    stack, quote, j = [], None, i
    while j < len(text):
        c = text[j]
        if quote:
            if c == "\\":
                j += 1  # the escaped character
            elif c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c in OPEN:
            stack.append(OPEN[c])
        elif c in ")]}":
            if not stack or stack.pop() != c:
                raise ValueError(f"unbalanced {c!r} in {text[i:j + 1]!r}")
            if not stack:
                return j + 1
        j += 1
    raise ValueError(f"unclosed {text[i]!r} in {text[i:]!r}")


# ---------------------------------------------------------------------------------------
# Process declarations: the size of each input and output tuple
# ---------------------------------------------------------------------------------------
@dataclass
class Declared:
    inputs: list[int | None]           # tuple size of each input; None for a plain val/path
    outputs: dict[str, int | None]     # emit name -> tuple size (None: not a tuple)


def _section_lines(body: str, name: str, following: tuple[str, ...]) -> list[str]:
    m = re.search(rf"(?m)^\s*{name}:\s*$", body)
    if not m:
        return []
    end = len(body)
    for nxt in following:
        n = re.search(rf"(?m)^\s*{nxt}:\s*$", body[m.end():])
        if n:
            end = min(end, m.end() + n.start())
    return [ln.strip() for ln in strip_comments(body[m.end():end]).splitlines() if ln.strip()]


def _tuple_size(decl: str) -> int | None:
    if not decl.startswith("tuple "):
        return None
    items = split_top_level(decl[len("tuple "):])
    return len([it for it in items if not re.match(r"^\w+\s*:", it)])  # emit:, optional:, topic:


def parse_declared(module: Path) -> Declared:
    body = module.read_text()
    ins = _section_lines(body, "input", ("output", "when", "script", "shell", "exec", "stub"))
    outs = _section_lines(body, "output", ("when", "script", "shell", "exec", "stub"))
    outputs = {}
    for decl in outs:
        m = re.search(r"\bemit:\s*(\w+)", decl)
        if m:
            outputs[m.group(1)] = _tuple_size(decl)
    return Declared([_tuple_size(d) for d in ins], outputs)


# ---------------------------------------------------------------------------------------
# Channel expressions: the size of the tuples they carry, where it can be read
# ---------------------------------------------------------------------------------------
KEEP_SIZE = {"filter", "first", "last", "unique", "view", "take", "randomSample", "distinct", "buffer"}


def expr_size(expr: str, outputs_of) -> int | None:
    """Tuple size carried by a channel expression, or None when it cannot be read."""
    expr = expr.strip()
    if expr.startswith("["):
        end = _match(expr, 0)
        items = split_top_level(expr[1:end - 1])
        is_map = any(re.match(r"^\w+\s*:", it) for it in items)  # [ id:'x' ] is a map, not a tuple
        size = len(items) if items and not is_map else None
    else:
        m = re.match(r"(\w+)\s*\.\s*out\s*\.\s*(\w+)", expr)
        if not m:
            return None
        size, end = outputs_of(m.group(1), m.group(2)), m.end()
    rest = expr[end:]
    while rest.strip():
        m = re.match(r"\s*\.\s*(\w+)\s*", rest)
        if not m:
            return None
        op, pos, args, closure = m.group(1), m.end(), None, None
        if pos < len(rest) and rest[pos] == "(":
            close = _match(rest, pos)
            args, pos = rest[pos + 1:close - 1], close
            pos += len(rest[pos:]) - len(rest[pos:].lstrip())
        if pos < len(rest) and rest[pos] == "{":
            close = _match(rest, pos)
            closure, pos = rest[pos + 1:close - 1], close
        rest = rest[pos:]
        if size is None:
            return None
        if op == "join":
            other = expr_size(split_top_level(args or "")[0], outputs_of) if args else None
            size = None if other is None else size + other - 1
        elif op == "combine":
            other = expr_size(split_top_level(args or "")[0], outputs_of) if args else None
            size = None if other is None else size + other
        elif op == "map":
            result = (closure or "").split("->", 1)[-1].strip()
            size = expr_size(result, outputs_of) if result.startswith("[") and _match(result, 0) == len(result) else None
        elif op not in KEEP_SIZE:
            return None
    return size


# ---------------------------------------------------------------------------------------
# nf-test files: which process each code block feeds
# ---------------------------------------------------------------------------------------
def _code_blocks(text: str) -> list[tuple[int, str]]:
    return [(m.start(), m.group(1)) for m in re.finditer(r'"""(.*?)"""', text, re.S)]


def nf_test_arity_problems(test: Path) -> tuple[list[str], int]:
    """(problems, number of inputs whose size was checked) for one module nf-test file."""
    text = test.read_text()
    main = re.search(r'(?m)^\s*process\s+"(\w+)"', text)
    script = re.search(r'(?m)^\s*script\s+"([^"]+)"', text)
    if not (main and script):
        return [], 0
    scripts = {main.group(1): (test.parent / script.group(1)).resolve()}
    runs = []  # (start, end, process)
    for m in re.finditer(r'run\(\s*"(\w+)"\s*\)\s*\{', text):
        end = _match(text, m.end() - 1)
        block = text[m.start():end]
        sm = re.search(r'script\s+"([^"]+)"', block)
        if sm:
            scripts[m.group(1)] = (test.parent / sm.group(1)).resolve()
        runs.append((m.start(), end, m.group(1)))
    declared = {name: parse_declared(path) for name, path in scripts.items() if path.is_file()}

    def outputs_of(process: str, emit: str) -> int | None:
        d = declared.get(process)
        if d is None or emit not in d.outputs:
            return None
        return d.outputs[emit] if d.outputs[emit] is not None else 1

    problems, checked = [], 0
    for start, code in _code_blocks(text):
        process = next((name for s, e, name in runs if s < start < e), main.group(1))
        if process not in declared:
            continue
        for stmt in _statements(code):
            im = re.match(r"input\[(\d+)\]\s*=\s*(.+)$", stmt, re.S)
            if not im:
                continue
            i, expr = int(im.group(1)), im.group(2)
            want = declared[process].inputs[i] if i < len(declared[process].inputs) else "missing"
            if want == "missing":
                problems.append(f"{test.relative_to(test.parents[3])}: {process} has no input[{i}]")
                continue
            if want is None:
                continue
            got = expr_size(expr, outputs_of)
            if got is None:
                continue
            checked += 1
            if got != want:
                line = text.count("\n", 0, start) + 1
                problems.append(f"{test}:{line}: {process} input[{i}] declares a {want}-element tuple, "
                                f"the test gives {got}: {expr.strip()[:120]}")
    return problems, checked


MODULE_TESTS = sorted(REPO.glob("modules/**/tests/main.nf.test"))


def test_module_nf_test_inputs_match_process_arity():
    problems, checked = [], 0
    for test in MODULE_TESTS:
        p, n = nf_test_arity_problems(test)
        problems += p
        checked += n
    assert problems == []
    assert checked >= 20, f"only {checked} inputs could be sized: the checker lost its grip"


def test_expression_sizes():
    outs = {("P", "h5ad"): 2, ("G", "h5ad"): 2, ("G", "provenance"): 2, ("E", "files"): 1}

    def outputs_of(process, emit):
        return outs.get((process, emit))

    assert expr_size("P.out.h5ad.join(G.out.h5ad)", outputs_of) == 3
    assert expr_size("P.out.h5ad.join(G.out.h5ad).join(G.out.h5ad).join(G.out.provenance)", outputs_of) == 5
    assert expr_size("P.out.h5ad.join(G.out.h5ad, remainder: true)", outputs_of) == 3
    assert expr_size("P.out.h5ad.join(G.out.h5ad).map { m, a, b -> [m, a, b, []] }", outputs_of) == 4
    assert expr_size("[ [ id:'x' ], file('a.h5ad') ]", outputs_of) == 2
    assert expr_size("P.out.h5ad.combine(G.out.h5ad)", outputs_of) == 4
    assert expr_size("E.out.files.collect()", outputs_of) is None
    assert expr_size("channel.of(1, 2)", outputs_of) is None


def test_arity_check_catches_the_short_evaluate_tuple(tmp_path):
    """The bug this check was written for: MULTIQC's test fed GARAGE_EVALUATE a 3-element
    tuple (real, synthetic joined) where the process declares meta + 4 files."""
    root = tmp_path / "modules"
    shutil.copytree(REPO / "modules", root)
    test = root / "local/multiqc/tests/main.nf.test"
    text = test.read_text()
    good = "input[0] = GARAGE_PREPROCESS.out.h5ad.join(GARAGE_GAN.out.h5ad).join(GARAGE_GAT.out.h5ad).join(GARAGE_GAN.out.provenance)"
    assert good in text
    test.write_text(text.replace(good, "input[0] = GARAGE_PREPROCESS.out.h5ad.join(GARAGE_GAN.out.h5ad)"))
    problems, _ = nf_test_arity_problems(test)
    assert len(problems) == 1 and "GARAGE_EVALUATE input[0] declares a 5-element tuple, the test gives 3" in problems[0]


# ---------------------------------------------------------------------------------------
# CI: nf-test --ci only where snapshots exist; the others create theirs as an artifact
# ---------------------------------------------------------------------------------------
CI_SCRIPT = REPO / ".github/scripts/nf-test-ci.sh"


def _fake_tree(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for rel in ("modules/local/a/tests/main.nf.test", "modules/local/b/tests/main.nf.test",
                "tests/default.nf.test", ".nf-test/tests/copy/main.nf.test", ".venv/x/main.nf.test"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("nextflow_process {}\n")
    (root / "modules/local/a/tests/main.nf.test.snap").write_text("{}\n")
    return root


def _run_ci(root: Path, tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, list[str], str]:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    log = tmp_path / "nf-test.calls"
    fake = bindir / "nf-test"
    fake.write_text(f'#!/usr/bin/env bash\necho "$*" >> "{log}"\nexit "${{FAKE_NFT_RC:-0}}"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    out = tmp_path / "github_output"
    out.write_text("")
    proc = subprocess.run(["bash", str(CI_SCRIPT), *args], cwd=root, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "GITHUB_OUTPUT": str(out), **env})
    calls = log.read_text().splitlines() if log.exists() else []
    return proc, calls, out.read_text()


def test_ci_plan_splits_tests_by_snapshot(tmp_path):
    root = _fake_tree(tmp_path)
    proc, calls, _ = _run_ci(root, tmp_path, "--plan")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["ci modules/local/a/tests/main.nf.test",
                                        "create modules/local/b/tests/main.nf.test",
                                        "create tests/default.nf.test"]
    assert calls == []


def test_ci_runs_ci_mode_only_with_snapshots_and_creates_the_rest(tmp_path):
    root = _fake_tree(tmp_path)
    proc, calls, output = _run_ci(root, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(calls) == 2, calls
    assert "--ci" in calls[0].split() and calls[0].endswith("modules/local/a/tests/main.nf.test")
    assert "--ci" not in calls[1].split() and "--update-snapshot" not in calls[1].split()
    assert calls[1].endswith("modules/local/b/tests/main.nf.test tests/default.nf.test")
    assert all("--profile +docker" in c for c in calls)
    assert "created=true" in output
    assert "::warning" in proc.stdout and "tests/default.nf.test" in proc.stdout
    # every snapshot present: --ci on everything, nothing to upload
    (root / "modules/local/b/tests/main.nf.test.snap").write_text("{}\n")
    (root / "tests/default.nf.test.snap").write_text("{}\n")
    (tmp_path / "nf-test.calls").unlink()
    proc, calls, output = _run_ci(root, tmp_path)
    assert proc.returncode == 0 and len(calls) == 1 and "--ci" in calls[0].split()
    assert "created=true" not in output


def test_ci_fails_when_a_test_fails_and_update_mode_rewrites_all(tmp_path):
    root = _fake_tree(tmp_path)
    proc, calls, _ = _run_ci(root, tmp_path, FAKE_NFT_RC="1")
    assert proc.returncode != 0 and len(calls) == 2  # both groups still ran
    (tmp_path / "nf-test.calls").unlink()
    proc, calls, output = _run_ci(root, tmp_path, UPDATE_SNAPSHOTS="true")
    assert proc.returncode == 0 and len(calls) == 1 and "--update-snapshot" in calls[0].split()
    assert "created=true" in output


def test_nf_test_workflow_uses_the_script_and_the_documented_version():
    yaml = pytest.importorskip("yaml")
    wf = yaml.safe_load((REPO / ".github/workflows/nf-test.yml").read_text())
    version = wf["env"]["NFT_VER"]
    assert tuple(int(x) for x in version.split(".")) >= (0, 9, 4), "nf-test < 0.9.4 cannot parse the strict syntax"
    steps = wf["jobs"]["nf-test"]["steps"]
    run = next(s for s in steps if "nf-test-ci.sh" in s.get("run", ""))
    assert run.get("id") == "nftest"
    upload = next(s for s in steps if str(s.get("uses", "")).startswith("actions/upload-artifact"))
    assert "steps.nftest.outputs.created == 'true'" in upload["if"]
    assert "**/*.nf.test.snap" in upload["with"]["path"]
    script = CI_SCRIPT.read_text()
    assert "--ci" in script and "--update-snapshot" in script
    # docs name the exact version and the snapshot route
    for doc in ("docs/usage.md", "README.md"):
        text = (REPO / doc).read_text()
        assert f"nf-test {version}" in text, f"{doc} must name nf-test {version}"
        assert "nf-test-snapshots" in text, f"{doc} must say where CI puts new snapshots"
