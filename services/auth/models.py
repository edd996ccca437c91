"""Tables of the auth service. Schema changes go through a new Alembic revision in migrations/versions/."""

from __future__ import annotations

from datetime import datetime

from datetime import date

from sqlalchemy import BigInteger, CheckConstraint, Date, ForeignKey, Integer, MetaData, String, false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from chatplane.common.db import NAMING_CONVENTION, UTCDateTime
from chatplane.common.limits import MAX_API_KEY_NAME_CHARS, MAX_EMAIL_CHARS
from chatplane.common.outbox import outbox_table, processed_events_table

PERIOD_DAY = "day"
PERIOD_MONTH = "month"
MODEL_CHARS = 200


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    # Normalised (lowercase), so uniqueness is case-insensitive.
    email: Mapped[str] = mapped_column(String(MAX_EMAIL_CHARS), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    is_admin: Mapped[bool] = mapped_column(default=False, server_default=false())


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(32), ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(MAX_API_KEY_NAME_CHARS))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Rate limit overrides; None: the gateway's defaults.
    requests_per_minute: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tokens_per_minute: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Quota(Base):
    """A token budget (prompt + completion tokens) per UTC day or month, of a user ("" key) or of one API key."""

    __tablename__ = "quotas"
    __table_args__ = (CheckConstraint(f"period IN ('{PERIOD_DAY}', '{PERIOD_MONTH}')", name="period"),)

    user_id: Mapped[str] = mapped_column(String(32), ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    api_key_id: Mapped[str] = mapped_column(String(32), primary_key=True)  # "": the user's quota
    period: Mapped[str] = mapped_column(String(8), primary_key=True)
    token_limit: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class UsageDaily(Base):
    """Token usage per UTC day, user, API key ("" for JWT callers) and model; built by the usage consumer."""

    __tablename__ = "usage_daily"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    user_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    api_key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    model: Mapped[str] = mapped_column(String(MODEL_CHARS), primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)


# Domain events waiting for the relay, and the events the usage consumer has applied.
outbox = outbox_table(Base.metadata)
processed_events = processed_events_table(Base.metadata)
