"""Usage metering and quotas: daily usage rows built from completion events, budgets per user and per API key.

The usage consumer (``python -m chatplane.auth consume-usage``) applies ``completion.finished`` events with
:func:`apply_event`; the event id makes it idempotent (see :mod:`chatplane.common.consumer`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from chatplane.auth.models import MODEL_CHARS, PERIOD_DAY, PERIOD_MONTH, Quota, UsageDaily
from chatplane.common.events import USAGE_TOPIC, EventEnvelope

log = logging.getLogger(__name__)

USAGE_CONSUMER_GROUP = "chatplane-usage"
USAGE_TOPICS = (USAGE_TOPIC,)
PERIODS = (PERIOD_DAY, PERIOD_MONTH)
MAX_USAGE_DAYS = 366


def period_bounds(period: str, now: datetime) -> tuple[datetime, datetime]:
    """[start, end) of the UTC day or month that contains ``now``."""
    now = now.astimezone(UTC)
    if period == PERIOD_DAY:
        start = datetime(now.year, now.month, now.day, tzinfo=UTC)
        return start, start + timedelta(days=1)
    start = datetime(now.year, now.month, 1, tzinfo=UTC)
    end = datetime(now.year + (now.month == 12), now.month % 12 + 1, 1, tzinfo=UTC)
    return start, end


@dataclass(frozen=True)
class QuotaState:
    user_id: str
    api_key_id: str
    period: str
    token_limit: int
    used_tokens: int
    period_start: datetime
    period_end: datetime


async def apply_event(session: AsyncSession, env: EventEnvelope) -> None:
    """Add a finished completion's tokens to its day's row (upsert). Other event types are ignored."""
    await apply_events(session, [env])


async def apply_events(session: AsyncSession, envs: list[EventEnvelope]) -> None:
    """:func:`apply_event` for a batch: completions are summed per day row first, then one upsert per row."""
    rows: dict[tuple[date, str, str, str], list[int]] = {}
    for env in envs:
        if env.WhichOneof("payload") != "completion_finished":
            continue
        done = env.completion_finished
        day = env.occurred_at.ToDatetime(tzinfo=UTC).date()
        row = rows.setdefault((day, done.user_id, done.api_key_id, done.model[:MODEL_CHARS]), [0, 0, 0])
        row[0] += 1
        row[1] += done.prompt_tokens
        row[2] += done.completion_tokens
    if not rows:
        return
    dialect = postgresql if session.bind.dialect.name == "postgresql" else sqlite
    for (day, user_id, api_key_id, model), (requests, prompt_tokens, completion_tokens) in rows.items():
        stmt = dialect.insert(UsageDaily).values(
            day=day, user_id=user_id, api_key_id=api_key_id, model=model, requests=requests,
            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["day", "user_id", "api_key_id", "model"],
            set_={
                "requests": UsageDaily.requests + stmt.excluded.requests,
                "prompt_tokens": UsageDaily.prompt_tokens + stmt.excluded.prompt_tokens,
                "completion_tokens": UsageDaily.completion_tokens + stmt.excluded.completion_tokens,
            },
        )
        await session.execute(stmt)


async def used_tokens(session: AsyncSession, user_id: str, api_key_id: str, start: date, end: date) -> int:
    """Tokens used in [start, end) by the user (``api_key_id`` "": all of the user's usage) or by one key."""
    query = select(func.coalesce(func.sum(UsageDaily.prompt_tokens + UsageDaily.completion_tokens), 0)).where(
        UsageDaily.user_id == user_id, UsageDaily.day >= start, UsageDaily.day < end
    )
    if api_key_id:
        query = query.where(UsageDaily.api_key_id == api_key_id)
    return int(await session.scalar(query) or 0)


async def quota_states(session: AsyncSession, user_id: str, api_key_id: str, now: datetime) -> list[QuotaState]:
    """The user's quotas and (when given) the key's, each with what was used in its current period."""
    keys = ["", api_key_id] if api_key_id else [""]
    rows = (
        await session.scalars(
            select(Quota).where(Quota.user_id == user_id, Quota.api_key_id.in_(keys)).order_by(
                Quota.api_key_id, Quota.period
            )
        )
    ).all()
    return [await _state(session, row, now) for row in rows]


async def all_quota_states(session: AsyncSession, user_id: str, now: datetime) -> list[QuotaState]:
    rows = (
        await session.scalars(select(Quota).where(Quota.user_id == user_id).order_by(Quota.api_key_id, Quota.period))
    ).all()
    return [await _state(session, row, now) for row in rows]


async def _state(session: AsyncSession, row: Quota, now: datetime) -> QuotaState:
    start, end = period_bounds(row.period, now)
    used = await used_tokens(session, row.user_id, row.api_key_id, start.date(), end.date())
    return QuotaState(row.user_id, row.api_key_id, row.period, row.token_limit, used, start, end)


async def usage_rows(
    session: AsyncSession, user_id: str | None, start: date, end: date
) -> list[UsageDaily]:
    """Usage rows in [start, end] (inclusive), of one user or (None) everyone's."""
    query = select(UsageDaily).where(UsageDaily.day >= start, UsageDaily.day <= end)
    if user_id is not None:
        query = query.where(UsageDaily.user_id == user_id)
    query = query.order_by(UsageDaily.day, UsageDaily.user_id, UsageDaily.api_key_id, UsageDaily.model)
    return list((await session.scalars(query)).all())
