"""Wires the auth service together: signing key, database, core, gRPC servicer, health."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from sqlalchemy import select

from chatplane.auth.keys import load_signing_key
from chatplane.auth.models import User
from chatplane.auth.service import AuthCore
from chatplane.auth.servicer import AuthServicer
from chatplane.auth.settings import AuthSettings
from chatplane.auth.tokens import TokenIssuer
from chatplane.common import db
from chatplane.common.grpc_server import GrpcService, run_until_signal
from chatplane.common.metrics import OutboxMonitor
from chatplane.common.relay import OutboxRelay
from chatplane.protos.auth.v1 import auth_pb2, auth_pb2_grpc

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
SERVICE_NAME = auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name
# Who may call what (mutual TLS identities): only the gateway, which takes users' credentials, speaks to auth; the
# conversation service, the jobs worker and the usage consumer never do (finished completions reach the usage
# consumer through the gateway's spool and Kafka, not through auth).
ACCESS = {
    f"/{SERVICE_NAME}/{method}": {"gateway"}
    for method in (
        "SignUp", "Login", "Authenticate", "GetJwks", "CreateApiKey", "ListApiKeys", "RevokeApiKey", "GetLimits",
        "GetUsage", "SetQuota", "DeleteQuota", "ListQuotas", "SetRateLimits",
    )
}


async def migrate(settings: AuthSettings) -> None:
    await db.migrate(MIGRATIONS_DIR, settings.database_url)


async def serve(settings: AuthSettings) -> None:
    """Build the server inside the running event loop (grpc.aio binds to it) and serve until a signal."""
    await AuthServer(settings).serve()


class AuthServer:
    """The auth service in one object; ``serve()`` for the process, ``start()``/``wait_ready()`` for tests."""

    def __init__(self, settings: AuthSettings, *, clock: Callable[[], datetime] = db.utcnow) -> None:
        self.settings = settings
        signing_key = load_signing_key(settings)  # fail fast on a bad or missing key, before listening
        self.engine = db.make_engine(settings.database_url)  # hides bound parameters (emails, hashes) in errors
        tokens = TokenIssuer(
            signing_key,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            ttl_seconds=settings.access_token_ttl_seconds,
        )
        self.core = AuthCore(settings, db.sessionmaker(self.engine), tokens, clock=clock)
        # Publishes the outbox to Kafka; None when events are disabled (they then wait in the outbox).
        self.relay = (
            OutboxRelay(self.engine, settings.kafka_bootstrap_servers, name="auth")
            if settings.kafka_bootstrap_servers
            else None
        )
        self.grpc = GrpcService([SERVICE_NAME], settings=settings, access=ACCESS)
        auth_pb2_grpc.add_AuthServiceServicer_to_server(AuthServicer(self.core), self.grpc.server)

    async def wait_ready(self, max_delay: float = 10.0) -> None:
        """Migrate (when auto_migrate) and check the schema is reachable; retry until it is. Then SERVING is true."""
        delay = 0.5
        while True:
            try:
                if self.settings.auto_migrate:
                    await migrate(self.settings)
                async with db.sessionmaker(self.engine)() as session:
                    await session.execute(select(User.id).limit(1))
                if self.relay is not None:
                    self.relay.start()
                return
            except Exception as exc:  # noqa: BLE001 - any failure means not ready yet; keep NOT_SERVING and retry
                log.warning("database not ready", extra={"error": f"{type(exc).__name__}: {exc}"[:500]})
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_delay)

    async def close(self) -> None:
        self.core.passwords.close()
        if self.relay is not None:
            await self.relay.stop()
        await self.engine.dispose()

    async def serve(self) -> None:
        outbox = OutboxMonitor(self.engine)  # the outbox backlog and age gauges

        async def ready() -> None:
            await self.wait_ready()
            outbox.start()

        async def stop() -> None:
            await outbox.stop()
            await self.close()

        await run_until_signal(
            self.grpc,
            self.settings.listen_address(),
            grace=self.settings.shutdown_grace_seconds,
            on_ready=ready,
            on_stop=stop,
        )
