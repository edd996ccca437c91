"""Sign-up and login (no credential needed), throttled: per client address and, for login, per account.

Every attempt takes one unit from its buckets before auth is asked (so a burst of parallel attempts is counted as it
arrives, not as the answers come back); a successful login gives its units back, so only failures add up. Beyond a
bucket: 429 with Retry-After, and auth (and its argon2 work) is not asked at all.
"""

from __future__ import annotations

import hashlib

from fastapi import APIRouter, Request, status

from chatplane.gateway import convert
from chatplane.gateway.deps import BackendsDep
from chatplane.gateway.errors import upstream
from chatplane.gateway.ratelimit import Bucket
from chatplane.gateway.schemas import LoginRequest, SignupRequest, TokenOut, UserOut
from chatplane.protos.auth.v1 import auth_pb2

router = APIRouter(prefix="/v1/auth", tags=["auth"])


def client_address(request: Request) -> str:
    """The caller's address: the connection's, or the one a trusted proxy forwarded (``forwarded_allow_ips``)."""
    return request.client.host if request.client else "unknown"


def _account(email: str) -> str:
    # The bucket is named by a hash: no email address in the rate-limit store.
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]


@router.post("/signup", status_code=status.HTTP_201_CREATED, response_model=UserOut, summary="Create a user")
async def signup(body: SignupRequest, backends: BackendsDep, request: Request) -> dict:
    settings = backends.settings
    if settings.signups_per_hour_per_address:
        bucket = Bucket(f"signup:addr:{client_address(request)}", settings.signups_per_hour_per_address, 3600)
        await backends.admission.attempt([bucket], "Too many sign-ups from this address.")
    with upstream("auth"):
        created = await backends.auth.SignUp(
            auth_pb2.SignUpRequest(email=body.email, password=body.password),
            timeout=settings.upstream_timeout_seconds,
        )
    return convert.user(created)


@router.post("/login", response_model=TokenOut, summary="Exchange email and password for a JWT access token")
async def login(body: LoginRequest, backends: BackendsDep, request: Request) -> dict:
    settings = backends.settings
    buckets = []
    if settings.login_attempts_per_minute_per_address:
        buckets.append(Bucket(f"login:addr:{client_address(request)}", settings.login_attempts_per_minute_per_address))
    if settings.login_attempts_per_minute_per_account:
        buckets.append(Bucket(f"login:account:{_account(body.email)}", settings.login_attempts_per_minute_per_account))
    if buckets:
        await backends.admission.attempt(buckets, "Too many login attempts.")
    with upstream("auth"):
        token = await backends.auth.Login(
            auth_pb2.LoginRequest(email=body.email, password=body.password),
            timeout=settings.upstream_timeout_seconds,
        )
    if buckets:
        backends.admission.refund(buckets)
    return {"access_token": token.access_token, "token_type": token.token_type or "bearer",
            "expires_in": token.expires_in}
