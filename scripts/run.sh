#!/usr/bin/env bash
# Install Retouch into ./.venv (first run only) and start the bot with the settings in ./.env.
# Arguments go to the bot, e.g. `scripts/run.sh --sync` to publish slash commands globally.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check .
exec "$VENV/bin/python" -m bot "$@"
