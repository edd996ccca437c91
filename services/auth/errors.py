"""Domain errors of the auth core. The gRPC adapter maps each to its status code; messages are safe to show."""

from __future__ import annotations

import grpc


class AuthError(Exception):
    status: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param


class InvalidArgument(AuthError):
    status = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(AuthError):
    status = grpc.StatusCode.NOT_FOUND


class AlreadyExists(AuthError):
    status = grpc.StatusCode.ALREADY_EXISTS


class Unauthenticated(AuthError):
    status = grpc.StatusCode.UNAUTHENTICATED


class FailedPrecondition(AuthError):
    status = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(AuthError):
    status = grpc.StatusCode.RESOURCE_EXHAUSTED
