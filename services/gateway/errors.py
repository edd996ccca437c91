"""OpenAI's error object, the mapping from gRPC status codes to it, and the app's exception handlers.

Every error the gateway answers has the shape ``{"error": {"message", "type", "param", "code"}}`` so that the
``openai`` SDK raises its usual exception classes (it picks them by HTTP status).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from chatplane.common.errors import ServiceError, error_details
from chatplane.gateway.observability import observe
from chatplane.gateway.sse import ClientGone

log = logging.getLogger(__name__)

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"
SERVICE_UNAVAILABLE = "service_unavailable"
INTERNAL_MESSAGE = (
    "The server had an error while processing your request. Sorry about that! "
    "You can retry your request, or contact us if the error persists."
)


class APIError(Exception):
    """An error answered to the client as OpenAI's error object."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = INVALID_REQUEST,  # noqa: A002 - OpenAI's field name
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorOut(BaseModel):
    """OpenAI's error object, the body of every error answer."""

    error: ErrorDetail


# Every status an operation may answer with OpenAI's error object, in the OpenAPI document (FastAPI's `responses`).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut, "description": description}
    for status, description in {
        400: "Bad parameter value, malformed JSON, text that is not valid Unicode",
        401: "Missing, unknown, revoked, expired or tampered credential",
        403: "Administrators only",
        404: "Unknown route, model or resource (another user's resources do not exist for the caller)",
        409: "Conflict (e.g. the email is taken)",
        413: "Body too large",
        422: "Schema validation error (wrong type, missing field)",
        429: "Rate limit, quota, or too many attempts (see Retry-After)",
        500: "Server error",
        502: "A backend ended a reply unexpectedly",
        503: "A backend is unavailable",
        504: "A backend did not answer in time",
    }.items()
}


def invalid(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """A 400 for a bad parameter value."""
    return APIError(400, message, param=param, code=code)


def unauthenticated(message: str) -> APIError:
    return APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def unavailable(service: str) -> APIError:
    return APIError(
        503,
        f"The {service} service is temporarily unavailable. Please retry your request shortly.",
        type=SERVICE_UNAVAILABLE,
        code="service_unavailable",
    )


def internal() -> APIError:
    return APIError(500, INTERNAL_MESSAGE, type=SERVER_ERROR)


# gRPC status -> (HTTP status, error type, default code). Client errors carry the service's own message.
_CLIENT_ERRORS: dict[grpc.StatusCode, tuple[int, str, str | None]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, INVALID_REQUEST, None),
    grpc.StatusCode.FAILED_PRECONDITION: (400, INVALID_REQUEST, None),
    grpc.StatusCode.OUT_OF_RANGE: (400, INVALID_REQUEST, None),
    grpc.StatusCode.NOT_FOUND: (404, INVALID_REQUEST, "not_found"),
    # Never 403: a resource of another user does not exist for the caller.
    grpc.StatusCode.PERMISSION_DENIED: (404, INVALID_REQUEST, "not_found"),
    grpc.StatusCode.ALREADY_EXISTS: (409, INVALID_REQUEST, "conflict"),
    grpc.StatusCode.ABORTED: (409, INVALID_REQUEST, "conflict"),  # a concurrent change (e.g. a reply streaming)
    grpc.StatusCode.UNAUTHENTICATED: (401, INVALID_REQUEST, "invalid_api_key"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error", "rate_limit_exceeded"),
}


def from_grpc(err: grpc.aio.AioRpcError | ServiceError, service: str) -> APIError:
    """The client-facing error for a failed call to ``service`` (a gRPC error, or a client's
    :class:`ServiceError`). Server-side details are logged, never returned."""
    if isinstance(err, ServiceError):
        status, details, code, param = err.status, err.message, err.code, err.param
    else:
        status, details = err.code(), err.details()
        code, param = error_details(err)
    if status in _CLIENT_ERRORS:
        http_status, err_type, default_code = _CLIENT_ERRORS[status]
        if code == "model_not_found":
            http_status = 404
        headers = {"WWW-Authenticate": "Bearer"} if http_status == 401 else None
        if http_status == 429:  # a service refused for load (e.g. auth's password checks): retry shortly
            headers = {"retry-after": "1"}
        return APIError(
            http_status, details or status.name.lower(), type=err_type, param=param, code=code or default_code,
            headers=headers,
        )
    if status in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
        log.warning("upstream unavailable", extra={"upstream": service, "grpc_status": status.name})
        return unavailable(service)
    if status == grpc.StatusCode.DEADLINE_EXCEEDED:
        log.warning("upstream deadline exceeded", extra={"upstream": service})
        return APIError(504, f"The {service} service did not answer in time. Please retry.", type=SERVER_ERROR,
                        code="timeout")
    log.error("upstream error", extra={"upstream": service, "grpc_status": status.name, "details": details})
    return internal()


@contextmanager
def upstream(service: str) -> Iterator[None]:
    """Turn a failed gRPC call inside the block into an :class:`APIError`."""
    try:
        yield
    except (grpc.aio.AioRpcError, ServiceError) as err:
        raise from_grpc(err, service) from None


def stream_failure(exc: Exception, stream: str, request_id: str) -> APIError:
    """What a stream tells its client when it fails after the status line went out (as an event, then it ends): an
    :class:`APIError` as itself; anything else is logged and told as a 500 without details."""
    if isinstance(exc, APIError):
        return exc
    log.error(f"{stream} stream failed", extra={"request_id": request_id}, exc_info=exc)
    return APIError(500, "The server had an error while streaming the response.", type=SERVER_ERROR)


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "bytes"}


