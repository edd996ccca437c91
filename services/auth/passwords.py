"""Password hashing with Argon2id (argon2-cffi).

Each hash or verify costs 64 MiB and up to four threads (argon2's parallelism) for tens to hundreds of milliseconds,
so they run in a small pool of their own
(``password_hash_concurrency`` threads, not the default executor sized by the host's cores): a flood of logins can
neither exhaust the pod's memory nor take every core from authenticated traffic. At most ``password_hash_queue``
more wait for a thread; beyond that a sign-up or login is refused at once (RESOURCE_EXHAUSTED, a 429 at the gateway).
"""

from __future__ import annotations

import asyncio
import secrets
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from chatplane.common.errors import ResourceExhausted

T = TypeVar("T")


class Passwords:
    def __init__(self, hasher: PasswordHasher | None = None, *, concurrency: int = 1, queue: int = 4) -> None:
        self._hasher = hasher or PasswordHasher()
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="argon2")
        self._slots = concurrency + queue  # running + waiting
        self._in_use = 0
        # Verified against when the email is unknown, so that an unknown email costs the same time as a known one.
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))

    async def _run(self, fn: Any, *args: Any) -> Any:
        if self._in_use >= self._slots:
            raise ResourceExhausted("too many password checks in progress, retry shortly", code="rate_limit_exceeded")
        self._in_use += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        finally:
            self._in_use -= 1

    async def hash(self, password: str) -> str:
        return await self._run(self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> tuple[bool, str | None]:
        """(matches, new hash when the stored one uses outdated parameters). ``None``: spend a dummy verify."""
        if password_hash is None:
            await self._run(self._verify, self._dummy_hash, password)
            return False, None
        if not await self._run(self._verify, password_hash, password):
            return False, None
        if self._hasher.check_needs_rehash(password_hash):
            return True, await self.hash(password)
        return True, None

    def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
