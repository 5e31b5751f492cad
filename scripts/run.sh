#!/usr/bin/env bash
# Install Retouch into ./.venv and start the bot with the settings in ./.env.
# Arguments go to the bot, e.g. `scripts/run.sh --sync` to publish slash commands globally.
#
# The install (which needs the package index) runs only when the virtualenv is new or pyproject.toml
# (the dependencies) changed since the last one: the stamp below holds pyproject.toml's hash. Every other
# start runs the code here directly (`python -m bot` imports ./bot, not an installed copy), so it needs
# no network beyond Discord and the providers.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh
STAMP="$VENV/.retouch-installed"
# The venv's Python version goes into the stamp too: a venv rebuilt with another Python over the old one
# keeps the stamp but not the installed packages.
wanted=$("$VENV/bin/python" -c 'import hashlib, sys; print(hashlib.sha256(open("pyproject.toml", "rb").read() + sys.version.encode()).hexdigest())')
if [ "$(cat "$STAMP" 2>/dev/null)" != "$wanted" ]; then
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check .
  echo "$wanted" >"$STAMP"
fi
exec "$VENV/bin/python" -m bot "$@"
