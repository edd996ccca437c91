"""Wires the auth service together: signing key, database, core, gRPC servicer, and its runtime (health, the outbox
relay and monitor, the database made ready under the one retry policy)."""

from __future__ import annotations

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
from chatplane.common.runtime import ServiceRuntime
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
    await AuthServer(settings).runtime.serve()


class AuthServer:
    """The auth service in one object: its core and its :class:`~chatplane.common.runtime.ServiceRuntime`
    (``runtime.serve()`` for the process; ``runtime.start()``, ``prepare()`` and ``stop()`` for tests)."""

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
        self.runtime = ServiceRuntime("auth", [SERVICE_NAME], settings, access=ACCESS)
        auth_pb2_grpc.add_AuthServiceServicer_to_server(AuthServicer(self.core), self.runtime.server)
        self.runtime.on_prepare(self._database_ready)
        self.runtime.outbox(self.engine, settings.kafka_bootstrap_servers)
        self.runtime.on_close(self._close)

    async def _database_ready(self) -> None:
        """Migrate (when auto_migrate) and check that the schema is reachable."""
        if self.settings.auto_migrate:
            await migrate(self.settings)
        async with db.sessionmaker(self.engine)() as session:
            await session.execute(select(User.id).limit(1))

    async def _close(self) -> None:
        self.core.passwords.close()
        await self.engine.dispose()
