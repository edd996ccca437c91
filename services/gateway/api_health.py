"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from chatplane.gateway.deps import BackendsDep
from chatplane.gateway.errors import SERVICE_UNAVAILABLE

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="auth, conversation and inference all answer SERVING")
async def readyz(backends: BackendsDep) -> JSONResponse:
    serving = await backends.readiness()
    services = {name: ("serving" if ok else "not_serving") for name, ok in serving.items()}
    down = [name for name, ok in serving.items() if not ok]
    if not down:
        return JSONResponse({"status": "ready", "services": services})
    body = {
        "error": {
            "message": f"Not ready: {', '.join(down)} {'is' if len(down) == 1 else 'are'} not serving.",
            "type": SERVICE_UNAVAILABLE,
            "param": None,
            "code": "not_ready",
        },
        "services": services,
    }
    return JSONResponse(body, status_code=503)
