"""The auth core's limits: usage rows, quotas and per-key rate limits, with the helpers (one transaction per state
change, the user and key lookups) that the rest of :class:`~chatplane.auth.service.AuthCore` builds on."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import date, datetime

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chatplane.auth import metering, validation
from chatplane.auth.metering import QuotaState
from chatplane.auth.models import ApiKey, Quota, UsageDaily, User
from chatplane.common.errors import InvalidArgument, NotFound

MAX_TOKEN_LIMIT = 10**15
MAX_RATE_LIMIT = 10**9
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True)
class LimitsInfo:
    is_admin: bool = False
    requests_per_minute: int = 0  # 0: the gateway's default
    tokens_per_minute: int = 0
    quotas: list[QuotaState] = field(default_factory=list)


class LimitsCore:
    sessions: async_sessionmaker[AsyncSession]
    clock: Callable[[], datetime]

    @asynccontextmanager
    async def _state_change(self) -> AsyncIterator[AsyncSession]:
        """One transaction per state change: commits on success, rolls everything back on any error.

        Seam for domain events: add outbox rows to this session before the commit below.
        """
        async with self.sessions() as session, session.begin():
            yield session

    # --- usage, quotas, rate limits -----------------------------------------------------------------------------

    async def limits(self, user_id: str, api_key_id: str) -> LimitsInfo:
        """Admin flag, the key's rate limit overrides, and the quotas (with current use) that apply."""
        async with self.sessions() as session:
            user = await session.get(User, user_id) if validation.is_id(user_id) else None
            if user is None:
                raise NotFound("user not found", code="user_not_found", param="user_id")
            rpm = tpm = 0
            if api_key_id:
                key = await session.get(ApiKey, api_key_id) if validation.is_id(api_key_id) else None
                if key is None or key.user_id != user_id:
                    raise NotFound("API key not found", code="api_key_not_found", param="api_key_id")
                rpm, tpm = key.requests_per_minute or 0, key.tokens_per_minute or 0
            quotas = await metering.quota_states(session, user_id, api_key_id, self.clock())
        return LimitsInfo(user.is_admin, rpm, tpm, quotas)

    async def usage(self, user_id: str | None, start_date: str, end_date: str) -> list[UsageDaily]:
        """Usage rows of one user (or everyone's: None) between two dates, both included."""
        start, end = _date(start_date, "start_date"), _date(end_date, "end_date")
        if end < start:
            raise InvalidArgument("end_date is before start_date", code="invalid_value", param="end_date")
        if (end - start).days >= metering.MAX_USAGE_DAYS:
            raise InvalidArgument(
                f"the range may span at most {metering.MAX_USAGE_DAYS} days", code="invalid_value", param="end_date"
            )
        if user_id is not None:
            await self._require_user(user_id)
        async with self.sessions() as session:
            return await metering.usage_rows(session, user_id, start, end)

    async def set_quota(self, user_id: str, api_key_id: str, period: str, token_limit: int) -> QuotaState:
        """Create or replace a quota of the user (``api_key_id`` "") or of one of the user's keys."""
        if period not in metering.PERIODS:
            raise InvalidArgument("period must be day or month", code="invalid_value", param="period")
        if not 0 <= token_limit <= MAX_TOKEN_LIMIT:
            raise InvalidArgument("token_limit is out of range", code="invalid_value", param="token_limit")
        await self._require_owned(user_id, api_key_id)
        async with self._state_change() as session:
            row = await session.get(Quota, (user_id, api_key_id, period))
            if row is None:
                session.add(Quota(user_id=user_id, api_key_id=api_key_id, period=period, token_limit=token_limit,
                                  updated_at=self.clock()))
            else:
                row.token_limit, row.updated_at = token_limit, self.clock()
        async with self.sessions() as session:
            return next(q for q in await metering.quota_states(session, user_id, api_key_id, self.clock())
                        if q.api_key_id == api_key_id and q.period == period)

    async def delete_quota(self, user_id: str, api_key_id: str, period: str) -> None:
        await self._require_owned(user_id, api_key_id)
        async with self._state_change() as session:
            deleted = await session.execute(
                delete(Quota).where(Quota.user_id == user_id, Quota.api_key_id == api_key_id, Quota.period == period)
            )
        if deleted.rowcount != 1:
            raise NotFound("quota not found", code="quota_not_found", param="period")

    async def list_quotas(self, user_id: str) -> list[QuotaState]:
        await self._require_user(user_id)
        async with self.sessions() as session:
            return await metering.all_quota_states(session, user_id, self.clock())

    async def set_rate_limits(self, api_key_id: str, requests_per_minute: int, tokens_per_minute: int) -> ApiKey:
        """Per-key overrides of the gateway's default rate limits (0: back to the default)."""
        for name, value in (("requests_per_minute", requests_per_minute), ("tokens_per_minute", tokens_per_minute)):
            if not 0 <= value <= MAX_RATE_LIMIT:
                raise InvalidArgument(f"{name} is out of range", code="invalid_value", param=name)
        if not validation.is_id(api_key_id):
            raise NotFound("API key not found", code="api_key_not_found", param="api_key_id")
        async with self._state_change() as session:
            row = await session.get(ApiKey, api_key_id)
            if row is None:
                raise NotFound("API key not found", code="api_key_not_found", param="api_key_id")
            row.requests_per_minute = requests_per_minute or None
            row.tokens_per_minute = tokens_per_minute or None
        return row

    # --- helpers -----------------------------------------------------------------------------------------------

    async def _require_owned(self, user_id: str, api_key_id: str) -> None:
        await self._require_user(user_id)
        if not api_key_id:
            return
        async with self.sessions() as session:
            key = await session.get(ApiKey, api_key_id) if validation.is_id(api_key_id) else None
        if key is None or key.user_id != user_id:
            raise NotFound("API key not found", code="api_key_not_found", param="api_key_id")

    async def _user(self, user_id: str) -> User | None:
        async with self.sessions() as session:
            return await session.get(User, user_id)

    async def _require_user(self, user_id: str) -> User:
        if not user_id:
            raise InvalidArgument("user_id is required", code="invalid_value", param="user_id")
        user = await self._user(user_id) if validation.is_id(user_id) else None
        if user is None:
            raise NotFound("user not found", code="user_not_found", param="user_id")
        return user


def _date(value: str, param: str) -> date:
    try:
        if not _DATE.fullmatch(value):
            raise ValueError(value)
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidArgument(f"{param} must be a date, YYYY-MM-DD", code="invalid_value", param=param) from None
