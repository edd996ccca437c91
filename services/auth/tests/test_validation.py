"""Hostile and odd input: stored verbatim or rejected with INVALID_ARGUMENT, never an internal error.

What is stored runs on SQLite and PostgreSQL; what is rejected before storage runs on SQLite only.
"""

from __future__ import annotations

import grpc
from sqlalchemy import func, select

from chatplane.auth.models import ApiKey, User
from chatplane.common.limits import (
    MAX_API_KEY_NAME_CHARS,
    MAX_CREDENTIAL_CHARS,
    MAX_EMAIL_CHARS,
    MAX_PASSWORD_CHARS,
    MIN_PASSWORD_CHARS,
)

SQLISH = "'; DROP TABLE users; --"
CONTROL = "\t\n\r\x07\x1b[31m\x7f"


async def count(auth, model) -> int:
    async with auth.server.core.sessions() as session:
        return await session.scalar(select(func.count()).select_from(model))


async def test_sqlish_and_control_characters_are_stored_verbatim(auth):
    password = f"pa{SQLISH}{CONTROL}ss"
    user = await auth.sign_up("o'brien+tag@example.com", password)
    assert user.email == "o'brien+tag@example.com"
    assert await auth.login("O'Brien+tag@example.com", password)

    name = f"Robert'); DROP TABLE api_keys;--{CONTROL} ünïcødé 🔑"
    created = await auth.create_key(user.id, name)
    assert created.api_key.name == name
    (listed,) = await auth.list_keys(user.id)
    assert listed.name == name
    assert (await auth.authenticate(created.key)).user_id == user.id


async def test_longest_inputs_are_accepted(auth):
    """Limits count characters, not bytes, on both stores."""
    domain = ".".join(["d" * 63, "e" * 63, "f" * (MAX_EMAIL_CHARS - 64 - 1 - 2 * 64 - len(".example")), "example"])
    email = "a" * 64 + "@" + domain  # 64: the longest local part email syntax allows
    assert len(email) == MAX_EMAIL_CHARS
    user = await auth.sign_up(email, "é" * MAX_PASSWORD_CHARS)
    assert user.email == email
    assert await auth.login(email, "é" * MAX_PASSWORD_CHARS)
    name = "ñ" * MAX_API_KEY_NAME_CHARS
    assert (await auth.create_key(user.id, name)).api_key.name == name
    await auth.sign_up("min@example.com", "x" * MIN_PASSWORD_CHARS)


async def test_internationalised_email_is_accepted(sqlite_auth):
    user = await sqlite_auth.sign_up("Jörg@Bücher.example")
    assert user.email == "jörg@bücher.example"
    assert await sqlite_auth.login("JÖRG@bücher.example")


async def test_bad_emails_are_rejected_on_sign_up(sqlite_auth, fails):
    bad = [
        f"x{SQLISH}@example.com",
        "a\nb@example.com",
        "bell\x07@example.com",
        "no-at-sign",
        "",
        "two@@example.com",
        "user@localhost",
        "x" * (MAX_EMAIL_CHARS - len("@example.com") + 1) + "@example.com",
        "nul\x00@example.com",
    ]
    for email in bad:
        failure = await fails(sqlite_auth.sign_up(email))
        assert (failure.code, failure.param) == (grpc.StatusCode.INVALID_ARGUMENT, "email"), email
    assert await count(sqlite_auth, User) == 0


async def test_bad_passwords_are_rejected_on_sign_up(sqlite_auth, fails):
    for password in ["x" * (MIN_PASSWORD_CHARS - 1), "x" * (MAX_PASSWORD_CHARS + 1), "long enough\x00", ""]:
        failure = await fails(sqlite_auth.sign_up("pw@example.com", password))
        assert (failure.code, failure.param) == (grpc.StatusCode.INVALID_ARGUMENT, "password"), password
    assert await count(sqlite_auth, User) == 0


async def test_oversize_or_nul_login_input_is_rejected(sqlite_auth, fails):
    cases = [
        ("x" * (MAX_EMAIL_CHARS + 1), "long enough", "email"),
        ("nul\x00@example.com", "long enough", "email"),
        ("a@example.com", "x" * (MAX_PASSWORD_CHARS + 1), "password"),
        ("a@example.com", "nul\x00nul", "password"),
    ]
    for email, password, param in cases:
        failure = await fails(sqlite_auth.login(email, password))
        assert (failure.code, failure.param) == (grpc.StatusCode.INVALID_ARGUMENT, param)


async def test_bad_api_key_names_are_rejected(sqlite_auth, fails):
    user = await sqlite_auth.sign_up("names@example.com")
    for name in ["", "   ", "x" * (MAX_API_KEY_NAME_CHARS + 1), "nul\x00name"]:
        failure = await fails(sqlite_auth.create_key(user.id, name))
        assert (failure.code, failure.param) == (grpc.StatusCode.INVALID_ARGUMENT, "name"), name
    assert await count(sqlite_auth, ApiKey) == 0


async def test_oversize_or_nul_credentials_are_rejected(sqlite_auth, fails):
    for credential in ["cp-" + "x" * MAX_CREDENTIAL_CHARS, "cp-abc\x00def", "a.b\x00.c"]:
        failure = await fails(sqlite_auth.authenticate(credential))
        assert (failure.code, failure.param) == (grpc.StatusCode.INVALID_ARGUMENT, "credential")
        assert credential not in failure.message


async def test_odd_ids_are_not_found_not_an_error(auth, fails):
    """Ids with NUL (which PostgreSQL cannot even take as a parameter) or SQL text simply name nothing."""
    user = await auth.sign_up("ids@example.com")
    for bad_id in ["abc\x00", "\x00" * 32, SQLISH, "A" * 10_000]:
        for call in [auth.create_key(bad_id), auth.list_keys(bad_id), auth.revoke(user.id, bad_id)]:
            assert (await fails(call)).code == grpc.StatusCode.NOT_FOUND
