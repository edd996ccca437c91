"""The gateway's metrics: an ASGI middleware that sees every request as the client does (served on the metrics port).

What the client sees is measured on the bytes leaving the app: a request's status and duration (a stream: until its
last byte), streams in flight, clients that went away first. What only the routes know they report to the request's
:class:`Observation`: each stream generator calls :meth:`Observation.token` right after it sent an event with
generated content (text or a tool call's piece), which gives the time to the first token and between tokens; the
error handler calls :meth:`Observation.reject` with a 429's error code (rate limit or quota).

Labels stay bounded: ``route`` is the route's path template (``/v1/conversations/{conversation_id}``, never the
path itself; unmatched paths are ``other``), ``model`` is set by the routes only once the model is known to be one
the inference service serves, ``api_key`` is the API key's id (``jwt`` for access tokens, empty before
authentication). Routes add to the request's :class:`Observation` through :func:`observe`.
"""

from __future__ import annotations

import logging
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatplane.common import tracing

TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 20, 30, 60)
ITL_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2.5, 5)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

REQUESTS = Counter(
    "chatplane_gateway_requests_total",
    "HTTP requests answered, by route template, method, status and model.",
    ["route", "method", "status", "model"],
)
LATENCY = Histogram(
    "chatplane_gateway_request_duration_seconds",
    "Time from the request's arrival to the last byte of its answer (a stream: its end).",
    ["route", "method", "status"],
    buckets=LATENCY_BUCKETS,
)
TENANT_REQUESTS = Counter(
    "chatplane_gateway_tenant_requests_total",
    "Authenticated requests by API key id and status class (2xx, 4xx, 5xx).",
    ["api_key", "status_class"],
)
TTFT = Histogram(
    "chatplane_gateway_time_to_first_token_seconds",
    "Streams: time from the request's arrival to the first token event sent to the client.",
    ["route", "model", "api_key"],
    buckets=TTFT_BUCKETS,
)
ITL = Histogram(
    "chatplane_gateway_inter_token_latency_seconds",
    "Streams: time between two token events sent to the client.",
    ["route", "model"],
    buckets=ITL_BUCKETS,
)
TOKENS = Counter(
    "chatplane_gateway_tokens_total",
    "Tokens of finished generations: direction prompt (in) or completion (out), by model and API key id.",
    ["model", "api_key", "direction"],
)
REJECTIONS = Counter(
    "chatplane_gateway_rejections_total",
    "Requests refused with 429: reason rate_limit_exceeded or insufficient_quota, by API key id.",
    ["reason", "api_key"],
)
STREAMS_IN_FLIGHT = Gauge(
    "chatplane_gateway_streams_in_flight", "Server-sent event streams being sent now.", ["route"]
)
DISCONNECTS = Counter(
    "chatplane_gateway_client_disconnects_total",
    "Requests whose client went away before the answer was complete (the upstream work is cancelled).",
    ["route"],
)
COMPLETION_RECORDS_DROPPED = Counter(
    "chatplane_gateway_completion_records_dropped_total",
    "Completion records never written to the gateway's spool (their usage is lost): reason buffer_full (writing kept "
    "failing and the oldest were dropped) or shutdown (still queued when the gateway stopped).",
    ["reason"],
)

access_log = logging.getLogger("chatplane.gateway.access")

_REJECTION_REASONS = {"rate_limit_exceeded", "insufficient_quota"}


