"""The ops server: /healthz follows the gateway and the database, /metrics shows what jobs did."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from bot.app import Services, build_services, split_with_fleet, start_services
from bot.catalog import load_catalog
from bot.concurrency import LimitState
from bot.config import ConfigError, load_settings
from bot.jobs.model import EditOutcome
from bot.lifecycle import ModelLifecycle
from bot.observability import healthcheck, ops
from bot.observability import metrics as metrics_module
from bot.observability.metrics import Metrics
from bot.providers.http import RetryPolicy
from bot.providers.openai import OpenAIProvider
from bot.services.edits import EditJob, EditOptions, Upload
from bot.sharding import FleetPlace, StaticShards
from bot.storage import Storage
from tests.catalogs import NOVEMBER_CATALOG
from tests.fakes.openai_server import FakeOpenAI, Fault
from tests.fixtures import serving, settings_for
from tests.harness import TEST_CATALOG
from tests.live import NoResult, run_to_end

DATA = Path(__file__).parent / "data"
FAST = RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.02, max_retry_after=1.0)
MODEL = "gpt-image-1.5"


class Gateway:
    """Stands in for `RetouchBot.connected`."""

    def __init__(self) -> None:
        self.up = True

    def __call__(self) -> bool:
        return self.up


fake = serving(FakeOpenAI)


@pytest.fixture
async def services(fake: FakeOpenAI, storage: Storage, tmp_path: Path) -> AsyncIterator[Services]:
    """The real service graph (as build_services wires it) on the fake OpenAI."""
    settings = settings_for(tmp_path, fake, ALLOWED_GUILD_IDS="1")  # the operator approved the test server
    async with aiohttp.ClientSession() as session:
        provider = OpenAIProvider(session, fake.api_key, fake.base_url, policy=FAST, call_timeout=5)
        yield build_services(settings, TEST_CATALOG, storage, {"openai": provider})


@pytest.fixture
async def ops_client(storage: Storage) -> AsyncIterator[Callable[..., object]]:
    """Builds the ops app around a stand-in gateway and the real storage, served on 127.0.0.1."""
    clients: list[TestClient] = []

    async def make(
        gateway: Gateway, metrics: Metrics | None = None, live_models: ops.LiveModels | None = None
    ) -> TestClient:
        app = ops.build_ops_app(
            registry=(metrics or Metrics()).registry,
            connected=gateway,
            storage=storage,
            live_models=live_models,
        )
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def run_job(services: Services) -> EditOutcome:
    data = (DATA / "chelsea.png").read_bytes()

    async def read() -> bytes:
        return data

    job = EditJob(
        guild_id=1,
        user_id=2,
        channel_id=3,
        uploads=[Upload("image", "photo.png", len(data), read)],
        options=EditOptions(prompt="make it a watercolour"),
        upload_limit=10 * 1024 * 1024,
    )
    return await run_to_end(services.edits, job)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample in a Prometheus text page, keyed by (name, labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(page: dict, name: str, **labels: str) -> float | None:
    return page.get((name, frozenset(labels.items())))


# -- /healthz -----------------------------------------------------------------------------------------


async def test_healthz_is_ok_while_gateway_is_up_and_database_writable(ops_client) -> None:
    client = await ops_client(Gateway())
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}


async def test_healthz_is_503_while_the_gateway_is_down_and_recovers(ops_client) -> None:
    gateway = Gateway()
    client = await ops_client(gateway)
    gateway.up = False
    resp = await client.get("/healthz")
    assert resp.status == 503
    assert await resp.json() == {"status": "unhealthy", "reason": "gateway not connected"}
    gateway.up = True
    assert (await client.get("/healthz")).status == 200


async def test_healthz_is_503_when_the_database_cannot_be_written(ops_client, storage: Storage) -> None:
    client = await ops_client(Gateway())
    await storage.close()
    resp = await client.get("/healthz")
    assert resp.status == 503
    assert (await resp.json())["reason"].startswith("database not writable")


@pytest.mark.sqlite_only
async def test_healthz_reports_a_locked_database_as_busy_without_breaking_storage(
    ops_client, storage: Storage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ops, "HEALTH_DB_TIMEOUT", 0.1)
    client = await ops_client(Gateway())
    other = sqlite3.connect(tmp_path / "retouch.sqlite3", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        resp = await client.get("/healthz")
        assert resp.status == 503
        assert (await resp.json())["reason"] == "database busy"
    finally:
        other.execute("ROLLBACK")
        other.close()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while (await client.get("/healthz")).status != 200:
        assert loop.time() < deadline, "healthz did not recover after the lock was released"
    # The abandoned probe finished its transaction: storage still takes writes.
    await storage.ledger.ensure_account(1, 2, starting_credits=5)


async def test_healthz_is_503_once_no_model_can_edit(ops_client) -> None:
    """The November catalog (the 1.x line only) on an OpenAI bot: up and connected, but from
    2026-12-01 every model is shut down and every edit is refused, so the bot is not healthy."""
    day = [dt.date(2026, 11, 30)]
    lifecycle = ModelLifecycle(load_catalog(NOVEMBER_CATALOG), frozenset({"openai"}), lambda: day[0])
    client = await ops_client(Gateway(), live_models=lifecycle.live_model_problem)
    assert (await client.get("/healthz")).status == 200
    day[0] = dt.date(2026, 12, 7)
    resp = await client.get("/healthz")
    assert resp.status == 503
    assert await resp.json() == {"status": "unhealthy", "reason": "no live model"}


async def test_healthz_names_every_problem_at_once(ops_client, storage: Storage) -> None:
    gateway = Gateway()
    gateway.up = False
    client = await ops_client(gateway)
    await storage.close()
    reason = (await (await client.get("/healthz")).json())["reason"]
    assert reason.startswith("gateway not connected; database not writable")


async def test_ops_server_serves_on_loopback_and_stops(storage: Storage) -> None:
    app = ops.build_ops_app(registry=Metrics().registry, connected=Gateway(), storage=storage)
    server = ops.OpsServer(app, host="127.0.0.1", port=0)
    await server.start()
    url = f"http://127.0.0.1:{server.port}/healthz"
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as resp:
            assert resp.status == 200
        await server.stop()
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(url)


async def test_port_zero_disables_the_ops_server(storage: Storage) -> None:
    async with ops.serve_ops(
        host="127.0.0.1", port=0, registry=Metrics().registry, connected=Gateway(), storage=storage
    ) as server:
        assert server is None


async def test_container_healthcheck_exits_by_healthz_status(storage: Storage) -> None:
    gateway = Gateway()
    app = ops.build_ops_app(registry=Metrics().registry, connected=gateway, storage=storage)
    server = ops.OpsServer(app, host="127.0.0.1", port=0)
    await server.start()
    try:
        url = healthcheck.healthz_url({"METRICS_PORT": str(server.port), "METRICS_HOST": "0.0.0.0"})
        assert url == f"http://127.0.0.1:{server.port}/healthz"
        assert await asyncio.to_thread(healthcheck.check_http, url) == 0
        gateway.up = False
        assert await asyncio.to_thread(healthcheck.check_http, url) == 1
    finally:
        await server.stop()
    assert await asyncio.to_thread(healthcheck.check_http, url) == 1  # nothing listening


def test_container_healthcheck_falls_back_to_the_heartbeat_when_metrics_are_off(tmp_path: Path) -> None:
    assert healthcheck.healthz_url({"METRICS_PORT": "0"}) is None
    # Read as the bot reads the setting (a number): "00" is off there too, "08080" port 8080.
    assert healthcheck.healthz_url({"METRICS_PORT": "00"}) is None
    assert healthcheck.healthz_url({"METRICS_PORT": "08080"}) == "http://127.0.0.1:8080/healthz"
    assert healthcheck.healthz_url({}) == "http://127.0.0.1:8080/healthz"
    assert healthcheck.check_heartbeat(tmp_path) == 1
    beat = healthcheck.heartbeat_file(tmp_path)
    beat.write_text(str(int(time.time())))  # what the bot writes
    assert healthcheck.check_heartbeat(tmp_path) == 0
    beat.write_text(str(int(time.time()) - 3600))  # an hour-old heartbeat
    assert healthcheck.check_heartbeat(tmp_path) == 1


def test_a_replicas_healthcheck_reads_its_own_heartbeat_not_a_sibling_sharing_the_volume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(healthcheck.socket, "gethostname", lambda: "retouch-2")
    healthcheck.heartbeat_file(tmp_path).write_text(str(int(time.time())))  # a live sibling
    monkeypatch.setattr(healthcheck.socket, "gethostname", lambda: "retouch-1")
    assert healthcheck.check_heartbeat(tmp_path) == 1  # this one never connected: not healthy
    settings = load_settings({**BASE_ENV, "DATA_DIR": str(tmp_path)}, dotenv=False)
    assert settings.heartbeat_path == tmp_path / "heartbeat-retouch-1"  # what this one writes


# -- /metrics -----------------------------------------------------------------------------------------


async def test_metrics_show_jobs_latency_credits_and_errors_after_jobs_ran(
    services: Services, fake: FakeOpenAI, ops_client
) -> None:
    delivered = await run_job(services)
    fake.fail_next(Fault.SERVER_ERROR)
    with pytest.raises(NoResult, match="ref `"):
        await run_job(services)
    fake.fail_next(Fault.MODERATION_BLOCKED)
    with pytest.raises(NoResult, match="ref `"):
        await run_job(services)

    client = await ops_client(Gateway(), services.metrics)
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=")
    page = samples(await resp.text())

    labels = {"provider": "openai", "model": MODEL}
    assert value(page, "retouch_jobs_started_total", model=MODEL) == 3
    assert value(page, "retouch_jobs_finished_total", state="delivered", **labels) == 1
    assert value(page, "retouch_jobs_finished_total", state="failed", **labels) == 2
    assert value(page, "retouch_credits_spent_total", **labels) == delivered.charged > 0
    assert value(page, "retouch_provider_errors_total", provider="openai", error="ServerError") == 1
    assert value(page, "retouch_provider_errors_total", provider="openai", error="ProviderRejected") == 1
    assert value(page, "retouch_job_errors_total", error="ServerError") == 1
    assert value(page, "retouch_provider_latency_seconds_count", outcome="ok", **labels) == 1
    assert value(page, "retouch_provider_latency_seconds_count", outcome="error", **labels) == 2
    assert value(page, "retouch_job_duration_seconds_count", state="delivered") == 1
    assert value(page, "retouch_job_duration_seconds_count", state="failed") == 2
    assert value(page, "retouch_ack_latency_seconds_count") == 0
    assert value(page, "retouch_jobs_in_flight") == 0
    assert value(page, "retouch_jobs_queued") == 0
    assert value(page, "retouch_jobs_held") == 0
    assert value(page, "retouch_fleet_processes") == 1  # SQLite: this process alone
    # A refusal is an answer: the breaker counts it healthy, so one server error leaves it closed.
    assert value(page, "retouch_circuit_state", provider="openai") == 0


async def test_circuit_state_shows_a_provider_the_router_stopped_using(
    services: Services, fake: FakeOpenAI
) -> None:
    fake.fail_always(Fault.SERVER_ERROR)
    for _ in range(services.edits.router.breaker.threshold):
        with pytest.raises(NoResult, match="ref `"):
            await run_job(services)
    page = samples(services.metrics.render().decode())
    assert value(page, "retouch_circuit_state", provider="openai") == 2


async def test_jobs_in_flight_counts_running_jobs(services: Services, fake: FakeOpenAI) -> None:
    fake.fail_next(Fault.HANG)
    job = asyncio.create_task(run_job(services))
    await _wait_for(lambda: services.edits.in_flight == 1)
    page = samples(services.metrics.render().decode())
    assert value(page, "retouch_jobs_in_flight") == 1
    assert value(page, "retouch_jobs_held") == 1
    job.cancel()
    await asyncio.gather(job, return_exceptions=True)


async def _wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:  # noqa: ASYNC109
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not met"
        await asyncio.sleep(0.01)


def test_ack_latency_is_measured_from_the_interaction_snowflake() -> None:
    metrics = Metrics()
    now = dt.datetime(2026, 11, 21, 12, 0, 0, tzinfo=dt.UTC)
    assert metrics.observe_ack(now - dt.timedelta(milliseconds=120), now) == pytest.approx(0.12)
    # Discord's clock ahead of ours: clamp instead of recording a negative latency.
    assert metrics.observe_ack(now + dt.timedelta(milliseconds=30), now) == 0.0
    page = samples(metrics.render().decode())
    assert value(page, "retouch_ack_latency_seconds_count") == 2
    assert value(page, "retouch_ack_latency_seconds_bucket", le="0.25") == 2
    assert value(page, "retouch_ack_latency_seconds_bucket", le="0.1") == 1


def test_circuit_state_follows_whatever_the_routing_layer_reports() -> None:
    metrics = Metrics()
    states = {"openai": "closed", "atlascloud": "open"}
    metrics.watch(circuits=lambda: states)
    page = samples(metrics.render().decode())
    assert value(page, "retouch_circuit_state", provider="openai") == 0
    assert value(page, "retouch_circuit_state", provider="atlascloud") == 2
    states["openai"] = "half_open"
    assert value(samples(metrics.render().decode()), "retouch_circuit_state", provider="openai") == 1


def test_each_providers_concurrency_limit_and_calls_in_flight_are_gauges() -> None:
    metrics = Metrics()
    limits = {"openai": LimitState("openai", limit=32, ceiling=64, in_flight=3)}
    metrics.watch(concurrency=lambda: limits)
    page = samples(metrics.render().decode())
    assert value(page, "retouch_provider_concurrency_limit", provider="openai") == 32
    assert value(page, "retouch_provider_calls_in_flight", provider="openai") == 3
    limits["openai"] = LimitState("openai", limit=5, ceiling=64, in_flight=5, refused_at=6)
    page = samples(metrics.render().decode())
    assert value(page, "retouch_provider_concurrency_limit", provider="openai") == 5


async def test_the_apps_metrics_show_how_many_processes_the_shard_leases_last_counted(
    services: Services,
) -> None:
    page = samples(services.metrics.render().decode())
    assert value(page, "retouch_fleet_processes") == 1 and value(page, "retouch_clock_apart_seconds") == 0
    assert value(page, "retouch_fleet_clocks_off") == 0
    clocks = {services.edits.engine.owner: 12.5, "slow": 40.0, "right": 0.0}
    split_with_fleet(services)(FleetPlace(3, 1, 12.5, clocks))  # what a shard lease round tells
    page = samples(services.metrics.render().decode())
    assert value(page, "retouch_fleet_processes") == 3
    assert value(page, "retouch_clock_apart_seconds") == 12.5
    assert services.edits.engine.clock_apart == 12.5  # the engine heard it too (it guards takeovers)
    assert services.edits.engine.clocks_off == {"slow"}  # and leaves alone a live wrong clock's jobs
    assert value(page, "retouch_fleet_clocks_off") == 1


class AwayFleet(StaticShards):
    """A shared shard source whose database is away at start-up: its join fails quietly and the
    background rounds join later, as bot.sharding.ShardCoordinator.join does."""

    shared = True  # type: ignore[assignment]


@pytest.mark.parametrize("sharing", [AwayFleet(1), StaticShards(1)], ids=["shared", "alone"])
async def test_a_process_that_has_not_heard_the_fleets_clocks_at_start_up_takes_nothing_over_yet(
    services: Services, sharing: StaticShards
) -> None:
    engine = services.edits.engine
    await start_services(services, sharing, recommended=1)
    try:
        # Shared: nothing is taken over until a shard round says how the clocks stand. Alone: nothing
        # to wait for.
        assert engine.clock_heard is not sharing.shared
        split_with_fleet(services)(FleetPlace(1, 0, 0.0, {engine.owner: 0.0}))  # the first round
        assert engine.clock_heard
    finally:
        await services.edits.drain(0)


async def test_the_apps_metrics_show_the_routers_limits(services: Services) -> None:
    page = samples(services.metrics.render().decode())
    assert value(page, "retouch_provider_concurrency_limit", provider="openai") == (
        services.edits.router.limiter.limit("openai")
    )


def test_a_broken_live_source_is_left_out_instead_of_failing_the_scrape() -> None:
    def broken() -> int:
        raise AttributeError("engine went away")

    metrics = Metrics()
    metrics.watch(in_flight=broken, queued=lambda: 4)
    page = samples(metrics.render().decode())
    assert value(page, "retouch_jobs_in_flight") is None
    assert value(page, "retouch_jobs_queued") == 4


def test_a_failing_live_source_logs_its_traceback_once_not_at_every_scrape(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A scraper asks every few seconds: a traceback each time would flood the log."""

    def broken() -> int:
        raise AttributeError("engine went away")

    metrics = Metrics()
    metrics.watch(in_flight=broken, queued=lambda: 4)
    for _ in range(20):
        assert value(samples(metrics.render().decode()), "retouch_jobs_queued") == 4
    logged = [r for r in caplog.records if r.name == "bot.observability.metrics"]
    assert len(logged) == 1 and logged[0].exc_info is not None


