"""Prometheus metrics for one app instance.

`Metrics` is a `JobObserver` (registered in `build_services`) plus one hook the cogs call right after
they defer (`observe_ack`). Every series lives in the instance's own `CollectorRegistry`, never the
process-global one, so tests and benchmarks can build as many apps as they like.

Series (prometheus-client adds `_total` to counters):

* `retouch_jobs_started_total{model}`, `retouch_jobs_finished_total{state,provider,model}`,
  `retouch_job_errors_total{error}` (why failed/cancelled jobs ended: an error class or code),
  `retouch_jobs_adopted_total{how}` (live jobs picked up from an earlier run at start-up, or from a
  dead process by a takeover: requeued, resumed, delivering, released, quarantined or cancelled)
* `retouch_ack_latency_seconds` (INTERACTION_CREATE → defer), `retouch_provider_latency_seconds
  {provider,model,outcome}`, `retouch_job_duration_seconds{state}` (job start → finished)
* `retouch_credits_spent_total{provider,model}`, `retouch_provider_errors_total{provider,error}`
* `retouch_jobs_in_flight`, `retouch_jobs_queued`, `retouch_jobs_held` (every job this process holds:
  running, waiting, or to be posted again; with PostgreSQL, the jobs whose leases it renews),
  `retouch_fleet_processes` (live bot processes on the database as this one last counted them, itself
  included; 1 on SQLite), `retouch_clock_apart_seconds` (how far this host's clock is from the other
  processes' as the shard leases measure it; over a twelfth of JOB_LEASE_SECONDS, it takes over no jobs),
  `retouch_fleet_clocks_off` (other live processes whose clocks are that far off: their jobs are left
  to them, not taken over),
  `retouch_gateway_shards` (gateway shards this process has running),
  `retouch_circuit_state{provider}` (0 closed,
  1 half-open, 2 open), and each provider's adaptive concurrency (`bot.concurrency`):
  `retouch_provider_concurrency_limit{provider}` (calls allowed in flight now) and
  `retouch_provider_calls_in_flight{provider}`, read at scrape time from whatever `watch` was given;
  absent when nothing was.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bot.concurrency import LimitState
from bot.jobs.model import JobObserver, JobState

log = logging.getLogger(__name__)

# Discord's hard window is 3 s; the interesting range is well below it.
ACK_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0)
# Image edits take 10-60 s typically, up to the 240 s call timeout.
PROVIDER_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 240.0)
JOB_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0)
CIRCUIT_VALUES = {"closed": 0.0, "half_open": 1.0, "half-open": 1.0, "open": 2.0}
NO_PROVIDER = "none"  # label for jobs that failed before any provider was chosen
# A gauge source that keeps failing is logged with its traceback once, then one line this often.
FAILING_SOURCE_REPEAT_SECONDS = 600.0

Count = Callable[[], int]
Seconds = Callable[[], float]
CircuitStates = Callable[[], Mapping[str, str]]
Concurrency = Callable[[], Mapping[str, LimitState]]
T = TypeVar("T")


class _LiveCollector(Collector):
    """Gauges read at scrape time from the running app (nothing to keep in sync).

    A source that raises is left out of that scrape (and logged): /metrics must keep answering. The
    log says it once with the traceback, then one line at most every `FAILING_SOURCE_REPEAT_SECONDS`
    while it keeps failing, and once when it reads again: a scraper asks every few seconds, and a
    traceback each time would bury everything else.
    """

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._failing: dict[str, float] = {}  # source name -> when its failure was last logged
        self.in_flight: Count | None = None
        self.queued: Count | None = None
        self.held: Count | None = None
        self.processes: Count | None = None
        self.shards: Count | None = None
        self.clock_apart: Seconds | None = None
        self.clocks_off: Count | None = None
        self.circuits: CircuitStates | None = None
        self.concurrency: Concurrency | None = None

    def _read(self, name: str, source: Callable[[], T]) -> T | None:
        try:
            value = source()
        except Exception as exc:
            now, since = self._monotonic(), self._failing.get(name)
            if since is None:
                log.warning(
                    "metrics: could not read %s; left out of /metrics until it reads", name, exc_info=True
                )
                self._failing[name] = now
            elif now - since >= FAILING_SOURCE_REPEAT_SECONDS:
                log.warning("metrics: %s still cannot be read (%s)", name, type(exc).__name__)
                self._failing[name] = now
            return None
        if self._failing.pop(name, None) is not None:
            log.info("metrics: %s reads again", name)
        return value

    def collect(self) -> Iterator[Metric]:
        for name, doc, source in (
            (
                "retouch_jobs_in_flight",
                "Edit jobs running now (at a provider or being delivered)",
                self.in_flight,
            ),
            ("retouch_jobs_queued", "Edit jobs waiting for a slot", self.queued),
            (
                "retouch_jobs_held",
                "Edit jobs this process holds (running, waiting, to post again)",
                self.held,
            ),
            (
                "retouch_fleet_processes",
                "Live bot processes on the database, this one included",
                self.processes,
            ),
            ("retouch_gateway_shards", "Discord gateway shards this process has running", self.shards),
            (
                "retouch_clock_apart_seconds",
                "Seconds between this host's clock and the other bot processes' (leases need them close)",
                self.clock_apart,
            ),
            (
                "retouch_fleet_clocks_off",
                "Other live bot processes whose clocks are too far off: their jobs are not taken over",
                self.clocks_off,
            ),
        ):
            if source is not None and (value := self._read(name, source)) is not None:
                gauge = GaugeMetricFamily(name, doc)
                gauge.add_metric([], float(value))
                yield gauge
        if (
            self.circuits is not None
            and (circuits := self._read("retouch_circuit_state", self.circuits)) is not None
        ):
            states = GaugeMetricFamily(
                "retouch_circuit_state",
                "Provider circuit breaker: 0 closed, 1 half-open, 2 open",
                labels=["provider"],
            )
            for provider, state in sorted(circuits.items()):
                level = CIRCUIT_VALUES.get(str(state).lower())
                if level is None:
                    log.debug("unknown circuit state %r for %s", state, provider)
                    continue
                states.add_metric([provider], level)
            yield states
        if (
            self.concurrency is not None
            and (limits := self._read("retouch_provider_concurrency_limit", self.concurrency)) is not None
        ):
            yield from _concurrency_gauges(limits)


def _concurrency_gauges(limits: Mapping[str, LimitState]) -> Iterator[Metric]:
    limit = GaugeMetricFamily(
        "retouch_provider_concurrency_limit",
        "Calls a provider may have in flight now (its adaptive limit)",
        labels=["provider"],
    )
    in_flight = GaugeMetricFamily(
        "retouch_provider_calls_in_flight", "Calls at a provider now", labels=["provider"]
    )
    for provider, state in sorted(limits.items()):
        limit.add_metric([provider], float(state.limit))
        in_flight.add_metric([provider], float(state.in_flight))
    yield limit
    yield in_flight


class Metrics(JobObserver):
    """Counters and histograms for jobs, providers and interactions, in a private registry."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.jobs_started = Counter("retouch_jobs_started", "Edit jobs started", ["model"], registry=r)
        self.jobs = Counter(
            "retouch_jobs_finished",
            "Finished edit jobs by final state",
            ["state", "provider", "model"],
            registry=r,
        )
        self.adopted = Counter(
            "retouch_jobs_adopted",
            "Live jobs picked up from an earlier run or a dead process, by what became of them",
            ["how"],
            registry=r,
        )
        self.job_errors = Counter(
            "retouch_job_errors", "Failed or cancelled jobs by error class or code", ["error"], registry=r
        )
        self.ack_latency = Histogram(
            "retouch_ack_latency_seconds",
            "INTERACTION_CREATE to the bot's defer",
            buckets=ACK_BUCKETS,
            registry=r,
        )
        self.provider_latency = Histogram(
            "retouch_provider_latency_seconds",
            "One provider call, submit to result",
            ["provider", "model", "outcome"],
            buckets=PROVIDER_BUCKETS,
            registry=r,
        )
        self.job_duration = Histogram(
            "retouch_job_duration_seconds",
            "Edit job end to end: credits reserved to result delivered (or failure)",
            ["state"],
            buckets=JOB_BUCKETS,
            registry=r,
        )
        self.credits_spent = Counter(
            "retouch_credits_spent", "Credits charged for delivered edits", ["provider", "model"], registry=r
        )
        self.provider_errors = Counter(
            "retouch_provider_errors",
            "Failed provider calls by error class",
            ["provider", "error"],
            registry=r,
        )
        self._live = _LiveCollector(monotonic)
        r.register(self._live)

    def watch(
        self,
        *,
        in_flight: Count | None = None,
        queued: Count | None = None,
        held: Count | None = None,
        processes: Count | None = None,
        shards: Count | None = None,
        clock_apart: Seconds | None = None,
        clocks_off: Count | None = None,
        circuits: CircuitStates | None = None,
        concurrency: Concurrency | None = None,
    ) -> None:
        """Read the counts given (`in_flight()`, `queued()`, `held()`, `processes()`, `shards()`,
        `clock_apart()`, `clocks_off()`),
        `circuits()` ({provider: closed|half_open|open}) and `concurrency()` ({provider: LimitState}) at
        every scrape. A source not given keeps the one given before."""
        for name, count in (
            ("in_flight", in_flight),
            ("queued", queued),
            ("held", held),
            ("processes", processes),
            ("shards", shards),
            ("clock_apart", clock_apart),
            ("clocks_off", clocks_off),
        ):
            if count is not None:
                setattr(self._live, name, count)
        if circuits is not None:
            self._live.circuits = circuits
        if concurrency is not None:
            self._live.concurrency = concurrency

    def render(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)

    # -- the hook the cogs call ---------------------------------------------------------------------

    def observe_ack(self, created_at: dt.datetime, now: dt.datetime | None = None) -> float:
        """Record INTERACTION_CREATE → defer, from the interaction's snowflake time. Returns seconds.

        The snowflake is stamped by Discord's clock and has millisecond resolution; a host clock
        running behind Discord's would give negative values, which are clamped to zero.
        """
        now = now or dt.datetime.now(dt.UTC)
        seconds = max(0.0, (now - created_at).total_seconds())
        self.ack_latency.observe(seconds)
        return seconds

    # -- JobObserver --------------------------------------------------------------------------------

    def job_started(self, job_id: str, model: str) -> None:
        self.jobs_started.labels(model).inc()

    def jobs_adopted(self, how: str, count: int) -> None:
        self.adopted.labels(how).inc(count)

    def provider_finished(self, provider: str, model: str, seconds: float, error: str | None) -> None:
        outcome = "ok" if error is None else "error"
        self.provider_latency.labels(provider, model, outcome).observe(seconds)
        if error is not None:
            self.provider_errors.labels(provider, error).inc()

    def job_finished(
        self,
        job_id: str,
        state: JobState,
        *,
        model: str,
        provider: str | None,
        charged: int,
        seconds: float,
        error: str | None,
    ) -> None:
        provider_label = provider or NO_PROVIDER
        self.jobs.labels(state, provider_label, model).inc()
        self.job_duration.labels(state).observe(seconds)
        if charged > 0:
            self.credits_spent.labels(provider_label, model).inc(charged)
        if error is not None:
            self.job_errors.labels(error).inc()
