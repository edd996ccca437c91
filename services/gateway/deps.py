"""FastAPI dependencies, typed with ``Annotated`` (``CurrentPrincipal``, ``BackendsDep``, stubs)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from chatplane.gateway.authn import MISSING_MESSAGE, Principal
from chatplane.gateway.backends import Backends
from chatplane.gateway.errors import unauthenticated
from chatplane.gateway.observability import observe
from chatplane.gateway.settings import GatewaySettings
from chatplane.protos.auth.v1 import auth_pb2_grpc
from chatplane.protos.conversation.v1 import conversation_pb2_grpc

# Shows the "Authorize" button in /docs; the check itself is ours (auto_error=False) so that errors keep OpenAI's shape.
_bearer = HTTPBearer(auto_error=False, description="An API key (from POST /v1/api-keys) or a JWT from login.")


async def get_backends(request: Request) -> Backends:
    # async on purpose, here and below: FastAPI runs a plain `def` dependency in a worker thread, two thread
    # switches per request for a dictionary lookup.
    return request.app.state.backends


BackendsDep = Annotated[Backends, Depends(get_backends)]


async def get_settings(backends: BackendsDep) -> GatewaySettings:
    return backends.settings


SettingsDep = Annotated[GatewaySettings, Depends(get_settings)]


async def current_principal(
    backends: BackendsDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    if credentials is None or not credentials.credentials.strip():
        raise unauthenticated(MISSING_MESSAGE)
    principal = await backends.authenticator.authenticate(credentials.credentials.strip())
    observe().principal(principal.api_key_id, principal.user_id)  # labels the metrics, in the access log
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


async def _auth_stub(backends: BackendsDep) -> auth_pb2_grpc.AuthServiceStub:
    return backends.auth


async def _conversation_stub(backends: BackendsDep) -> conversation_pb2_grpc.ConversationServiceStub:
    return backends.conversation


AuthStub = Annotated[auth_pb2_grpc.AuthServiceStub, Depends(_auth_stub)]
ConversationStub = Annotated[conversation_pb2_grpc.ConversationServiceStub, Depends(_conversation_stub)]
