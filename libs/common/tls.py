"""Service identity: mutual TLS on every gRPC hop, and each server's per-method list of the callers it allows.

Every process has one certificate, signed by the platform's CA, whose common name is its identity (``gateway``,
``auth``, ``conversation``, ``inference``, ``worker``, ...); a server's certificate also names the addresses it is
reached at. The files come from three variables shared by every service (``CHATPLANE_TLS_CERT_FILE``,
``CHATPLANE_TLS_KEY_FILE``, ``CHATPLANE_TLS_CA_FILE``): ``make run`` makes a development CA and the certificates under
``data/tls`` on first start (:mod:`chatplane.dev.devcerts`); the Helm chart mounts cert-manager's or its own.

With them, a gRPC server listens with TLS only and requires a client certificate from the same CA (a plaintext
caller cannot even complete the handshake), and :class:`AccessPolicy` refuses a method to any identity not listed for
it (PERMISSION_DENIED). Client channels (:func:`chatplane.common.grpc_client.channel`) present the process's
certificate and verify the server's. Without the files (unit tests of one service in-process) servers and channels
are plaintext and no identity is checked; production (``CHATPLANE_ENVIRONMENT=production``) refuses to start a
server or open a channel so, unless ``CHATPLANE_TLS_ALLOW_PLAINTEXT=true`` says that something else (a service mesh)
provides mutual TLS.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)

HEALTH_SERVICE = "grpc.health.v1.Health"
ANY_PEER = "*"  # in a policy: any caller with a certificate of the platform's CA


class TlsSettings(BaseSettings):
    """The process's certificate, key and the platform CA (all three, or none)."""

    model_config = SettingsConfigDict(env_prefix="CHATPLANE_TLS_", extra="ignore")

    cert_file: Path | None = Field(None, description="This process's certificate (PEM), signed by the platform CA; "
                                   "its common name is the process's identity.")
    key_file: Path | None = Field(None, description="The private key of CHATPLANE_TLS_CERT_FILE (PEM).")
    ca_file: Path | None = Field(None, description="The platform CA's certificate (PEM): peers must be signed by it.")
    allow_plaintext: bool = Field(False, description="Production only: start gRPC servers and channels without "
                                  "mutual TLS (only where something else, e.g. a service mesh, provides it). "
                                  "Development allows plaintext anyway.")
    environment: str = Field("development", validation_alias=AliasChoices("CHATPLANE_ENVIRONMENT",
                                                                           "chatplane_environment"))

    @model_validator(mode="after")
    def _all_or_none(self) -> TlsSettings:
        given = [f for f in (self.cert_file, self.key_file, self.ca_file) if f is not None]
        if given and len(given) != 3:
            raise ValueError("set all of CHATPLANE_TLS_CERT_FILE, _KEY_FILE and _CA_FILE, or none")
        for path in given:
            if not path.is_file():
                raise ValueError(f"{path} is not a readable file")
        if not given and self.environment == "production" and not self.allow_plaintext:
            raise ValueError("production needs mutual TLS on every gRPC hop: set CHATPLANE_TLS_CERT_FILE, _KEY_FILE "
                             "and _CA_FILE (or CHATPLANE_TLS_ALLOW_PLAINTEXT=true where a service mesh provides it)")
        return self

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None

    def files(self) -> TlsFiles | None:
        if not self.enabled:
            return None
        assert self.cert_file and self.key_file and self.ca_file
        return TlsFiles(self.cert_file.read_bytes(), self.key_file.read_bytes(), self.ca_file.read_bytes())


@dataclass(frozen=True)
class TlsFiles:
    cert: bytes
    key: bytes
    ca: bytes

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.key, self.cert)], root_certificates=self.ca,
                                           require_client_auth=True)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.ca, private_key=self.key,
                                            certificate_chain=self.cert)


def peer_identity(context: grpc.aio.ServicerContext) -> str | None:
    """The caller's identity: the common name of its (verified) client certificate; None over plaintext."""
    names = context.auth_context().get("x509_common_name") or []
    return names[0].decode() if names else None


class AccessPolicy(grpc.aio.ServerInterceptor):
    """Which identities may call which methods of a server: ``{"/pkg.Service/Method": {"gateway"}}``, or a whole
    service with ``"/pkg.Service/*"``. Anything not listed is refused, except the health service (any peer of the
    CA). Enforced only over TLS (without it there is no identity to check: see the module doc)."""

    def __init__(self, rules: Mapping[str, Iterable[str]], *, enforce: bool) -> None:
        self.rules = {method: frozenset(callers) for method, callers in rules.items()}
        self.enforce = enforce
        self._cache: dict[str, frozenset[str]] = {}
        self._guarded: dict[str, grpc.RpcMethodHandler] = {}

    def allowed(self, method: str) -> frozenset[str]:
        found = self._cache.get(method)
        if found is None:
            service = method.rsplit("/", 1)[0]
            if service.lstrip("/") == HEALTH_SERVICE:
                found = frozenset({ANY_PEER})
            else:
                found = self.rules.get(method, self.rules.get(f"{service}/*", frozenset()))
            self._cache[method] = found
        return found

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or not self.enforce:
            return handler
        method = handler_call_details.method
        guarded = self._guarded.get(method)
        if guarded is None:
            guarded = self._guarded[method] = _guarded(handler, method, self.allowed(method))
        return guarded


def _guarded(handler: grpc.RpcMethodHandler, method: str, allowed: frozenset[str]) -> grpc.RpcMethodHandler:
    async def check(context: grpc.aio.ServicerContext) -> None:
        who = peer_identity(context)
        if who is None or not (ANY_PEER in allowed or who in allowed):
            log.warning("caller refused", extra={"method": method, "peer_identity": who or "(none)"})
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{method} is not allowed to {who or 'this caller'}")

    if handler.unary_unary:
        inner_uu = handler.unary_unary

        async def unary_unary(request, context):
            await check(context)
            return await inner_uu(request, context)

        return handler._replace(unary_unary=unary_unary)
    if handler.unary_stream:
        inner_us = handler.unary_stream

        async def unary_stream(request, context):
            await check(context)
            async for reply in _relay(inner_us(request, context)):
                yield reply

        return handler._replace(unary_stream=unary_stream)
    if handler.stream_unary:
        inner_su = handler.stream_unary

        async def stream_unary(requests, context):
            await check(context)
            return await inner_su(requests, context)

        return handler._replace(stream_unary=stream_unary)
    inner_ss = handler.stream_stream

    async def stream_stream(requests, context):
        await check(context)
        async for reply in _relay(inner_ss(requests, context)):
            yield reply

    return handler._replace(stream_stream=stream_stream)


async def _relay(replies):
    """A streaming servicer's replies, passed on (one that writes with context.write() returns none: awaited)."""
    if not inspect.isasyncgen(replies):
        await replies
        return
    try:
        async for reply in replies:
            yield reply
    finally:
        await replies.aclose()
