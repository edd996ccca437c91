"""Tables of the conversation service: one row per conversation, one row per message (normalised, not a blob)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, Integer, MetaData, String, Text, UniqueConstraint, false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from chatplane.common.db import NAMING_CONVENTION, UTCDateTime
from chatplane.common.outbox import outbox_table
from chatplane.common.limits import MAX_TITLE_CHARS

ID_CHARS = 32  # uuid4 hex
USER_ID_CHARS = 64
MODEL_CHARS = 200
FINISH_REASON_CHARS = 32

ROLE_USER = "user"
ROLE_ASSISTANT = "assistant"
ROLE_SYSTEM = "system"  # a system message of a Responses API input
ROLE_TOOL = "tool"  # a function's result (Responses API)
TOOL_CALL_ID_CHARS = 256
STATUS_COMPLETE = "complete"
STATUS_INCOMPLETE = "incomplete"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Conversation(Base):
    __tablename__ = "conversations"

    id: Mapped[str] = mapped_column(String(ID_CHARS), primary_key=True)
    # Indexed by ix_conversations_listing below, whose leading column is user_id (a separate index would duplicate it).
    user_id: Mapped[str] = mapped_column(String(USER_ID_CHARS))
    title: Mapped[str] = mapped_column(String(MAX_TITLE_CHARS))
    archived: Mapped[bool] = mapped_column(default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


# Listing: one user's conversations, newest first, keyset-paginated on (updated_at, id).
Index("ix_conversations_listing", Conversation.user_id, Conversation.updated_at.desc(), Conversation.id)

# Domain events waiting for the relay (chatplane.common.outbox.add_event writes them in the caller's transaction).
outbox = outbox_table(Base.metadata)


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        # One position per message in its conversation; also the index that serves history reads and the cascade.
        UniqueConstraint("conversation_id", "seq"),
        CheckConstraint(f"role IN ('{ROLE_USER}', '{ROLE_ASSISTANT}', '{ROLE_SYSTEM}', '{ROLE_TOOL}')", name="role"),
        CheckConstraint(f"status IN ('{STATUS_COMPLETE}', '{STATUS_INCOMPLETE}')", name="status"),
    )

    id: Mapped[str] = mapped_column(String(ID_CHARS), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(String(ID_CHARS), ForeignKey("conversations.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=STATUS_COMPLETE)
    model: Mapped[str] = mapped_column(String(MODEL_CHARS), default="")
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    finish_reason: Mapped[str] = mapped_column(String(FINISH_REASON_CHARS), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # An assistant message's function calls, as a JSON list of {"id", "name", "arguments"}; "" when none.
    tool_calls: Mapped[str] = mapped_column(Text, default="", server_default="")
    tool_call_id: Mapped[str] = mapped_column(String(TOOL_CALL_ID_CHARS), default="", server_default="")  # tool


EXPORT_MARKDOWN = "markdown"
EXPORT_JSON = "json"
EXPORT_PENDING = "pending"
EXPORT_COMPLETED = "completed"
EXPORT_FAILED = "failed"
EXPORT_ERROR_CHARS = 500


class ExportJob(Base):
    """A requested export of a conversation (Markdown or JSON), filled in by the export job of the worker."""

    __tablename__ = "exports"
    __table_args__ = (
        CheckConstraint(f"format IN ('{EXPORT_MARKDOWN}', '{EXPORT_JSON}')", name="format"),
        CheckConstraint(f"status IN ('{EXPORT_PENDING}', '{EXPORT_COMPLETED}', '{EXPORT_FAILED}')", name="status"),
    )

    id: Mapped[str] = mapped_column(String(ID_CHARS), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(
        String(ID_CHARS), ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[str] = mapped_column(String(USER_ID_CHARS))
    format: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=EXPORT_PENDING)
    content: Mapped[str | None] = mapped_column(Text, default=None)
    error: Mapped[str] = mapped_column(String(EXPORT_ERROR_CHARS), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
