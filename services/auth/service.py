"""The auth domain core: plain Python methods over a sessionmaker, no gRPC here.

Every state change goes through :meth:`AuthCore._state_change`, the one place a transaction commits; domain events
(Kafka, through the outbox table) are written there, in the same transaction as the change they describe.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum

import jwt
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chatplane.auth import apikeys, validation
from chatplane.auth.limits import LimitsCore, LimitsInfo
from chatplane.auth.models import ApiKey, User
from chatplane.auth.passwords import Passwords
from chatplane.auth.settings import AuthSettings
from chatplane.auth.tokens import TokenIssuer
from chatplane.common.db import new_id, utcnow
from chatplane.common.errors import AlreadyExists, FailedPrecondition, NotFound, Unauthenticated
from chatplane.common.events import envelope
from chatplane.common.outbox import add_event
from chatplane.protos.events.v1 import events_pb2

log = logging.getLogger(__name__)

BAD_LOGIN = "invalid email or password"
BAD_API_KEY = "invalid API key"
BAD_TOKEN = "invalid or expired token"
PRODUCER = "auth"


class CredentialType(Enum):
    API_KEY = "api_key"
    JWT = "jwt"


@dataclass(frozen=True)
class UserInfo:
    id: str
    email: str
    created_at: datetime


@dataclass(frozen=True)
class TokenInfo:
    access_token: str
    expires_in: int


@dataclass(frozen=True)
class PrincipalInfo:
    user_id: str
    email: str
    credential_type: CredentialType
    api_key_id: str | None
    cache_ttl_seconds: int
    limits: LimitsInfo = field(default_factory=LimitsInfo)


@dataclass(frozen=True)
class ApiKeyInfo:
    id: str
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, row: ApiKey) -> ApiKeyInfo:
        return cls(row.id, row.name, row.prefix, row.created_at, row.last_used_at, row.revoked_at)


@dataclass(frozen=True)
class CreatedApiKeyInfo:
    api_key: ApiKeyInfo
    key: str  # the secret: returned once, never stored


class AuthCore(LimitsCore):
    """Users, passwords, tokens and API keys; the limits part (usage, quotas, rate limits) is :class:`LimitsCore`'s."""

    def __init__(
        self,
        settings: AuthSettings,
        sessions: async_sessionmaker[AsyncSession],
        tokens: TokenIssuer,
        passwords: Passwords | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.tokens = tokens
        self.passwords = passwords or Passwords(
            concurrency=settings.password_hash_concurrency, queue=settings.password_hash_queue
        )
        self.clock = clock

    # --- users -------------------------------------------------------------------------------------------------

    async def sign_up(self, email: str, password: str) -> UserInfo:
        email = validation.normalize_email(email)
        validation.check_new_password(password)
        password_hash = await self.passwords.hash(password)
        user = User(id=new_id(), email=email, password_hash=password_hash, created_at=self.clock())
        try:
            async with self._state_change() as session:
                session.add(user)
                await session.flush()  # a taken email fails here, before the event is written
                await add_event(session, envelope(events_pb2.UserSignedUp(user_id=user.id), producer=PRODUCER))
        except IntegrityError:
            raise AlreadyExists(
                "an account with this email already exists", code="email_taken", param="email"
            ) from None
        log.info("user signed up", extra={"user_id": user.id})
        return UserInfo(user.id, user.email, user.created_at)

    async def login(self, email: str, password: str) -> TokenInfo:
        lookup = validation.lookup_email(email)
        validation.check_login_password(password)
        async with self.sessions() as session:
            user = (await session.execute(select(User).where(User.email == lookup))).scalar_one_or_none()
        # Unknown email and wrong password take the same time (an argon2 verify) and give the same answer.
        ok, new_hash = await self.passwords.verify(user.password_hash if user else None, password)
        if user is None or not ok:
            raise Unauthenticated(BAD_LOGIN, code="invalid_credentials")
        if new_hash is not None:
            async with self._state_change() as session:
                await session.execute(update(User).where(User.id == user.id).values(password_hash=new_hash))
        token = self.tokens.issue(user.id, user.email, self.clock())
        return TokenInfo(access_token=token, expires_in=self.tokens.ttl_seconds)

    # --- credentials -------------------------------------------------------------------------------------------

    async def authenticate(self, credential: str) -> PrincipalInfo:
        validation.check_credential(credential)
        if apikeys.looks_like_api_key(credential):
            return await self._authenticate_api_key(credential)
        if credential.count(".") == 2:
            return await self._authenticate_jwt(credential)
        raise Unauthenticated("invalid credential", code="invalid_api_key")

    async def _authenticate_api_key(self, key: str) -> PrincipalInfo:
        async with self.sessions() as session:
            row = (
                await session.execute(
                    select(ApiKey, User.email).join(User, User.id == ApiKey.user_id).where(
                        ApiKey.key_hash == apikeys.hash_key(key)
                    )
                )
            ).one_or_none()
        if row is None or row[0].revoked_at is not None:
            raise Unauthenticated(BAD_API_KEY, code="invalid_api_key")
        api_key, email = row
        await self._touch(api_key)
        return PrincipalInfo(
            user_id=api_key.user_id,
            email=email,
            credential_type=CredentialType.API_KEY,
            api_key_id=api_key.id,
            cache_ttl_seconds=self.settings.principal_cache_ttl_seconds,
            limits=await self.limits(api_key.user_id, api_key.id),
        )

    async def _touch(self, api_key: ApiKey) -> None:
        """Record use at most once per interval; the WHERE clause keeps concurrent replicas from all writing."""
        now = self.clock()
        cutoff = now - timedelta(seconds=self.settings.last_used_update_interval_seconds)
        if api_key.last_used_at is not None and api_key.last_used_at > cutoff:
            return
        async with self._state_change() as session:
            await session.execute(
                update(ApiKey)
                .where(
                    ApiKey.id == api_key.id,
                    (ApiKey.last_used_at.is_(None)) | (ApiKey.last_used_at <= cutoff),
                )
                .values(last_used_at=now)
            )

    async def _authenticate_jwt(self, token: str) -> PrincipalInfo:
        try:
            verified = self.tokens.verify(token)
        except jwt.PyJWTError:
            raise Unauthenticated(BAD_TOKEN, code="invalid_token") from None
        user = await self._user(verified.user_id) if validation.is_id(verified.user_id) else None
        if user is None:
            raise Unauthenticated(BAD_TOKEN, code="invalid_token")
        remaining = verified.expires_at - math.ceil(self.clock().timestamp())
        return PrincipalInfo(
            user_id=user.id,
            email=user.email,
            credential_type=CredentialType.JWT,
            api_key_id=None,
            cache_ttl_seconds=max(0, min(self.settings.principal_cache_ttl_seconds, remaining)),
            limits=await self.limits(user.id, ""),
        )

    def jwks(self) -> tuple[str, str, str]:
        """(JWKS JSON, issuer, audience)."""
        return self.tokens.jwks_json(), self.tokens.issuer, self.tokens.audience

    # --- API keys ----------------------------------------------------------------------------------------------

    async def create_api_key(self, user_id: str, name: str) -> CreatedApiKeyInfo:
        name = validation.check_api_key_name(name)
        await self._require_user(user_id)
        key = apikeys.generate_key()
        row = ApiKey(
            id=new_id(),
            user_id=user_id,
            name=name,
            prefix=apikeys.visible_prefix(key),
            key_hash=apikeys.hash_key(key),
            created_at=self.clock(),
        )
        try:
            async with self._state_change() as session:
                # The user's row locked (PostgreSQL; SQLite writes one at a time): concurrent creations count in turn.
                await session.execute(select(User.id).where(User.id == user_id).with_for_update())
                active = await session.scalar(
                    select(func.count()).select_from(ApiKey).where(ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None))
                )
                if active >= self.settings.max_api_keys_per_user:
                    raise FailedPrecondition(
                        f"you have {active} active API keys, the most allowed: revoke one first",
                        code="api_key_limit_reached", param="name",
                    )
                session.add(row)
                await session.flush()
                await add_event(
                    session,
                    envelope(
                        events_pb2.ApiKeyCreated(user_id=user_id, api_key_id=row.id, name=name), producer=PRODUCER
                    ),
                )
        except IntegrityError:  # the user was deleted in between
            raise NotFound("user not found", code="user_not_found", param="user_id") from None
        log.info("api key created", extra={"user_id": user_id, "api_key_id": row.id})
        return CreatedApiKeyInfo(api_key=ApiKeyInfo.of(row), key=key)

    async def list_api_keys(self, user_id: str) -> list[ApiKeyInfo]:
        await self._require_user(user_id)
        async with self.sessions() as session:
            rows = await session.scalars(
                select(ApiKey).where(ApiKey.user_id == user_id).order_by(ApiKey.created_at.desc(), ApiKey.id.desc())
            )
            return [ApiKeyInfo.of(row) for row in rows]

    async def revoke_api_key(self, user_id: str, api_key_id: str) -> ApiKeyInfo:
        """Idempotent: revoking again keeps the first revoked_at. Another user's key is NOT_FOUND."""
        if not (validation.is_id(user_id) and validation.is_id(api_key_id)):
            raise NotFound("API key not found", code="api_key_not_found", param="api_key_id")
        async with self._state_change() as session:
            revoked = await session.execute(
                update(ApiKey)
                .where(ApiKey.id == api_key_id, ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None))
                .values(revoked_at=self.clock())
            )
            if revoked.rowcount == 1:  # only the first revoke is an event
                await add_event(
                    session,
                    envelope(events_pb2.ApiKeyRevoked(user_id=user_id, api_key_id=api_key_id), producer=PRODUCER),
                )
            row = (
                await session.execute(select(ApiKey).where(ApiKey.id == api_key_id, ApiKey.user_id == user_id))
            ).scalar_one_or_none()
            if row is None:
                raise NotFound("API key not found", code="api_key_not_found", param="api_key_id")
        log.info("api key revoked", extra={"user_id": user_id, "api_key_id": api_key_id})
        return ApiKeyInfo.of(row)

    async def set_admin(self, email: str, is_admin: bool = True) -> str:
        """Grant (or take away) the admin role; returns the user id. For the ``make-admin`` command."""
        lookup = validation.lookup_email(email)
        async with self._state_change() as session:
            user = (await session.execute(select(User).where(User.email == lookup))).scalar_one_or_none()
            if user is None:
                raise NotFound("no user with this email", code="user_not_found", param="email")
            user.is_admin = is_admin
            return user.id

