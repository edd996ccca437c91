"""``python -m chatplane.auth make-admin EMAIL``: grant (or with ``--revoke`` take away) the admin role."""

from __future__ import annotations

import sys

from chatplane.auth.keys import load_signing_key
from chatplane.auth.server import migrate
from chatplane.auth.service import AuthCore
from chatplane.auth.settings import AuthSettings
from chatplane.auth.tokens import TokenIssuer
from chatplane.common import db
from chatplane.common.errors import ServiceError


async def make_admin(settings: AuthSettings, email: str, is_admin: bool = True) -> int:
    if settings.auto_migrate:
        await migrate(settings)
    engine = db.make_engine(settings.database_url)
    try:
        tokens = TokenIssuer(load_signing_key(settings), issuer=settings.jwt_issuer, audience=settings.jwt_audience,
                             ttl_seconds=settings.access_token_ttl_seconds)
        core = AuthCore(settings, db.sessionmaker(engine), tokens)
        try:
            user_id = await core.set_admin(email, is_admin)
        except ServiceError as err:
            print(f"make-admin: {err.message}", file=sys.stderr)
            return 1
    finally:
        await engine.dispose()
    print(f"{'granted' if is_admin else 'revoked'} admin role: user {user_id}")
    return 0
