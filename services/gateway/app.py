"""The FastAPI application. ``create_app(settings)``; the lifespan opens and closes the gRPC channels."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from chatplane.gateway import (
    api_auth,
    api_chat,
    api_completions,
    api_conversations,
    api_exports,
    api_health,
    api_keys,
    api_models,
    api_responses,
    api_usage,
    web,
)
from chatplane.gateway.backends import Backends
from chatplane.gateway.errors import ERROR_RESPONSES, install_handlers
from chatplane.gateway.middleware import BodyLimitMiddleware
from chatplane.gateway.observability import MetricsMiddleware, instrument_tracing
from chatplane.gateway.settings import GatewaySettings

DESCRIPTION = """\
The public API of chatplane, compatible with OpenAI's Chat Completions API (use the official `openai` SDK with
`base_url=<this server>/v1`). Authenticate with `Authorization: Bearer <API key or access token>`.
"""


def create_app(settings: GatewaySettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        backends = Backends(settings)
        app.state.backends = backends
        await backends.start()  # the spool and its relay, the invalidations; Backends.close() flushes and stops them
        try:
            yield
        finally:
            await backends.close()

    app = FastAPI(
        title="chatplane", version="0.1.0", description=DESCRIPTION, lifespan=lifespan, responses=ERROR_RESPONSES,
        **({} if settings.docs_enabled else {"docs_url": None, "redoc_url": None, "openapi_url": None}),
    )
    install_handlers(app)
    for module in (api_health, api_auth, api_keys, api_models, api_chat, api_completions, api_responses,
                   api_conversations, api_exports, api_usage):
        app.include_router(module.router)
    # Outermost first: CORS answers preflights; the body limit runs before anything reads the body.
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
        )
    # The metrics of every request (outermost: it sees what the client sees); Prometheus scrapes them on the
    # metrics port (CHATPLANE_GATEWAY_METRICS_PORT), never on this public one.
    web.install(app, settings.web_dir)  # last: its catch-all route answers what no API route matched
    app.add_middleware(MetricsMiddleware, access_log=settings.access_log)
    instrument_tracing(app)
    return app