def test_a_failing_live_source_logs_a_line_every_ten_minutes_and_its_recovery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now, broken = [1000.0], [True]

    def in_flight() -> int:
        if broken[0]:
            raise AttributeError("engine went away")
        return 3

    caplog.set_level(logging.INFO, logger="bot.observability.metrics")
    metrics = Metrics(monotonic=lambda: now[0])
    metrics.watch(in_flight=in_flight)

    def said() -> list[tuple[str, bool]]:
        return [(r.getMessage(), r.exc_info is not None) for r in caplog.records]

    for _ in range(20):  # scrapes, seconds apart
        metrics.render()
        now[0] += 5
    assert said() == [
        ("metrics: could not read retouch_jobs_in_flight; left out of /metrics until it reads", True)
    ]
    now[0] = 1000.0 + metrics_module.FAILING_SOURCE_REPEAT_SECONDS
    metrics.render()
    metrics.render()
    assert said()[1:] == [("metrics: retouch_jobs_in_flight still cannot be read (AttributeError)", False)]
    broken[0] = False
    assert value(samples(metrics.render().decode()), "retouch_jobs_in_flight") == 3
    metrics.render()
    assert said()[2:] == [("metrics: retouch_jobs_in_flight reads again", False)]
    broken[0] = True  # a new failure is a new story: its traceback again
    metrics.render()
    assert said()[3][1] is True and len(said()) == 4


