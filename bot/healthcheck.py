"""`python -m bot.healthcheck`: exit 0 only while the bot's gateway heartbeat file is fresh.

The bot rewrites the file every few seconds while it is connected to Discord, so a stale or missing
file means "not connected" (still starting, disconnected, or hung) — what a container health check
should report.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

MAX_AGE_SECONDS = 60


def main() -> int:
    path = Path(os.environ.get("DATA_DIR", "./data")) / "heartbeat"
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:
        sys.stderr.write("unhealthy: no heartbeat (not connected to Discord yet)\n")
        return 1
    if age > MAX_AGE_SECONDS:
        sys.stderr.write(f"unhealthy: last heartbeat {age:.0f} s ago\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
