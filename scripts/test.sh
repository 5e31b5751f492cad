#!/usr/bin/env bash
# Install Retouch with its test tools into ./.venv (first run only) and run lint, the type checker and
# the whole test suite.
# Extra arguments go to pytest, e.g. `scripts/test.sh -k ledger`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[dev]"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
"$VENV/bin/mypy"
exec "$VENV/bin/python" -m pytest "$@"
