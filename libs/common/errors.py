"""Errors across service boundaries.

Inside, errors are gRPC status codes. A service may attach an OpenAI-style error ``code`` and ``param`` as trailing
metadata so that the gateway can answer exactly as OpenAI would (``context_length_exceeded`` on ``messages``, ...).
"""

from __future__ import annotations

from typing import NoReturn

import grpc

CODE_KEY = "chatplane-error-code"
PARAM_KEY = "chatplane-error-param"


class ServiceError(Exception):
    """A request failed in a way its caller should hear about as ``status``, with an OpenAI-style ``code`` and
    ``param`` when one applies (``context_length_exceeded`` on ``messages``, ...)."""

    def __init__(
        self, status: grpc.StatusCode, message: str, *, code: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param

    @classmethod
    def from_rpc(cls, err: grpc.aio.AioRpcError) -> ServiceError:
        """The error a peer answered, with the code and param it attached."""
        code, param = error_details(err)
        status = err.code()
        return cls(status, err.details() or status.name.lower(), code=code, param=param)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status.name}, {self.message!r}, code={self.code!r}, param={self.param!r})"


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
