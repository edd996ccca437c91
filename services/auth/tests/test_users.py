"""Sign-up and login, on SQLite and PostgreSQL."""

from __future__ import annotations

import statistics
import time

import grpc
from argon2 import PasswordHasher
from sqlalchemy import select, update

from chatplane.auth.models import User
from chatplane.protos.auth.v1 import auth_pb2

PASSWORD = "correct horse battery staple"


async def stored_user(auth, email: str) -> User:
    async with auth.server.core.sessions() as session:
        return (await session.execute(select(User).where(User.email == email))).scalar_one()


async def test_sign_up_then_login_gives_a_working_token(auth):
    user = await auth.sign_up("Ada.Lovelace@Example.COM")
    assert len(user.id) == 32 and user.email == "ada.lovelace@example.com"
    assert user.created_at.seconds > 0

    token = await auth.stub.Login(auth_pb2.LoginRequest(email="ADA.lovelace@example.com", password=PASSWORD))
    assert token.token_type == "bearer" and token.expires_in == 3600

    principal = await auth.authenticate(token.access_token)
    assert principal.user_id == user.id
    assert principal.email == "ada.lovelace@example.com"
    assert principal.credential_type == auth_pb2.CREDENTIAL_TYPE_JWT
    assert principal.api_key_id == ""


async def test_duplicate_email_in_any_case_already_exists(auth, fails):
    await auth.sign_up("grace@example.com")
    failure = await fails(auth.sign_up("GRACE@Example.Com", "another password"))
    assert failure.code == grpc.StatusCode.ALREADY_EXISTS
    assert failure.param == "email"
    # the first account is untouched
    assert await auth.login("grace@example.com")


async def test_wrong_password_and_unknown_email_fail_identically(auth, fails):
    await auth.sign_up("linus@example.com")
    wrong = await fails(auth.login("linus@example.com", "not the password"))
    unknown = await fails(auth.login("nobody@example.com", "not the password"))
    invalid = await fails(auth.login("not an email", "not the password"))
    assert wrong.code == grpc.StatusCode.UNAUTHENTICATED
    assert wrong == unknown == invalid


async def test_unknown_email_costs_a_password_verification(auth, fails):
    """No user enumeration by timing: an unknown email spends an argon2 verify like a known one."""
    await auth.sign_up("timing@example.com")

    async def duration(email: str) -> float:
        start = time.perf_counter()
        await fails(auth.login(email, "wrong password"))
        return time.perf_counter() - start

    known = statistics.median([await duration("timing@example.com") for _ in range(3)])
    unknown = statistics.median([await duration("nobody@example.com") for _ in range(3)])
    assert unknown > 0.5 * known, (known, unknown)


async def test_passwords_are_stored_as_argon2_hashes(auth):
    await auth.sign_up("hash@example.com")
    row = await stored_user(auth, "hash@example.com")
    assert row.password_hash.startswith("$argon2id$")
    assert PASSWORD not in row.password_hash
    assert PasswordHasher().verify(row.password_hash, PASSWORD)


async def test_login_upgrades_an_outdated_hash(auth):
    await auth.sign_up("old@example.com")
    weak = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash(PASSWORD)
    async with auth.server.core.sessions() as session, session.begin():
        await session.execute(update(User).where(User.email == "old@example.com").values(password_hash=weak))

    await auth.login("old@example.com")

    upgraded = (await stored_user(auth, "old@example.com")).password_hash
    assert upgraded != weak
    assert not PasswordHasher().check_needs_rehash(upgraded)
    assert await auth.login("old@example.com")  # and the password still works
