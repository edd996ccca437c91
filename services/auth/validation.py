"""Input checks: sizes from chatplane.common.limits, NUL bytes (PostgreSQL cannot store them), email syntax."""

from __future__ import annotations

import re

from email_validator import EmailNotValidError, validate_email

from chatplane.common.errors import InvalidArgument
from chatplane.common.limits import (
    MAX_API_KEY_NAME_CHARS,
    MAX_CREDENTIAL_CHARS,
    MAX_EMAIL_CHARS,
    MAX_PASSWORD_CHARS,
    MIN_PASSWORD_CHARS,
)

_ID = re.compile(r"[0-9a-f]{32}")


def _no_nul(value: str, param: str) -> None:
    if "\x00" in value:
        raise InvalidArgument(f"{param} must not contain NUL characters", code="invalid_value", param=param)


def _max_len(value: str, limit: int, param: str) -> None:
    if len(value) > limit:
        raise InvalidArgument(f"{param} is longer than {limit} characters", code="string_above_max_length", param=param)


def check_email_input(email: str) -> str:
    """Size and NUL checks only (Login: an address that fails the syntax check simply matches no user)."""
    _no_nul(email, "email")
    _max_len(email, MAX_EMAIL_CHARS, "email")
    return email.strip()


def normalize_email(email: str) -> str:
    """The canonical stored form: syntax-checked by email-validator (no DNS lookups), then lowercased."""
    email = check_email_input(email)
    if not email:
        raise InvalidArgument("email is required", code="invalid_value", param="email")
    try:
        normalized = validate_email(email, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise InvalidArgument(f"invalid email address: {exc}", code="invalid_value", param="email") from None
    normalized = normalized.lower()
    _max_len(normalized, MAX_EMAIL_CHARS, "email")
    return normalized


def lookup_email(email: str) -> str:
    """The form to look a login's email up by: the stored form when it is valid, else something that matches nothing."""
    email = check_email_input(email)
    try:
        return normalize_email(email)
    except InvalidArgument:
        return email.lower()


def check_new_password(password: str) -> None:
    _no_nul(password, "password")
    if len(password) < MIN_PASSWORD_CHARS:
        raise InvalidArgument(
            f"password must be at least {MIN_PASSWORD_CHARS} characters", code="password_too_short", param="password"
        )
    _max_len(password, MAX_PASSWORD_CHARS, "password")


def check_login_password(password: str) -> None:
    # No minimum here: the policy may change after a password was set; a wrong one fails verification anyway.
    _no_nul(password, "password")
    _max_len(password, MAX_PASSWORD_CHARS, "password")


def check_api_key_name(name: str) -> str:
    _no_nul(name, "name")
    _max_len(name, MAX_API_KEY_NAME_CHARS, "name")
    if not name.strip():
        raise InvalidArgument("name must not be empty", code="invalid_value", param="name")
    return name  # stored verbatim


def check_credential(credential: str) -> None:
    _no_nul(credential, "credential")
    _max_len(credential, MAX_CREDENTIAL_CHARS, "credential")


def is_id(value: str) -> bool:
    """Our ids are uuid4 hex; anything else cannot name a row (and never reaches the database)."""
    return bool(_ID.fullmatch(value))
