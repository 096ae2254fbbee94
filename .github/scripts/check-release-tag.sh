#!/usr/bin/env bash
# Check a release tag against the versions the images and the pipeline carry, exactly:
# the tag is VERSION or vVERSION, where VERSION is pyproject.toml's version, and
# nextflow.config's params.container_tag and manifest.version are VERSION too. So v0.1.0 and
# 0.1.0 release 0.1.0, while v0.1.0-rc1, v0.1.01 or v0.1.0.post1 do not (an rc tag needs an
# rc version, e.g. 0.2.0rc1 tagged v0.2.0rc1). Prints VERSION on success.
#
# Usage: .github/scripts/check-release-tag.sh TAG [PYPROJECT [NEXTFLOW_CONFIG]]
# Exit: 0 match, 1 mismatch (a ::error:: line says which). Used by release-images.yml,
# tested by tests/python/test_pipeline_release.py.
set -euo pipefail

if [[ $# -lt 1 || $# -gt 3 ]]; then
    echo "usage: $0 TAG [PYPROJECT [NEXTFLOW_CONFIG]]" >&2
    exit 2
fi
tag="$1"
pyproject="${2:-pyproject.toml}"
config="${3:-nextflow.config}"

version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "${pyproject}")"
if [[ -z "${version}" ]]; then
    echo >&2 "::error::no version = \"...\" line in ${pyproject}"
    exit 1
fi
if [[ "${tag}" != "${version}" && "${tag}" != "v${version}" ]]; then
    echo >&2 "::error::tag ${tag} is not ${version} or v${version} (${pyproject} version)"
    exit 1
fi
container_tag="$(sed -n "s/^[[:space:]]*container_tag[[:space:]]*=[[:space:]]*'\([^']*\)'.*$/\1/p" "${config}")"
if [[ "${container_tag}" != "${version}" ]]; then
    echo >&2 "::error::${config} params.container_tag is '${container_tag}', not ${version}"
    exit 1
fi
manifest_version="$(sed -n "s/^[[:space:]]*version[[:space:]]*=[[:space:]]*'\([^']*\)'.*$/\1/p" "${config}")"
if [[ "${manifest_version}" != "${version}" ]]; then
    echo >&2 "::error::${config} manifest.version is '${manifest_version}', not ${version}"
    exit 1
fi
echo "${version}"