def test_each_app_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.job_started("a", MODEL)
    assert value(samples(first.render().decode()), "retouch_jobs_started_total", model=MODEL) == 1
    assert value(samples(second.render().decode()), "retouch_jobs_started_total", model=MODEL) is None


# -- settings -----------------------------------------------------------------------------------------

BASE_ENV = {"DISCORD_TOKEN": "t" * 20, "OPENAI_API_KEY": "sk-x"}


def test_ops_settings_have_safe_defaults() -> None:
    settings = load_settings(BASE_ENV)
    assert (settings.metrics_port, settings.metrics_host) == (8080, "127.0.0.1")
    assert settings.log_format == "plain"
    assert settings.audit_channel_id is None


def test_ops_settings_are_read_and_validated() -> None:
    settings = load_settings(
        {
            **BASE_ENV,
            "METRICS_PORT": "0",
            "METRICS_HOST": "0.0.0.0",
            "LOG_FORMAT": "JSON",
            "AUDIT_CHANNEL_ID": "42",
        }
    )
    assert (settings.metrics_port, settings.metrics_host, settings.log_format) == (0, "0.0.0.0", "json")
    assert settings.audit_channel_id == 42
    with pytest.raises(ConfigError) as caught:
        load_settings({**BASE_ENV, "METRICS_PORT": "70000", "LOG_FORMAT": "xml", "AUDIT_CHANNEL_ID": "x"})
    problems = "\n".join(caught.value.problems)
    assert "METRICS_PORT must be at most 65535" in problems
    assert "LOG_FORMAT must be one of plain, json" in problems
    assert "AUDIT_CHANNEL_ID must be a number" in problems
