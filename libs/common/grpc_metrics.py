"""The gRPC server interceptor that records every call in the metrics of :mod:`chatplane.common.metrics` (requests,
latency, in flight, stream messages) and counts the calls doing work (:class:`ActiveCalls`, what a drain waits for).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from typing import Any

import grpc

from chatplane.common import tracing
from chatplane.common.metrics import GRPC_IN_FLIGHT, GRPC_LATENCY, GRPC_REQUESTS, GRPC_STREAM_MESSAGES


def _code_of(exc: BaseException | None, context: Any) -> str:
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return "CANCELLED"
    code = None
    with suppress(Exception):
        code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):  # grpc.aio may report the raw value
        for status in grpc.StatusCode:
            if status.value[0] == code:
                return status.name
    return "OK" if exc is None else "UNKNOWN"


class ActiveCalls:
    """How many calls a server is working on (watch streams left out), and a way to wait until there are none."""

    __slots__ = ("count", "_idle")

    def __init__(self) -> None:
        self.count = 0
        self._idle: asyncio.Event | None = None

    def enter(self) -> None:
        self.count += 1

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0 and self._idle is not None:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """True once no call is running, False if some still are after ``timeout`` seconds."""
        if self.count == 0:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self._idle = None


def is_watch(service: str, method: str) -> bool:
    """Health checks and long-lived watch streams: not work, left out of the call metrics and of a drain's wait
    (probes every few seconds would drown the figures; a watch never ends by itself)."""
    return service.startswith(("grpc.health.", "grpc.reflection.")) or method.startswith("Watch")


class ServerMetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts, times and tracks in-flight calls of every (unary or server-streaming) method but watches
    (:func:`is_watch`); keeps ``active`` (:class:`ActiveCalls`) up to date."""

    def __init__(self, active: ActiveCalls | None = None) -> None:
        self.active = active or ActiveCalls()
        # Each method's wrapped handler, built on its first call: a server's handlers do not change while it runs,
        # and building one (closures, label lookups) cost more than the rest of a short call's metrics.
        self._wrapped: dict[str, Any] = {}

    async def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        wrapped = self._wrapped.get(details.method)
        if wrapped is None:
            wrapped = self._wrapped[details.method] = self._wrap(handler, details.method)
        return wrapped

    def _wrap(self, handler: Any, full_method: str) -> Any:
        service, _, method = full_method.lstrip("/").rpartition("/")
        if is_watch(service, method):
            return handler
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _unary(handler.unary_unary, service, method, self.active),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _stream(handler.unary_stream, service, method, self.active),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


def _unary(behavior: Callable, service: str, method: str, active: ActiveCalls) -> Callable:
    in_flight = GRPC_IN_FLIGHT.labels(service, method)
    latency = GRPC_LATENCY.labels(service, method)

    async def wrapper(request: Any, context: Any) -> Any:
        started = time.perf_counter()
        in_flight.inc()
        active.enter()
        error: BaseException | None = None
        try:
            return await behavior(request, context)
        except BaseException as exc:
            error = exc
            raise
        finally:
            active.leave()
            in_flight.dec()
            latency.observe(time.perf_counter() - started)
            GRPC_REQUESTS.labels(service, method, _code_of(error, context)).inc()

    return wrapper


def _stream(behavior: Callable, service: str, method: str, active: ActiveCalls) -> Callable:
    in_flight = GRPC_IN_FLIGHT.labels(service, method)
    latency = GRPC_LATENCY.labels(service, method)
    sent = GRPC_STREAM_MESSAGES.labels(service, method)

    async def wrapper(request: Any, context: Any) -> AsyncIterator[Any]:
        started = time.perf_counter()
        in_flight.inc()
        active.enter()
        error: BaseException | None = None
        responses = behavior(request, context)
        traced = tracing.enabled()
        first = True
        messages = 0  # counted here and added once at the end: no lock per message
        try:
            if not inspect.isasyncgen(responses):
                # A servicer that writes with context.write(): timed and counted as a call, messages not seen here.
                await responses
                return
            async for response in responses:
                messages += 1
                if traced:
                    if first:
                        first = False
                        tracing.annotate(**{"chatplane.time_to_first_message_s": time.perf_counter() - started})
                    _annotate_usage(response)
                yield response
        except BaseException as exc:
            error = exc
            raise
        finally:
            # Close the servicer's stream now (its finally aborts the engine request), not when it is collected.
            if inspect.isasyncgen(responses):
                with suppress(Exception):
                    await responses.aclose()
            if messages:
                sent.inc(messages)
            active.leave()
            in_flight.dec()
            latency.observe(time.perf_counter() - started)
            GRPC_REQUESTS.labels(service, method, _code_of(error, context)).inc()

    return wrapper


def _annotate_usage(response: Any) -> None:
    """Model and token counts on the call's span, from the messages that carry them (inference's last
    GenerateResponse, conversation's ``done`` event)."""
    has = getattr(response, "HasField", None)
    if has is None:
        return
    with suppress(ValueError):
        if has("usage"):
            tracing.annotate(**{
                "gen_ai.response.model": getattr(response, "model", ""),
                "gen_ai.usage.input_tokens": response.usage.prompt_tokens,
                "gen_ai.usage.output_tokens": response.usage.completion_tokens,
            })
            return
    with suppress(ValueError):
        if has("done"):
            tracing.annotate(**{
                "gen_ai.usage.input_tokens": response.done.prompt_tokens,
                "gen_ai.usage.output_tokens": response.done.completion_tokens,
            })
        elif has("started"):
            tracing.annotate(**{"gen_ai.request.model": response.started.model})
