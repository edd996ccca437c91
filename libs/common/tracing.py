"""OpenTelemetry traces: one trace per request from the gateway through auth, conversation and inference, and on
through Kafka (``traceparent`` in the event envelope and message headers) to consumers and Celery jobs.

Off unless an OTLP endpoint is configured with the standard variables (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``; ``OTEL_EXPORTER_OTLP_PROTOCOL``, ``OTEL_SERVICE_NAME``,
``OTEL_TRACES_SAMPLER``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_SDK_DISABLED`` are honoured by the SDK). While off, no
interceptor is installed and nothing costs anything on the request path.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import propagate, trace

log = logging.getLogger(__name__)

TRACER_NAME = "chatplane"
_state: dict[str, Any] = {"provider": None}


def enabled() -> bool:
    return _state["provider"] is not None


def provider() -> Any:
    return _state["provider"]


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME, tracer_provider=_state["provider"])


def _endpoint_configured() -> bool:
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def setup_tracing(service: str) -> bool:
    """Turn tracing on for this process when an OTLP endpoint is configured; returns whether it is on."""
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true" or not _endpoint_configured():
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol and protocol.startswith("http"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or service})
    sdk_provider = TracerProvider(resource=resource)  # the sampler comes from OTEL_TRACES_SAMPLER
    sdk_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    install(sdk_provider)
    log.info("tracing on", extra={"otel_service_name": resource.attributes.get("service.name")})
    return True


def install(tracer_provider: Any) -> None:
    """Use ``tracer_provider`` for this process's spans (``setup_tracing`` does it; tests pass an in-memory one).

    Servers and channels created afterwards get the gRPC tracing interceptors; where the process has them, Celery
    publishes and runs jobs in the caller's trace and database engines created afterwards trace their statements
    (OpenTelemetry's own instrumentations, :func:`_instrument_libraries`)."""
    _state["provider"] = tracer_provider
    _instrument_libraries(tracer_provider)


def uninstall() -> None:
    """Tests: stop tracing new servers, channels, jobs and engines."""
    _state["provider"] = None
    for instrumentor in _instrumented():
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()


# --- Celery and SQLAlchemy: OpenTelemetry's instrumentations --------------------------------------------------------


def _instrumented() -> list[Any]:
    """The instrumentors of the libraries this process has (an image installs only its own service's)."""
    found: list[Any] = []
    if importlib.util.find_spec("celery") is not None:
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        found.append(CeleryInstrumentor())
    if importlib.util.find_spec("sqlalchemy") is not None:
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

        found.append(SQLAlchemyInstrumentor())
    return found


def _instrument_libraries(tracer_provider: Any) -> None:
    """Celery: a PRODUCER span per job sent, whose context travels in the message headers, and a CONSUMER span per
    job run, its child. SQLAlchemy: a CLIENT span per statement (and connect) of every engine created afterwards
    (:func:`chatplane.common.db.make_engine` creates its engines through ``sqlalchemy.ext.asyncio``'s attribute, which
    the instrumentation wraps). Their Prometheus figures stay ours (``metrics.JobMetrics``, ``chatplane_db_*``): the
    instrumentations record theirs through OpenTelemetry's metrics API, which this platform does not export.

    The SQLAlchemy instrumentation declares ``sqlalchemy < 2.1``; it works with our 2.1 (tests/test_tracing.py
    asserts its spans), so its version check is skipped."""
    for instrumentor in _instrumented():
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument(tracer_provider=tracer_provider, skip_dep_check=True)


# --- gRPC ---------------------------------------------------------------------------------------------------------


def server_interceptors() -> list[Any]:
    if not enabled():
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

    return [aio_server_interceptor(tracer_provider=_state["provider"], filter_=filters.negate(filters.health_check()))]


def client_interceptors() -> list[Any]:
    if not enabled():
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors, filters

    return aio_client_interceptors(tracer_provider=_state["provider"], filter_=filters.negate(filters.health_check()))


def annotate(**attributes: Any) -> None:
    """Set attributes (model, token counts, time to first token) on the current span, when one is recording."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes({k: v for k, v in attributes.items() if v is not None and v != ""})


# --- Kafka: the W3C traceparent in the event envelope and message headers -------------------------------------------
# Ours, not opentelemetry-instrumentation-kafka-python: (1) no release of it matches the OpenTelemetry we pin (the
# latest, 0.66b1, requires opentelemetry-instrumentation==0.66b1; we have vLLM's 0.66b2); (2) it traces
# KafkaProducer.send in the sender's current context, which for our outbox relay is the relay's loop, not the
# request that wrote the event in its transaction seconds earlier: that context travels in the envelope, written
# with the event (events.envelope); (3) on the consuming side it wraps only KafkaConsumer.__next__, and our consumers
# poll() in batches (consumer.EventConsumer), so it would make no consumer spans at all.


def current_traceparent() -> str:
    """The current trace context as a W3C ``traceparent`` value ("" when there is no recording span)."""
    if not trace.get_current_span().get_span_context().is_valid:
        return ""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent", "")


@contextmanager
def consumer_span(topic: str, group: str, event_type: str, traceparent: str) -> Iterator[Any]:
    """A CONSUMER span for one event, a child of the span that produced it (its envelope's ``traceparent``)."""
    if not enabled():
        yield None
        return
    parent = propagate.extract({"traceparent": traceparent}) if traceparent else None
    with tracer().start_as_current_span(
        f"{topic} process",
        context=parent,
        kind=trace.SpanKind.CONSUMER,
        attributes={
            "messaging.system": "kafka",
            "messaging.destination.name": topic,
            "messaging.consumer.group.name": group,
            "messaging.operation.type": "process",
            "chatplane.event_type": event_type,
        },
    ) as span:
        yield span
