"""API keys of the calling user: create (the secret is shown once), list, revoke."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status

from chatplane.gateway import convert
from chatplane.gateway.deps import AuthStub, BackendsDep, CurrentPrincipal, SettingsDep
from chatplane.gateway.errors import upstream
from chatplane.gateway.schemas import ApiKeyCreate, ApiKeyList, ApiKeyOut, CreatedApiKeyOut
from chatplane.protos.auth.v1 import auth_pb2

router = APIRouter(prefix="/v1/api-keys", tags=["api keys"])

ApiKeyId = Annotated[str, Path(max_length=128, pattern=r"^[A-Za-z0-9_-]+$")]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=CreatedApiKeyOut, summary="Create an API key")
async def create_api_key(
    body: ApiKeyCreate, principal: CurrentPrincipal, auth: AuthStub, settings: SettingsDep
) -> dict:
    with upstream("auth"):
        created = await auth.CreateApiKey(
            auth_pb2.CreateApiKeyRequest(user_id=principal.user_id, name=body.name),
            timeout=settings.upstream_timeout_seconds,
        )
    return {**convert.api_key(created.api_key), "key": created.key}


@router.get("", response_model=ApiKeyList, summary="List your API keys (without their secrets)")
async def list_api_keys(principal: CurrentPrincipal, auth: AuthStub, settings: SettingsDep) -> dict:
    with upstream("auth"):
        reply = await auth.ListApiKeys(
            auth_pb2.ListApiKeysRequest(user_id=principal.user_id), timeout=settings.upstream_timeout_seconds
        )
    return {"object": "list", "data": [convert.api_key(k) for k in reply.api_keys]}


@router.delete("/{api_key_id}", response_model=ApiKeyOut, summary="Revoke an API key")
async def revoke_api_key(api_key_id: ApiKeyId, principal: CurrentPrincipal, backends: BackendsDep) -> dict:
    with upstream("auth"):
        revoked = await backends.auth.RevokeApiKey(
            auth_pb2.RevokeApiKeyRequest(user_id=principal.user_id, api_key_id=api_key_id),
            timeout=backends.settings.upstream_timeout_seconds,
        )
    await backends.invalidations.api_key_changed(revoked.id or api_key_id)  # every replica stops accepting it
    return convert.api_key(revoked)
