"""Errors across service boundaries.

Inside, errors are gRPC status codes. A service may attach an OpenAI-style error ``code`` and ``param`` as trailing
metadata so that the gateway can answer exactly as OpenAI would (``context_length_exceeded`` on ``messages``, ...).
"""

from __future__ import annotations

from typing import NoReturn

import grpc

CODE_KEY = "chatplane-error-code"
PARAM_KEY = "chatplane-error-param"


async def abort(
    context: grpc.aio.ServicerContext,
    status: grpc.StatusCode,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
) -> NoReturn:
    metadata = []
    if code:
        metadata.append((CODE_KEY, code))
    if param:
        metadata.append((PARAM_KEY, param))
    if metadata:
        context.set_trailing_metadata(tuple(metadata))
    await context.abort(status, message)
    raise AssertionError("unreachable")  # context.abort raises


def error_details(err: grpc.aio.AioRpcError) -> tuple[str | None, str | None]:
    """The (code, param) a service attached to a failed call, if any."""
    code = param = None
    for key, value in err.trailing_metadata() or ():
        if key == CODE_KEY:
            code = value
        elif key == PARAM_KEY:
            param = value
    return code, param
