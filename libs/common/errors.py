"""The platform's one domain error, and the one place a gRPC server turns it into a status.

Every service core raises :class:`ServiceError` (or one of its status shorthands, :class:`InvalidArgument`,
:class:`NotFound`, ...): a gRPC status, a message safe to show, and an OpenAI-style error ``code`` and ``param`` when
one applies (``context_length_exceeded`` on ``messages``, ...). Servicers wrap each method in :func:`handled`, which
aborts the call with that status and attaches ``code`` and ``param`` as trailing metadata (MLServer's
``_handle_mlserver_error`` does the same), so that the gateway can answer exactly as OpenAI would. A client reads
them back with :meth:`ServiceError.from_rpc`.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import grpc

CODE_KEY = "chatplane-error-code"
PARAM_KEY = "chatplane-error-param"
INTERNAL_MESSAGE = "internal error"

# Statuses that say "try again later" (the peer is away, busy, or stopping), not "this request is wrong".
TRANSIENT = frozenset({
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.ABORTED,
})

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


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
        return ServiceError(status, err.details() or status.name.lower(), code=code, param=param)

    @property
    def transient(self) -> bool:
        """Retrying the same request later may succeed."""
        return self.status in TRANSIENT

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status.name}, {self.message!r}, code={self.code!r}, param={self.param!r})"


class _Shorthand(ServiceError):
    """A :class:`ServiceError` of one fixed status: ``InvalidArgument("...", param="n")``."""

    STATUS = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(self.STATUS, message, code=code, param=param)


class InvalidArgument(_Shorthand): STATUS = grpc.StatusCode.INVALID_ARGUMENT  # noqa: E701
class NotFound(_Shorthand): STATUS = grpc.StatusCode.NOT_FOUND  # noqa: E701
class AlreadyExists(_Shorthand): STATUS = grpc.StatusCode.ALREADY_EXISTS  # noqa: E701
class Unauthenticated(_Shorthand): STATUS = grpc.StatusCode.UNAUTHENTICATED  # noqa: E701
class FailedPrecondition(_Shorthand): STATUS = grpc.StatusCode.FAILED_PRECONDITION  # noqa: E701
class ResourceExhausted(_Shorthand): STATUS = grpc.StatusCode.RESOURCE_EXHAUSTED  # noqa: E701
class Aborted(_Shorthand): STATUS = grpc.StatusCode.ABORTED  # noqa: E701
class Unavailable(_Shorthand): STATUS = grpc.StatusCode.UNAVAILABLE  # noqa: E701


async def abort(
    context: grpc.aio.ServicerContext,
    status: grpc.StatusCode,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
) -> NoReturn:
    """End the call with ``status``, carrying ``code`` and ``param`` in the trailing metadata."""
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


def handled(
    method: F | None = None,
    *,
    unavailable: tuple[type[BaseException], ...] = (),
    unavailable_message: str = "a backing store is unavailable, retry later",
) -> Any:
    """Wrap a servicer method (unary, or a server stream written as an async generator): a :class:`ServiceError`
    becomes its status with its code and param; an exception of ``unavailable`` (a database that cannot be reached)
    UNAVAILABLE; anything else is logged and becomes INTERNAL, its details never sent. Use as ``@handled`` or
    ``@handled(unavailable=(OperationalError, ...), unavailable_message="...")``."""

    def decorate(fn: F) -> F:
        name = fn.__name__

        async def fail(context: grpc.aio.ServicerContext, exc: Exception) -> NoReturn:
            if isinstance(exc, ServiceError):
                await abort(context, exc.status, exc.message, code=exc.code, param=exc.param)
            if unavailable and isinstance(exc, unavailable):
                log.exception("dependency unavailable", extra={"method": name})
                await abort(context, grpc.StatusCode.UNAVAILABLE, unavailable_message)
            log.exception("internal error", extra={"method": name})
            await abort(context, grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)

        if inspect.isasyncgenfunction(fn):
            @functools.wraps(fn)
            async def stream(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
                replies = fn(self, request, context)
                try:
                    async for reply in replies:
                        yield reply
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:  # noqa: BLE001 - every failure ends the call with a status
                    await fail(context, exc)
                finally:
                    await replies.aclose()  # at once (a cancelled call's finally stops the work), not when collected

            return stream  # type: ignore[return-value]

        @functools.wraps(fn)
        async def unary(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await fn(self, request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure ends the call with a status
                await fail(context, exc)

        return unary  # type: ignore[return-value]

    return decorate(method) if method is not None else decorate
