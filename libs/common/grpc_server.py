"""The grpc.aio server every gRPC service uses: the standard health service, readiness, the drain. A service's life
around it (prepare, background work, signals, close) is :class:`chatplane.common.runtime.ServiceRuntime`'s."""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from chatplane.common import tracing
from chatplane.common.grpc_metrics import ActiveCalls, ServerMetricsInterceptor
from chatplane.common.settings import GrpcServiceSettings
from chatplane.common.tls import AccessPolicy, TlsSettings

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
    """Run a service's main coroutine on uvloop: its event loop in C costs less CPU per callback than asyncio's, and a
    streamed gRPC message is several (README, "Performance")."""
    import uvloop

    return uvloop.run(main)


class GrpcService:
    """A running grpc.aio server with its health servicer.

    ``service_names`` are the fully qualified gRPC service names reported through ``grpc.health.v1``; the overall
    status ("") follows them. Start NOT_SERVING until :meth:`set_serving` says the service is ready. :attr:`state`
    (``starting``, ``serving``, ``draining``) is the service's one readiness: what health reports and what a servicer
    that refuses work while not serving reads.

    ``access`` lists the identities allowed per method (:class:`chatplane.common.tls.AccessPolicy`). With the
    CHATPLANE_TLS_* files the server listens with mutual TLS only and enforces it; the settings' ``health_port`` then adds a
    plaintext listener that serves the health service alone (Kubernetes' gRPC probes cannot speak TLS).
    """

    def __init__(
        self,
        service_names: list[str],
        *,
        settings: GrpcServiceSettings | None = None,
        access: dict[str, set[str]] | None = None,
        interceptors=(),
    ) -> None:
        self.active = ActiveCalls()  # calls doing work (not health or stats watches): what a drain waits for
        self.tls = TlsSettings().files()
        self.policy = AccessPolicy(access or {}, enforce=self.tls is not None)
        self._health_address = settings.health_address() if settings is not None else None
        # Tracing (when on) outermost, so that the metrics interceptor and the servicer run inside the call's span;
        # the access check inside the metrics, so that refusals are counted.
        chain = [*tracing.server_interceptors(), ServerMetricsInterceptor(self.active), self.policy, *interceptors]
        self.server = grpc.aio.server(options=server_options(settings), interceptors=chain)
        self.health = health.aio.HealthServicer()
        self.service_names = ["", *service_names]
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port: int | None = None
        self.state = "starting"
        self._health_server: grpc.aio.Server | None = None

    async def start(self, address: str) -> int:
        health_address = self._health_address
        for name in self.service_names:
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self.tls is not None:
            self.port = self.server.add_secure_port(address, self.tls.server_credentials())
        else:
            self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise RuntimeError(f"cannot listen on {address}")
        await self.server.start()
        if health_address and self.tls is not None:
            self._health_server = grpc.aio.server(options=SERVER_OPTIONS)
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self._health_server)
            if self._health_server.add_insecure_port(health_address) == 0:
                raise RuntimeError(f"cannot listen on {health_address}")
            await self._health_server.start()
        return self.port

    async def set_serving(self, serving: bool = True) -> None:
        self.state = "serving" if serving else "starting"
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in self.service_names:
            await self.health.set(name, status)

    async def stop(self, grace: float) -> None:
        """Drain: report NOT_SERVING (clients watching the health service move away at once), let the calls under
        way finish for at most ``grace`` seconds, then close (watch streams, which never end by themselves, and
        whatever did not finish are cancelled)."""
        self.state = "draining"
        await self.health.enter_graceful_shutdown()
        if not await self.active.wait_idle(grace):
            log.warning("drain grace over with calls still running", extra={"calls": self.active.count})
        await self.server.stop(WATCHES_CLOSE_SECONDS)
        if self._health_server is not None:
            await self._health_server.stop(0)
