"""OpenTelemetry traces: one trace per request from the gateway through auth, conversation and inference, and on
through Kafka (``traceparent`` in the event envelope and message headers) to consumers and Celery jobs.

Off unless an OTLP endpoint is configured with the standard variables (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``; ``OTEL_EXPORTER_OTLP_PROTOCOL``, ``OTEL_SERVICE_NAME``,
``OTEL_TRACES_SAMPLER``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_SDK_DISABLED`` are honoured by the SDK). While off, no
interceptor is installed and nothing costs anything on the request path.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
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

    Servers and channels created afterwards get the gRPC tracing interceptors; Celery publishes and runs jobs with
    the caller's trace context when Celery is installed."""
    _state["provider"] = tracer_provider
    _connect_celery()


def uninstall() -> None:
    """Tests: stop tracing new servers, channels and jobs."""
    _state["provider"] = None


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


# --- Celery: context through task headers ---------------------------------------------------------------------------

_CELERY_TOKENS: dict[str, tuple[Any, Any]] = {}


def _connect_celery() -> None:
    try:
        from celery import signals
    except ImportError:
        return
    signals.before_task_publish.connect(_before_publish, weak=False, dispatch_uid="chatplane-tracing-publish")
    signals.task_prerun.connect(_task_prerun, weak=False, dispatch_uid="chatplane-tracing-prerun")
    signals.task_postrun.connect(_task_postrun, weak=False, dispatch_uid="chatplane-tracing-postrun")


def _before_publish(headers: dict | None = None, **_: Any) -> None:
    if headers is not None and enabled():
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        headers.update(carrier)


def _task_prerun(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if not enabled() or task_id is None or task is None:
        return
    request = getattr(task, "request", None)
    carrier = {k: getattr(request, k, None) for k in ("traceparent", "tracestate")}
    parent = propagate.extract({k: v for k, v in carrier.items() if isinstance(v, str)})
    span = tracer().start_span(
        f"job {task.name}", context=parent, kind=trace.SpanKind.CONSUMER, attributes={"celery.task_name": task.name}
    )
    token = otel_context.attach(trace.set_span_in_context(span, parent))
    _CELERY_TOKENS[task_id] = (span, token)


def _task_postrun(task_id: str | None = None, state: str | None = None, **_: Any) -> None:
    entry = _CELERY_TOKENS.pop(task_id, None) if task_id else None
    if entry is None:
        return
    span, token = entry
    if state:
        span.set_attribute("celery.state", state)
        if state == "FAILURE":
            span.set_status(trace.Status(trace.StatusCode.ERROR))
    span.end()
    otel_context.detach(token)
