"""Which failures of a job are worth retrying: a :class:`~chatplane.common.errors.ServiceError` that is
``transient`` (an inference replica away or busy) is retried; :class:`PermanentJobError` never is."""

from __future__ import annotations

from chatplane.common.errors import FailedPrecondition


class PermanentJobError(FailedPrecondition):
    """The job can never succeed (retrying would not help): it is logged and dropped."""
