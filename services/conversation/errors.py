"""The conversation core's errors: :class:`chatplane.common.errors.ServiceError` with this service's messages."""

from __future__ import annotations

import grpc

from chatplane.common.errors import InvalidArgument, NotFound, ServiceError

__all__ = ["ServiceError", "from_inference", "invalid", "not_found"]

NOT_FOUND_MESSAGE = "conversation not found"

# Upstream statuses that mean the same to our caller as to us; anything else from inference is our problem.
_PASS_THROUGH = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}


def not_found() -> ServiceError:
    """The same answer for a missing, ill-formed or another user's conversation: existence is not disclosed."""
    return NotFound(NOT_FOUND_MESSAGE)


def invalid(message: str, param: str, code: str | None = None) -> ServiceError:
    return InvalidArgument(message, code=code, param=param)


def from_inference(err: ServiceError) -> ServiceError:
    """What a failed inference call means to our caller.

    INVALID_ARGUMENT (and the other request-related statuses) pass through with the code and param inference
    attached; NOT_FOUND from inference is an unknown model (never to be confused with a missing conversation);
    everything else (unreachable, internal errors, cancelled by a shutting-down peer) is UNAVAILABLE.
    """
    if err.status in _PASS_THROUGH:
        return err
    if err.status == grpc.StatusCode.NOT_FOUND:
        return ServiceError(
            grpc.StatusCode.NOT_FOUND, err.message or "model not found",
            code=err.code or "model_not_found", param=err.param or "model",
        )
    return ServiceError(grpc.StatusCode.UNAVAILABLE, "the inference service is unavailable, please retry")
