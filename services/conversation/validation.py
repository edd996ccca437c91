"""Checks of request fields, and the opaque listing cursor."""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from datetime import UTC, datetime, timedelta

from chatplane.common.limits import (
    DEFAULT_MESSAGE_PAGE,
    DEFAULT_PAGE_SIZE,
    MAX_MESSAGE_CHARS,
    MAX_MESSAGE_PAGE,
    MAX_PAGE_SIZE,
    MAX_TITLE_CHARS,
)
from chatplane.conversation.errors import invalid, not_found
from chatplane.conversation.models import MODEL_CHARS, USER_ID_CHARS
from chatplane.conversation.store import PageKey

DEFAULT_TITLE = "New conversation"
MAX_REQUEST_ID_CHARS = 128
MAX_CURSOR_CHARS = 200
# A cursor names a row's updated_at: never before this, never (much) after now. Anything outside is forged.
OLDEST_CURSOR = datetime(2000, 1, 1, tzinfo=UTC)
CURSOR_CLOCK_SLACK = timedelta(days=1)
_ID = re.compile(r"[0-9a-f]{32}")


def user_id(value: str) -> str:
    if not value or len(value) > USER_ID_CHARS or "\x00" in value:
        raise invalid("user_id must be 1 to 64 characters", "user_id")
    return value


def conversation_id(value: str) -> str:
    """An ill-formed id is NOT_FOUND, exactly like a missing one."""
    if not _ID.fullmatch(value):
        raise not_found()
    return value


def is_id(value: str) -> bool:
    """A well-formed id (uuid4 hex)."""
    return bool(_ID.fullmatch(value))


def title(value: str, *, default: str | None = None) -> str:
    """Surrounding whitespace is dropped; an empty title becomes ``default`` when there is one."""
    if "\x00" in value:
        raise invalid("title must not contain NUL characters", "title")
    value = value.strip()
    if not value and default is not None:
        return default
    if not 1 <= len(value) <= MAX_TITLE_CHARS:
        raise invalid(f"title must be 1 to {MAX_TITLE_CHARS} characters", "title")
    return value


def content(value: str) -> str:
    """Stored verbatim (control characters and all), except that NUL cannot be stored."""
    if not value.strip():
        raise invalid("content must not be empty", "content")
    if len(value) > MAX_MESSAGE_CHARS:
        raise invalid(f"content must be at most {MAX_MESSAGE_CHARS} characters", "content")
    if "\x00" in value:
        raise invalid("content must not contain NUL characters", "content")
    return value


def max_tokens(value: int | None) -> int | None:
    if value is not None and value < 1:
        raise invalid("max_tokens must be at least 1", "max_tokens")
    return value


def temperature(value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and 0.0 <= value <= 2.0):
        raise invalid("temperature must be between 0 and 2", "temperature")
    return value


def model(value: str) -> str:
    if len(value) > MODEL_CHARS or "\x00" in value:
        raise invalid(f"model must be at most {MODEL_CHARS} characters", "model")
    return value


def request_id(value: str) -> str:
    if len(value) > MAX_REQUEST_ID_CHARS or "\x00" in value:
        raise invalid(f"request_id must be at most {MAX_REQUEST_ID_CHARS} characters", "request_id")
    return value


def page_size(value: int) -> int:
    if value == 0:
        return DEFAULT_PAGE_SIZE
    if not 1 <= value <= MAX_PAGE_SIZE:
        raise invalid(f"limit must be between 1 and {MAX_PAGE_SIZE}", "limit")
    return value


def encode_cursor(key: PageKey) -> str:
    raw = json.dumps([key.updated_at.isoformat(), key.id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(value: str) -> PageKey | None:
    """The position a cursor names; None for no cursor. Anything not made by :func:`encode_cursor` is rejected: the
    shape, the id, and the time, which must lie between :data:`OLDEST_CURSOR` and a day from now (a forged cursor
    with an extreme date would otherwise overflow in the database driver)."""
    if not value:
        return None
    try:
        if len(value) > MAX_CURSOR_CHARS:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        stamp, ident = json.loads(raw)
        if not isinstance(stamp, str) or not isinstance(ident, str) or not _ID.fullmatch(ident):
            raise ValueError("bad cursor")
        updated_at = datetime.fromisoformat(stamp)
        if updated_at.tzinfo is None:
            raise ValueError("bad cursor")
        updated_at = updated_at.astimezone(UTC)  # OverflowError at the ends of datetime's range
        if not OLDEST_CURSOR <= updated_at <= datetime.now(UTC) + CURSOR_CLOCK_SLACK:
            raise ValueError("out of range")
    except (ValueError, TypeError, OverflowError, binascii.Error, UnicodeDecodeError):
        raise invalid("cursor is not valid", "cursor") from None
    return PageKey(updated_at=updated_at, id=ident)


MAX_SEQ = 2**31 - 1


def message_page_size(value: int) -> int:
    if value == 0:
        return DEFAULT_MESSAGE_PAGE
    if not 1 <= value <= MAX_MESSAGE_PAGE:
        raise invalid(f"message_limit must be between 1 and {MAX_MESSAGE_PAGE}", "message_limit")
    return value


def encode_message_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"m:{seq}".encode()).decode().rstrip("=")


def decode_message_cursor(value: str) -> int:
    """The position (message seq) a messages cursor names; 0 for none. Range-checked: anything else is a 400."""
    if not value:
        return 0
    try:
        if len(value) > 32:
            raise ValueError("too long")
        kind, _, number = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode("ascii").partition(":")
        seq = int(number)
        if kind != "m" or not number.isdigit() or not 1 <= seq <= MAX_SEQ:
            raise ValueError("bad cursor")
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise invalid("messages cursor is not valid", "messages_cursor") from None
    return seq
