#!/usr/bin/env bash
# Run the nf-test suite in CI without pretending: `nf-test test --ci` fails a test whose
# snapshot is missing, so it runs only on the test files that have a committed snapshot
# (FILE.nf.test.snap next to FILE.nf.test). The files without one run without --ci: nf-test
# writes their snapshots, this script prints a warning for each, and sets `created=true` in
# $GITHUB_OUTPUT so the workflow uploads them (artifact nf-test-snapshots-*) for a maintainer
# to review and commit. A failing test fails the job either way.
#
# Usage: .github/scripts/nf-test-ci.sh [--plan]
#   --plan               print "ci FILE" / "create FILE" for each test file and run nothing
#   UPDATE_SNAPSHOTS=true  rewrite every snapshot (--update-snapshot), e.g. after a change
#   NFT_PROFILE=...        nf-test --profile value (default +docker)
# Run from the repository root. Tested by tests/python/test_pipeline_nftest.py.
set -euo pipefail

plan=false
if [[ "${1:-}" == "--plan" ]]; then
    plan=true
fi
profile="${NFT_PROFILE:-+docker}"
output="${GITHUB_OUTPUT:-/dev/null}"

mapfile -t tests < <(find . \
    \( -name .git -o -name .nf-test -o -name .venv -o -name bench -o -name tools -o -name src \
       -o -name work -o -name node_modules \) -prune -o \
    -type f -name '*.nf.test' -print | sed 's|^\./||' | sort)
with_snapshot=()
without_snapshot=()
for test in "${tests[@]}"; do
    if [[ -f "${test}.snap" ]]; then
        with_snapshot+=("${test}")
    else
        without_snapshot+=("${test}")
    fi
done

if [[ "${plan}" == "true" ]]; then
    for test in "${with_snapshot[@]}"; do echo "ci ${test}"; done
    for test in "${without_snapshot[@]}"; do echo "create ${test}"; done
    exit 0
fi

if [[ "${UPDATE_SNAPSHOTS:-false}" == "true" ]]; then
    status=0
    nf-test test --profile "${profile}" --update-snapshot --verbose --tap update.tap || status=$?
    echo "created=true" >> "${output}"
    exit "${status}"
fi

status=0
if (( ${#with_snapshot[@]} > 0 )); then
    nf-test test --profile "${profile}" --ci --verbose --tap ci.tap "${with_snapshot[@]}" || status=$?
fi
if (( ${#without_snapshot[@]} > 0 )); then
    for test in "${without_snapshot[@]}"; do
        echo "::warning file=${test}::no snapshot committed: this run creates ${test}.snap (artifact nf-test-snapshots-*); review it and commit it"
    done
    nf-test test --profile "${profile}" --verbose --tap create.tap "${without_snapshot[@]}" || status=$?
    echo "created=true" >> "${output}"
fi
exit "${status}"
