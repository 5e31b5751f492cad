"""The operations HTTP server: `/healthz` for the container health check, `/metrics` for Prometheus.

Loopback only by default (`METRICS_HOST`); `METRICS_PORT=0` turns it off. It runs inside the entry
point's resource scope and reads everything it reports at request time: the gateway state through a
callable, the database through a real write-lock attempt, whether any model can edit (the model
lifecycle's `live_model_problem`), and the metrics registry of this app.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from bot.observability.probes import WriteProbe
from bot.storage import Storage

log = logging.getLogger(__name__)

# The container health check gives the whole request 5 s; the database gets most of it.
HEALTH_DB_TIMEOUT = 3.0
SHUTDOWN_TIMEOUT = 1.0

Connected = Callable[[], bool]
# Why no edit can succeed (every model shut down or unsold here), or None.
LiveModels = Callable[[], str | None]


async def health_problems(
    connected: Connected, database: WriteProbe, live_models: LiveModels | None = None
) -> list[str]:
    """Why the bot is unhealthy right now; empty when healthy. A bot with no live model is
    unhealthy: it is connected, but every edit a member asks for is refused."""
    problems = []
    if not connected():
        problems.append("gateway not connected")
    db_problem = await database.problem(HEALTH_DB_TIMEOUT)
    if db_problem is not None:
        problems.append(db_problem)
    if live_models is not None and (model_problem := live_models()) is not None:
        problems.append(model_problem)
    return problems


def build_ops_app(
    *,
    registry: CollectorRegistry,
    connected: Connected,
    storage: Storage,
    live_models: LiveModels | None = None,
) -> web.Application:
    """The aiohttp application with `/healthz` and `/metrics` (separate from `OpsServer` for tests)."""
    database = WriteProbe(storage)

    async def healthz(request: web.Request) -> web.Response:
        problems = await health_problems(connected, database, live_models)
        if problems:
            return web.json_response({"status": "unhealthy", "reason": "; ".join(problems)}, status=503)
        return web.json_response({"status": "ok"})

    async def metrics(request: web.Request) -> web.Response:
        # generate_latest walks the registry synchronously; it is small, so no thread is needed.
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


def _listen_advice(exc: OSError) -> str:
    """Which setting to change when the ops server cannot listen: the host for a name that does not
    resolve or an address this machine does not have, else the port (taken, or privileged)."""
    if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
        return "set METRICS_HOST to an address of this machine (127.0.0.1, or 0.0.0.0 for every interface)"
    return "set METRICS_PORT to a free port, or 0"


class OpsServer:
    """Serves an ops app on `host:port` (port 0 picks a free one; see `port` once started)."""

    def __init__(self, app: web.Application, *, host: str, port: int) -> None:
        self._app = app
        self._host = host
        self._requested_port = port
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        # No access log: a scraper hitting /metrics every 15 s would drown everything else.
        self._runner = web.AppRunner(self._app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await self._runner.setup()
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self._host, self._requested_port))
        except OSError as exc:
            log.error(
                "cannot serve health and metrics on %s:%d (%s): %s",
                self._host,
                self._requested_port,
                exc.strerror,
                _listen_advice(exc),
            )
            sock.close()
            await self._runner.cleanup()
            raise OpsUnavailable(exc.strerror or type(exc).__name__) from exc
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        log.info("health and metrics on http://%s:%d (/healthz, /metrics)", self._host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class OpsUnavailable(Exception):
    """The health and metrics server cannot listen where METRICS_HOST/METRICS_PORT say (already
    logged): a settings problem, not the network to Discord."""


@asynccontextmanager
async def serve_ops(
    *,
    host: str,
    port: int,
    registry: CollectorRegistry,
    connected: Connected,
    storage: Storage,
    live_models: LiveModels | None = None,
) -> AsyncIterator[OpsServer | None]:
    """Run the ops server for the duration of the block; yields None when `port` is 0 (disabled)."""
    if port == 0:
        log.info("health and metrics server disabled (METRICS_PORT=0)")
        yield None
        return
    server = OpsServer(
        build_ops_app(registry=registry, connected=connected, storage=storage, live_models=live_models),
        host=host,
        port=port,
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
