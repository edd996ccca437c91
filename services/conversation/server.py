"""Assembling the conversation service: the core and what it works with, the gRPC servicer, and the service's runtime
(health, the outbox relay and monitor, prepare under the one retry policy, the drain); also the in-process entry
point for tests of other services."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from chatplane.common.db import make_engine
from chatplane.common.inference import InferenceClient
from chatplane.common.runtime import ServiceRuntime
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
    stores on it, the inference client, the job queue. (The outbox relay is the runtime's.)"""

    settings: ConversationSettings
    core: ConversationCore
    engine: AsyncEngine
    inference: InferenceClient
    jobs: JobQueue

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
        return cls(settings, core, engine, inference, jobs)

    async def prepare(self) -> None:
        """Make the service ready: discovery of inference replicas, migrations (``auto_migrate``)."""
        self.inference.start()
        if self.settings.auto_migrate:
            await migrate_database(self.settings.database_url)
            log.info("database migrated")

    async def close(self) -> None:
        await self.inference.close()
        await self.core.store.close()
        await self.engine.dispose()
        await self.jobs.close()


async def create_server(settings: ConversationSettings) -> tuple[ServiceRuntime, Assembly]:
    """The service's runtime (not started: NOT_SERVING until prepared) and its assembly. The runtime prepares it
    (migrations, under the retry policy), runs the outbox relay and monitor, and closes it after the drain."""
    assembly = Assembly.build(settings)
    runtime = ServiceRuntime("conversation", [SERVICE_NAME], settings, access=ACCESS)
    conversation_pb2_grpc.add_ConversationServiceServicer_to_server(ConversationServicer(assembly.core), runtime.server)
    runtime.on_prepare(assembly.prepare)
    # The core's protected writes (partial replies) and queued jobs finish before the relay's last publish.
    runtime.on_stopped(assembly.core.close)
    runtime.outbox(assembly.engine, settings.kafka_bootstrap_servers, linger=settings.outbox_linger_ms / 1000)
    runtime.on_close(assembly.close)
    return runtime, assembly


@dataclass(frozen=True)
class RunningServer:
    runtime: ServiceRuntime
    core: ConversationCore
    address: str  # host:port actually listened on


@asynccontextmanager
async def running(settings: ConversationSettings) -> AsyncIterator[RunningServer]:
    """Start in-process on ``settings.listen_address()`` (port 0: a free port), prepare, report SERVING; stop and
    close on exit."""
    runtime, assembly = await create_server(settings)
    async with runtime.running() as port:
        yield RunningServer(runtime, assembly.core, f"{settings.host}:{port}")


async def serve(settings: ConversationSettings) -> None:
    """Serve until SIGTERM/SIGINT: NOT_SERVING until migrated, graceful drain on stop."""
    runtime, _ = await create_server(settings)
    await runtime.serve()
