"""Sign-up and login (no credential needed)."""

from __future__ import annotations

from fastapi import APIRouter, status

from chatplane.gateway import convert
from chatplane.gateway.deps import AuthStub, SettingsDep
from chatplane.gateway.errors import upstream
from chatplane.gateway.schemas import LoginRequest, SignupRequest, TokenOut, UserOut
from chatplane.protos.auth.v1 import auth_pb2

router = APIRouter(prefix="/v1/auth", tags=["auth"])


@router.post("/signup", status_code=status.HTTP_201_CREATED, response_model=UserOut, summary="Create a user")
async def signup(body: SignupRequest, auth: AuthStub, settings: SettingsDep) -> dict:
    with upstream("auth"):
        created = await auth.SignUp(
            auth_pb2.SignUpRequest(email=body.email, password=body.password),
            timeout=settings.upstream_timeout_seconds,
        )
    return convert.user(created)


@router.post("/login", response_model=TokenOut, summary="Exchange email and password for a JWT access token")
async def login(body: LoginRequest, auth: AuthStub, settings: SettingsDep) -> dict:
    with upstream("auth"):
        token = await auth.Login(
            auth_pb2.LoginRequest(email=body.email, password=body.password),
            timeout=settings.upstream_timeout_seconds,
        )
    return {"access_token": token.access_token, "token_type": token.token_type or "bearer",
            "expires_in": token.expires_in}
