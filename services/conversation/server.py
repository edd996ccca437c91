"""Assembling the gRPC server around the core; also the in-process entry point for tests of other services."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from chatplane.common.db import make_engine
from chatplane.common.grpc_server import GrpcService, run_until_signal
from chatplane.common.inference import InferenceClient
from chatplane.common.metrics import OutboxMonitor
from chatplane.common.relay import OutboxRelay
from chatplane.conversation.jobs.queue import JobQueue
from chatplane.conversation.service import ConversationCore, migrate_database
from chatplane.conversation.servicer import ConversationServicer
from chatplane.conversation.settings import ConversationSettings
from chatplane.conversation.store import ConversationStore, ExportStore
from chatplane.protos.conversation.v1 import conversation_pb2, conversation_pb2_grpc

SERVICE_NAME = conversation_pb2.DESCRIPTOR.services_by_name["ConversationService"].full_name
# Who may call what (mutual TLS identities): the gateway alone; the jobs worker works on the database directly.
ACCESS = {f"/{SERVICE_NAME}/*": {"gateway"}}
UNARY_TIMEOUT_SECONDS = 30.0  # ListModels (capped by inference_timeout_seconds)

log = logging.getLogger(__name__)


@dataclass
class Assembly:
    """The core and what it works with, built here from the settings and handed to it: the database engine and the
    stores on it, the inference client, the job queue, and the relay that publishes the outbox to Kafka (None when
    events are disabled: they then wait in the outbox)."""

    settings: ConversationSettings
    core: ConversationCore
    engine: AsyncEngine
    inference: InferenceClient
    jobs: JobQueue
    relay: OutboxRelay | None

    @classmethod
    def build(cls, settings: ConversationSettings) -> Assembly:
        engine = make_engine(settings.database_url)
        inference = InferenceClient.from_settings(
            settings,
            timeout=min(UNARY_TIMEOUT_SECONDS, settings.inference_timeout_seconds),
            stream_timeout=settings.inference_timeout_seconds,
        )
        jobs = JobQueue(settings)
        core = ConversationCore(
            settings, ConversationStore(engine), ExportStore(engine, settings.export_ttl_seconds), inference, jobs
        )
        relay = (
            OutboxRelay(engine, settings.kafka_bootstrap_servers, name="conversation",
                        linger=settings.outbox_linger_ms / 1000)
            if settings.kafka_bootstrap_servers
            else None
        )
        return cls(settings, core, engine, inference, jobs, relay)

    async def prepare(self) -> None:
        """Make the service ready: discovery of inference replicas, migrations (``auto_migrate``), the relay."""
        self.inference.start()
        if self.settings.auto_migrate:
            await migrate_database(self.settings.database_url)
            log.info("database migrated")
        if self.relay is not None:
            self.relay.start()

    async def close(self) -> None:
        """Finish the core's protected writes (partial replies), then stop the relay and close the rest."""
        await self.core.close()
        if self.relay is not None:
            await self.relay.stop()
        await self.inference.close()
        await self.core.store.close()
        await self.engine.dispose()
        await self.jobs.close()


async def create_server(settings: ConversationSettings) -> tuple[GrpcService, Assembly]:
    """The server (not started, NOT_SERVING) and its assembly. Call ``assembly.prepare()`` (migrations) before
    SERVING and ``assembly.close()`` after stopping; :func:`running` does all of that."""
    assembly = Assembly.build(settings)
    service = GrpcService([SERVICE_NAME], settings=settings, access=ACCESS)
    conversation_pb2_grpc.add_ConversationServiceServicer_to_server(ConversationServicer(assembly.core), service.server)
    return service, assembly


@dataclass(frozen=True)
class RunningServer:
    service: GrpcService
    core: ConversationCore
    address: str  # host:port actually listened on


@asynccontextmanager
async def running(settings: ConversationSettings) -> AsyncIterator[RunningServer]:
    """Start in-process on ``settings.listen_address()`` (port 0: a free port), migrate, report SERVING; stop and
    close on exit."""
    service, assembly = await create_server(settings)
    try:
        port = await service.start(settings.listen_address())
        await assembly.prepare()
        await service.set_serving(True)
        yield RunningServer(service, assembly.core, f"{settings.host}:{port}")
    finally:
        await service.stop(grace=1.0)
        await assembly.close()


async def serve(settings: ConversationSettings) -> None:
    """Serve until SIGTERM/SIGINT: NOT_SERVING until migrated, graceful drain on stop."""
    service, assembly = await create_server(settings)
    outbox = OutboxMonitor(assembly.engine)  # the outbox backlog and age gauges

    async def ready() -> None:
        await assembly.prepare()
        outbox.start()

    async def stop() -> None:
        await outbox.stop()
        await assembly.close()

    await run_until_signal(
        service, settings.listen_address(), grace=settings.shutdown_grace_seconds, on_ready=ready, on_stop=stop,
    )
