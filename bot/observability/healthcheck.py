"""`python -m bot.observability.healthcheck`: exit 0 only while the bot reports itself healthy.

With the ops server on (`METRICS_PORT`, default 8080) this asks `/healthz`, which is healthy only
while the gateway is connected, the database takes writes and some model can edit. With
`METRICS_PORT=0` it falls back to the heartbeat file the bot rewrites every few seconds while
connected. Standard library only, so the container check starts fast and never imports discord.py.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

MAX_AGE_SECONDS = 60
REQUEST_TIMEOUT = 4.0  # inside the Dockerfile's 5 s HEALTHCHECK timeout
ANY_ADDRESS = ("0.0.0.0", "::", "")


def healthz_url(env: Mapping[str, str]) -> str | None:
    """The `/healthz` URL to ask, or None when the ops server is off."""
    port = env.get("METRICS_PORT", "").strip() or "8080"
    if port.isdigit():  # read as the bot reads it: "00" is 0 (off), "08080" is 8080
        port = str(int(port))
    if port == "0":
        return None
    host = env.get("METRICS_HOST", "").strip() or "127.0.0.1"
    if host in ANY_ADDRESS:
        host = "127.0.0.1"  # listening everywhere includes loopback
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/healthz"


def check_http(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=REQUEST_TIMEOUT) as resp:
            return 0 if resp.status == 200 else 1
    except urllib.error.HTTPError as exc:
        sys.stderr.write(f"unhealthy: {exc.read(500).decode('utf-8', 'replace')}\n")
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"unhealthy: health endpoint unreachable ({type(exc).__name__})\n")
    return 1


def heartbeat_file(data_dir: Path) -> Path:
    """This host's heartbeat file. Named for the host: scaled replicas share one DATA_DIR volume, and
    a dead one must not look healthy because another one's heartbeat is fresh (each container has
    its own host name, which its HEALTHCHECK, run inside it, sees too)."""
    return data_dir / f"heartbeat-{socket.gethostname()}"


def check_heartbeat(data_dir: Path) -> int:
    """0 while the bot's last heartbeat is recent. The file holds the bot's own `time.time()` when it
    wrote it, so both ends read one clock (the file's mtime, the fallback, is the filesystem's)."""
    path = heartbeat_file(data_dir)
    try:
        text = path.read_text().strip()
        written = float(text) if text.replace(".", "", 1).isdigit() else path.stat().st_mtime
        age = time.time() - written
    except OSError:
        sys.stderr.write("unhealthy: no heartbeat (not connected to Discord yet)\n")
        return 1
    if age > MAX_AGE_SECONDS:
        sys.stderr.write(f"unhealthy: last heartbeat {age:.0f} s ago\n")
        return 1
    return 0


def main() -> int:
    url = healthz_url(os.environ)
    if url is not None:
        return check_http(url)
    return check_heartbeat(Path(os.environ.get("DATA_DIR", "./data")))


if __name__ == "__main__":
    sys.exit(main())
