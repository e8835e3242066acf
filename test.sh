#!/usr/bin/env bash
# Create .venv from requirements.txt when missing, then run the test suite.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
    .venv/bin/pip install -q -r requirements.txt
fi
exec .venv/bin/python -m pytest -q tests "$@"
