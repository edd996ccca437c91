"""Which failures of a job are worth retrying."""

from __future__ import annotations

import grpc

from chatplane.common.errors import ServiceError

_TRANSIENT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.ABORTED,
}


class PermanentJobError(Exception):
    """The job can never succeed (retrying would not help): it is logged and dropped."""


def transient_inference(err: ServiceError) -> bool:
    return err.status in _TRANSIENT
