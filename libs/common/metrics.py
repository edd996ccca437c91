"""Prometheus metrics shared by the services: the metrics endpoint of gRPC services, the gRPC server metrics (their
interceptor is :mod:`chatplane.common.grpc_metrics`), database latency, the outbox backlog, Kafka and Celery figures.

Every metric is named ``chatplane_<component>_...`` and is documented in the README's metrics table. Labels are
bounded: gRPC service and method names, status codes, topics, consumer groups, task names; never user input.
Metrics live in prometheus_client's default registry (vLLM's ``vllm:*`` metrics are there too in the inference
process), so one endpoint per process shows everything. The Celery worker is the exception: its jobs run in prefork
children, so it uses prometheus_client's multiprocess mode (:func:`serve_worker_metrics`).
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

log = logging.getLogger(__name__)

# Streams of generated text last seconds to minutes; unary calls milliseconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
DB_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

# --- gRPC servers (every gRPC service) ------------------------------------------------------------------------------

GRPC_REQUESTS = Counter(
    "chatplane_grpc_server_requests_total",
    "gRPC calls handled, by service, method and status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
)
GRPC_LATENCY = Histogram(
    "chatplane_grpc_server_handling_seconds",
    "Time from the start of a gRPC call to its end (a streamed call: its last message).",
    ["grpc_service", "grpc_method"],
    buckets=LATENCY_BUCKETS,
)
GRPC_IN_FLIGHT = Gauge(
    "chatplane_grpc_server_in_flight",
    "gRPC calls (streams included) being handled now.",
    ["grpc_service", "grpc_method"],
)
GRPC_STREAM_MESSAGES = Counter(
    "chatplane_grpc_server_stream_messages_sent_total",
    "Messages sent on server streams (e.g. generated text chunks).",
    ["grpc_service", "grpc_method"],
)

# --- databases (auth, conversation) ---------------------------------------------------------------------------------

DB_LATENCY = Histogram(
    "chatplane_db_query_duration_seconds",
    "Time of one SQL statement, by kind (select, insert, update, delete, other).",
    ["operation"],
    buckets=DB_BUCKETS,
)

# --- the outbox and Kafka (events) ----------------------------------------------------------------------------------

OUTBOX_BACKLOG = Gauge("chatplane_outbox_backlog_events", "Events in this service's outbox not yet published.")
OUTBOX_AGE = Gauge(
    "chatplane_outbox_oldest_unsent_age_seconds", "Age of the oldest unpublished outbox event (0: none waiting)."
)
EVENTS_PRODUCED = Counter(
    "chatplane_kafka_events_produced_total", "Events published to Kafka (acknowledged by the broker).", ["topic"]
)
PUBLISH_FAILURES = Counter(
    "chatplane_kafka_publish_failures_total", "Outbox relay batches that failed (the events stay and are retried)."
)
EVENTS_CONSUMED = Counter(
    "chatplane_kafka_events_consumed_total",
    "Events read by a consumer group: outcome applied, or duplicate (already applied, skipped).",
    ["topic", "group", "outcome"],
)
CONSUMER_LAG = Gauge(
    "chatplane_kafka_consumer_lag",
    "Records the consumer group is behind, the largest over its partitions (approximate with Tansu).",
    ["group"],
)


def record_produced(topic: str, count: int = 1) -> None:
    EVENTS_PRODUCED.labels(topic).inc(count)


def record_consumed(topic: str, group: str, applied: bool) -> None:
    EVENTS_CONSUMED.labels(topic, group, "applied" if applied else "duplicate").inc()


def record_consumer_lag(group: str, kafka_consumer: Any) -> None:
    """The lag kafka-python measures while fetching (``records-lag-max``); call after a poll, in the poll thread."""
    try:
        fetch = kafka_consumer.metrics().get("consumer-fetch-manager-metrics", {})
    except Exception:  # noqa: BLE001 - a closed or broken consumer has no figures
        return
    lag = fetch.get("records-lag-max")
    if isinstance(lag, int | float) and lag == lag and lag not in (float("inf"), float("-inf")):
        CONSUMER_LAG.labels(group).set(max(0.0, float(lag)))


# --- serving ------------------------------------------------------------------------------------------------------


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


class MetricsServer:
    """The HTTP endpoint (``/metrics``, any path) of a gRPC service's process, in a daemon thread.

    Always the Prometheus text format: prometheus_client answers an OpenMetrics request (what Prometheus 2.x asks
    for first) with names escaped to underscores, which would turn vLLM's ``vllm:*`` into ``vllm_*`` and break
    every dashboard and autoscaler written for vLLM.
    """

    def __init__(self, port: int, host: str = "127.0.0.1", registry: CollectorRegistry = REGISTRY) -> None:
        app = make_wsgi_app(registry)

        def text_format(environ: dict, start_response: Callable) -> Any:
            environ["HTTP_ACCEPT"] = "text/plain; version=0.0.4"
            return app(environ, start_response)

        self._server = make_server(host, port, text_format, ThreadingWSGIServer, handler_class=_QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)
        self._thread.start()
        self.port = self._server.server_port
        log.info("metrics endpoint", extra={"address": f"{host}:{self.port}", "path": "/metrics"})

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve_metrics(port: int, host: str = "127.0.0.1", registry: CollectorRegistry = REGISTRY) -> MetricsServer | None:
    """Serve ``registry`` on ``host:port`` (the service's ``metrics_port`` setting; 0: off)."""
    if port <= 0:
        return None
    instrument_databases()
    try:
        return MetricsServer(port, host, registry)
    except OSError as exc:
        # A taken port must not take the service down with it (several stacks on one machine): no metrics, loudly.
        log.error("metrics endpoint not started", extra={"address": f"{host}:{port}", "error": str(exc)})
        return None


# --- database latency -----------------------------------------------------------------------------------------------

_DB_TIMER = "chatplane.metrics.started"
_OPERATIONS = {"select": "select", "insert": "insert", "update": "update", "delete": "delete", "with": "select"}


def _before_execute(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001
    conn.info.setdefault(_DB_TIMER, []).append(time.perf_counter())


def _after_execute(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001
    timers = conn.info.get(_DB_TIMER)
    if not timers:
        return
    elapsed = time.perf_counter() - timers.pop()
    keyword = statement.lstrip().split(None, 1)[0].lower() if statement.strip() else ""
    DB_LATENCY.labels(_OPERATIONS.get(keyword, "other")).observe(elapsed)


def _handle_error(exception_context) -> None:  # noqa: ANN001
    conn = exception_context.connection
    if conn is not None and conn.info.get(_DB_TIMER):
        conn.info[_DB_TIMER].pop()


def instrument_databases() -> bool:
    """Time every SQL statement of every SQLAlchemy engine in this process (idempotent); returns whether it did.

    Ours, next to OpenTelemetry's SQLAlchemy instrumentation (which makes the statements' spans while tracing is on):
    that one records no statement durations, only connection-pool usage, and through OpenTelemetry's metrics API,
    which this platform does not export; the dashboards read ``chatplane_db_query_duration_seconds`` from here.

    Only a process that has SQLAlchemy has statements to time: the gateway's and inference's images do not install
    it, and importing it there unconditionally made them exit at start (ModuleNotFoundError)."""
    if importlib.util.find_spec("sqlalchemy") is None:
        return False
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    if not event.contains(Engine, "before_cursor_execute", _before_execute):
        event.listen(Engine, "before_cursor_execute", _before_execute)
        event.listen(Engine, "after_cursor_execute", _after_execute)
        event.listen(Engine, "handle_error", _handle_error)
    return True


# --- outbox backlog -----------------------------------------------------------------------------------------------


class OutboxMonitor:
    """Samples the outbox (unsent events and the age of the oldest) every ``interval`` seconds into the gauges."""

    def __init__(self, engine: Any, interval: float = 5.0) -> None:
        self.engine = engine
        self.interval = interval
        self._task: asyncio.Task | None = None

    async def sample(self) -> tuple[int, float]:
        from sqlalchemy import column, func, select, table

        from chatplane.common.db import UTCDateTime, utcnow
        from chatplane.common.outbox import OUTBOX

        rows = table(OUTBOX, column("created_at", UTCDateTime()), column("sent_at", UTCDateTime()))
        query = select(func.count(), func.min(rows.c.created_at)).where(rows.c.sent_at.is_(None))
        async with self.engine.connect() as conn:
            count, oldest = (await conn.execute(query)).one()
        if isinstance(oldest, str):  # SQLite aggregates lose the column type
            from datetime import UTC, datetime

            oldest = datetime.fromisoformat(oldest)
            oldest = oldest if oldest.tzinfo else oldest.replace(tzinfo=UTC)
        age = (utcnow() - oldest).total_seconds() if oldest is not None else 0.0
        OUTBOX_BACKLOG.set(count)
        OUTBOX_AGE.set(max(0.0, age))
        return count, age

    async def _run(self) -> None:
        while True:
            try:
                await self.sample()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the database is away; try again next time
                log.debug("outbox sample failed", extra={"error": repr(exc)[:200]})
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="outbox-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


# --- Celery jobs (the conversation worker) --------------------------------------------------------------------------


class JobMetrics:
    """Job outcomes and durations, recorded by Celery signals in the prefork children. (OpenTelemetry's Celery
    instrumentation, which traces the jobs, records a run-time histogram only through OpenTelemetry's metrics API,
    which this platform does not export, and no outcomes.)"""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.jobs = Counter(
            "chatplane_jobs_total",
            "Celery jobs run, by task and outcome (succeeded, failed: for good, retried: will run again).",
            ["task", "outcome"],
            registry=registry,
        )
        self.duration = Histogram(
            "chatplane_job_duration_seconds",
            "Run time of one Celery job attempt, by task.",
            ["task"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=registry,
        )
        self._started: dict[str, float] = {}

    def connect(self) -> None:
        from celery import signals

        signals.worker_init.connect(self._known_tasks, weak=False)
        signals.task_prerun.connect(self._prerun, weak=False)
        signals.task_postrun.connect(self._postrun, weak=False)

    def _known_tasks(self, sender: Any = None, **_: Any) -> None:
        """Every task and outcome starts at 0 (so that "failed" has a series before the first failure)."""
        app = getattr(sender, "app", None)
        for name in getattr(app, "tasks", {}) if app is not None else ():
            if not name.startswith("celery."):
                for outcome in ("succeeded", "failed", "retried"):
                    self.jobs.labels(name, outcome)

    def _prerun(self, task_id: str | None = None, task: Any = None, **_: Any) -> None:
        if task_id:
            self._started[task_id] = time.perf_counter()

    def _postrun(self, task_id: str | None = None, task: Any = None, state: str | None = None, **_: Any) -> None:
        name = getattr(task, "name", None) or "unknown"
        started = self._started.pop(task_id, None) if task_id else None
        if started is not None:
            self.duration.labels(name).observe(time.perf_counter() - started)
        outcome = {"SUCCESS": "succeeded", "RETRY": "retried", "FAILURE": "failed"}.get(state or "", "failed")
        self.jobs.labels(name, outcome).inc()


def serve_worker_metrics(port: int, host: str = "127.0.0.1") -> JobMetrics | None:
    """The Celery worker's metrics: call before the worker starts its prefork children (0: off).

    The children write their figures to files in a private folder (prometheus_client's multiprocess mode); this
    process serves their sum.
    """
    if port <= 0:
        return None
    from prometheus_client import multiprocess, values

    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="chatplane-worker-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    values.ValueClass = values.get_value_class()  # metrics created from now on write to the folder
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    jobs = JobMetrics(registry=None)
    jobs.connect()
    try:
        MetricsServer(port, host, registry)
    except OSError as exc:
        log.error("metrics endpoint not started", extra={"address": f"{host}:{port}", "error": str(exc)})
    return jobs
