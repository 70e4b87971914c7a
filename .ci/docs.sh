#!/usr/bin/env bash
# Build the documentation site as a user would: install the docs extra into the given venv (one that already has the
# package, e.g. .venv-ci5) and run `mkdocs build --strict` (a broken link, a page missing from the nav or an API
# object mkdocstrings cannot find fails the build). Also checks that the generated parts of README.md and docs/
# (CLI reference, benchmark tables) are current.
#   .ci/docs.sh .venv-ci5
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:?usage: .ci/docs.sh VENV (a virtual environment with transformers-parrot installed)}
# (already installed: no pip run, which could move a --no-deps transformers back to an older release)
"$VENV/bin/python" -c "import mkdocs, material, mkdocstrings" 2>/dev/null || "$VENV/bin/pip" install -q -e ".[docs]"
"$VENV/bin/python" utils/generate_docs.py --check
SITE=$(mktemp -d)
trap 'rm -rf "$SITE"' EXIT
NO_MKDOCS_2_WARNING=1 "$VENV/bin/python" -m mkdocs build --strict --site-dir "$SITE"
echo "docs: mkdocs build --strict passed"
