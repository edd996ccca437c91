"""Assembling the gRPC server around the core; also the in-process entry point for tests of other services."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from chatplane.common.grpc_server import GrpcService, run_until_signal
from chatplane.common.metrics import OutboxMonitor
from chatplane.conversation.service import ConversationCore
from chatplane.conversation.servicer import ConversationServicer
from chatplane.conversation.settings import ConversationSettings
from chatplane.protos.conversation.v1 import conversation_pb2, conversation_pb2_grpc

SERVICE_NAME = conversation_pb2.DESCRIPTOR.services_by_name["ConversationService"].full_name
# Who may call what (mutual TLS identities): the gateway alone; the jobs worker works on the database directly.
ACCESS = {f"/{SERVICE_NAME}/*": {"gateway"}}


async def create_server(settings: ConversationSettings) -> tuple[GrpcService, ConversationCore]:
    """The server (not started, NOT_SERVING) and its core. Call ``core.prepare()`` (migrations) before SERVING and
    ``core.close()`` after stopping; :func:`running` does all of that."""
    core = ConversationCore.from_settings(settings)
    service = GrpcService([SERVICE_NAME], settings=settings, access=ACCESS)
    conversation_pb2_grpc.add_ConversationServiceServicer_to_server(ConversationServicer(core), service.server)
    return service, core


@dataclass(frozen=True)
class RunningServer:
    service: GrpcService
    core: ConversationCore
    address: str  # host:port actually listened on


@asynccontextmanager
async def running(settings: ConversationSettings) -> AsyncIterator[RunningServer]:
    """Start in-process on ``settings.listen_address()`` (port 0: a free port), migrate, report SERVING; stop and
    close on exit."""
    service, core = await create_server(settings)
    try:
        port = await service.start(settings.listen_address())
        await core.prepare()
        await service.set_serving(True)
        yield RunningServer(service, core, f"{settings.host}:{port}")
    finally:
        await service.stop(grace=1.0)
        await core.close()


async def serve(settings: ConversationSettings) -> None:
    """Serve until SIGTERM/SIGINT: NOT_SERVING until migrated, graceful drain on stop."""
    service, core = await create_server(settings)
    outbox = OutboxMonitor(core.store.engine)  # the outbox backlog and age gauges

    async def ready() -> None:
        await core.prepare()
        outbox.start()

    async def stop() -> None:
        await outbox.stop()
        await core.close()

    await run_until_signal(
        service, settings.listen_address(), grace=settings.shutdown_grace_seconds, on_ready=ready, on_stop=stop,
    )
