"""The grpc.aio server bootstrap every gRPC service uses: standard health service, graceful drain on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import suppress
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from chatplane.common import tracing
from chatplane.common.metrics import ActiveCalls, ServerMetricsInterceptor
from chatplane.common.settings import GrpcServiceSettings

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]
# After the drain, watch streams (health, engine stats) that never end by themselves get this long to close.
WATCHES_CLOSE_SECONDS = 0.5


def server_options(settings: GrpcServiceSettings | None) -> list[tuple[str, int]]:
    """SERVER_OPTIONS plus connection aging: a client's connection is closed (GOAWAY) after
    ``max_connection_age_seconds`` so that it connects again and re-resolves its target (a backstop: clients that
    balance by themselves do not depend on it); calls under way get ``max_connection_age_grace_seconds`` to end."""
    options = list(SERVER_OPTIONS)
    if settings is not None and settings.max_connection_age_seconds > 0:
        options += [
            ("grpc.max_connection_age_ms", int(settings.max_connection_age_seconds * 1000)),
            ("grpc.max_connection_age_grace_ms", int(settings.max_connection_age_grace_seconds * 1000)),
        ]
    return options


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run a service's main coroutine on uvloop: the event loop in C costs about half the CPU of asyncio's for each
    callback, and a streamed gRPC message is several (README, "Performance")."""
    import uvloop

    return uvloop.run(main)


class GrpcService:
    """A running grpc.aio server with its health servicer.

    ``service_names`` are the fully qualified gRPC service names reported through ``grpc.health.v1``; the overall
    status ("") follows them. Start NOT_SERVING until :meth:`set_serving` says the service is ready.
    """

    def __init__(
        self, service_names: list[str], *, settings: GrpcServiceSettings | None = None, interceptors=()
    ) -> None:
        self.active = ActiveCalls()  # calls doing work (not health or stats watches): what a drain waits for
        # Tracing (when on) outermost, so that the metrics interceptor and the servicer run inside the call's span.
        chain = [*tracing.server_interceptors(), ServerMetricsInterceptor(self.active), *interceptors]
        self.server = grpc.aio.server(options=server_options(settings), interceptors=chain)
        self.health = health.aio.HealthServicer()
        self.service_names = ["", *service_names]
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port: int | None = None

    async def start(self, address: str) -> int:
        for name in self.service_names:
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise RuntimeError(f"cannot listen on {address}")
        await self.server.start()
        return self.port

    async def set_serving(self, serving: bool = True) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in self.service_names:
            await self.health.set(name, status)

    async def stop(self, grace: float) -> None:
        """Drain: report NOT_SERVING (clients watching the health service move away at once), let the calls under
        way finish for at most ``grace`` seconds, then close (watch streams, which never end by themselves, and
        whatever did not finish are cancelled)."""
        await self.health.enter_graceful_shutdown()
        if not await self.active.wait_idle(grace):
            log.warning("drain grace over with calls still running", extra={"calls": self.active.count})
        await self.server.stop(WATCHES_CLOSE_SECONDS)


async def run_until_signal(
    service: GrpcService,
    address: str,
    *,
    grace: float,
    on_ready: Callable[[], Awaitable[None]] | None = None,
    on_drain: Callable[[], None] | None = None,
    on_stop: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT, then drain. ``on_ready`` runs after the port is open, before SERVING;
    ``on_drain`` when the drain begins (refuse new work that others can take); ``on_stop`` after the server stopped."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    port = await service.start(address)
    log.info("listening", extra={"address": address, "port": port})
    ready_task = None
    try:
        if on_ready is not None:
            ready_task = asyncio.create_task(on_ready())
            waiter = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait({ready_task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if ready_task in done:
                ready_task.result()
        if not stop.is_set():
            await service.set_serving(True)
            log.info("serving")
            await stop.wait()
        log.info("draining", extra={"grace_seconds": grace})
    finally:
        if ready_task is not None and not ready_task.done():
            ready_task.cancel()
            with suppress(asyncio.CancelledError):
                await ready_task
        if on_drain is not None:
            on_drain()
        await service.stop(grace)
        if on_stop is not None:
            await on_stop()
        log.info("stopped")