def _is_union_tag(part: str) -> bool:
    """Pydantic names the member of a union in error locations (``content.str``); that is no field."""
    return part in _TYPE_TAGS or any(c in part for c in "[](), -")


def field_path(loc: tuple[Any, ...] | list[Any]) -> str | None:
    """``("body", "messages", 0, "content")`` -> ``"messages[0].content"``."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    out = ""
    for part in parts:
        if isinstance(part, str) and _is_union_tag(part):
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or None


# Pydantic error types that mean "the value is of the right type but not allowed": 400 like OpenAI's bad params.
# Everything else (missing fields, wrong types) is a schema error: 422.
_VALUE_ERRORS = {
    "string_too_long", "string_too_short", "too_long", "too_short", "greater_than", "greater_than_equal",
    "less_than", "less_than_equal", "literal_error", "enum", "value_error", "finite_number", "multiple_of",
    "string_pattern_mismatch",
}


def validation_error(exc: RequestValidationError) -> APIError:
    errors = list(exc.errors())
    for e in errors:
        if e.get("type") == "json_invalid":
            return invalid(
                "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
                "HTTP library correctly. The API expects a JSON payload, but what was sent was not valid JSON.)"
            )
    for e in errors:
        if e.get("type") == "extra_forbidden":
            name = field_path(e.get("loc", ()))
            return invalid(f"Unrecognized request argument supplied: {name}", param=name)
    if not errors:
        return APIError(422, "Invalid request.")
    first = errors[0]
    param = field_path(first.get("loc", ()))
    message = f"{first.get('msg', 'Invalid value')}" + (f": '{param}'" if param else "")
    if first.get("type") in _VALUE_ERRORS:
        return invalid(message, param=param)
    return APIError(422, message, param=param)


async def _api_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    if exc.status == 429:
        observe().reject(exc.code or "")
    return exc.response()


async def _validation_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return validation_error(exc).response()


async def _http_exception_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    target = f"{request.method} {request.url.path}"
    if exc.status_code == 404:
        err = APIError(404, f"Invalid URL ({target})")
    elif exc.status_code == 405:
        err = APIError(405, f"Invalid method for URL ({target})")
    elif exc.status_code >= 500:
        err = internal()
    else:
        err = APIError(exc.status_code, str(exc.detail))
    headers = dict(exc.headers or {})
    headers.update(err.headers or {})
    err.headers = headers or None
    return err.response()


async def _client_gone_handler(request: Request, exc: Exception) -> Response:
    # Nobody reads this; 499 ("client closed request") makes the access log say what happened.
    return Response(status_code=499)


async def _unhandled_handler(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", extra={"path": request.url.path})
    return internal().response()


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_exception_handler)
    app.add_exception_handler(ClientGone, _client_gone_handler)
    app.add_exception_handler(Exception, _unhandled_handler)