@dataclass(slots=True)
class Observation:
    """What the routes tell the middleware about one request."""

    model: str = ""
    api_key: str = ""
    user_id: str = ""
    request_id: str = ""  # a model call's id (chatcmpl-..., msg-...), in the access log line
    rejection: str = ""  # a 429's error code
    scope: Any = field(default=None, repr=False)  # the request's (None: a detached observation, nothing measured)
    started: float = 0.0  # time.perf_counter() at the request's arrival
    _last_token: float | None = None
    _itl: Any = None  # the inter-token latency histogram's child of this request, looked up once

    def principal(self, api_key_id: str, user_id: str = "") -> None:
        self.api_key = api_key_id or "jwt"
        self.user_id = user_id

    def token(self) -> None:
        """A stream just sent an event with generated content: the first is the time to first token, each later
        one an inter-token latency (one clock read and one histogram observation: the per-token hot path)."""
        if self.scope is None:
            return
        now = time.perf_counter()
        if self._last_token is None:
            route = _route(self.scope)
            TTFT.labels(route, self.model, self.api_key).observe(now - self.started)
            tracing.annotate(**{"chatplane.time_to_first_token_s": now - self.started})
            self._itl = ITL.labels(route, self.model)
        else:
            self._itl.observe(now - self._last_token)
        self._last_token = now

    def reject(self, reason: str) -> None:
        """The request is answered 429 for ``reason`` (its error code: rate_limit_exceeded, insufficient_quota)."""
        self.rejection = reason

    def tokens(self, model: str, prompt: int, completion: int) -> None:
        """A generation finished with this usage (``model``: the served model that produced it)."""
        self.model = model or self.model
        tracing.annotate(**{"gen_ai.response.model": self.model, "gen_ai.usage.input_tokens": prompt,
                            "gen_ai.usage.output_tokens": completion})
        if prompt > 0:
            TOKENS.labels(self.model, self.api_key, "prompt").inc(prompt)
        if completion > 0:
            TOKENS.labels(self.model, self.api_key, "completion").inc(completion)


_current: ContextVar[Observation | None] = ContextVar("chatplane_observation", default=None)


def observe() -> Observation:
    """The current request's observation (a detached one outside a request, e.g. in unit tests of a route)."""
    return _current.get() or Observation()


def _route(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "other"


class MetricsMiddleware:
    """Outermost middleware: every request, with the timings of what is sent; and its access log line (one JSON
    line per request, with the route, status, duration, API key id, user id and model call id), unless
    ``access_log`` is off."""

    def __init__(self, app: ASGIApp, access_log: bool = True) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        observation = Observation(scope=scope, started=started)
        token = _current.set(observation)
        status = 500
        stream = False
        complete = False
        gone = False

        async def receive_watch() -> Message:
            nonlocal gone
            message = await receive()
            if message["type"] == "http.disconnect" and not complete:
                gone = True
            return message

        async def send_watch(message: Message) -> None:
            nonlocal status, stream, complete
            if message["type"] == "http.response.body":
                if not message.get("more_body", False):
                    complete = True
            elif message["type"] == "http.response.start":
                status = message["status"]
                stream = any(k == b"content-type" and v.startswith(b"text/event-stream")
                             for k, v in message.get("headers", ()))
                if stream:
                    STREAMS_IN_FLIGHT.labels(_route(scope)).inc()
            await send(message)

        try:
            await self.app(scope, receive_watch, send_watch)
        finally:
            _current.reset(token)
            route = _route(scope)
            if stream:
                STREAMS_IN_FLIGHT.labels(route).dec()
            if gone or (stream and not complete):
                DISCONNECTS.labels(route).inc()
            code = str(status)
            elapsed = time.perf_counter() - started
            REQUESTS.labels(route, scope["method"], code, observation.model).inc()
            LATENCY.labels(route, scope["method"], code).observe(elapsed)
            if observation.api_key:
                TENANT_REQUESTS.labels(observation.api_key, f"{code[0]}xx").inc()
            if status == 429:
                reason = observation.rejection if observation.rejection in _REJECTION_REASONS else "other"
                REJECTIONS.labels(reason, observation.api_key).inc()
            if self.access_log and access_log.isEnabledFor(logging.INFO):
                access_log.info("request", extra={
                    "method": scope["method"], "path": scope["path"], "route": route, "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                    "api_key_id": observation.api_key, "user_id": observation.user_id,
                    "request_id": observation.request_id, "model": observation.model,
                    "client_gone": gone or (stream and not complete),
                })


def instrument_tracing(app: ASGIApp) -> None:
    """A server span per request (when tracing is on), the parent of the gRPC calls the request makes."""
    if not tracing.enabled():
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=tracing.provider(),
        excluded_urls="healthz,readyz,metrics",
        exclude_spans=["receive", "send"],  # not one span per streamed chunk
    )
