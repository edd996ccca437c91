"""The Celery application of the conversation jobs, built from the service's settings (nothing at import time).

Delivery is at least once: tasks are acknowledged after they ran (``acks_late``) and re-queued when a worker dies,
which is safe because every job is idempotent. Transient failures (inference or database unreachable) are retried
with exponential backoff and jitter. No result backend: a job's outcome is stored where it belongs, in the
conversation database (the title on the conversation, the rendering in its export row).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task
from celery.signals import worker_process_shutdown

from chatplane.conversation.jobs import EXPORT_EXPIRY_TASK, EXPORT_TASK, RETENTION_TASK, TITLE_TASK
from chatplane.conversation.jobs.context import Runtime
from chatplane.conversation.jobs.errors import PermanentJobError
from chatplane.conversation.jobs.exporting import give_up, run_export
from chatplane.conversation.jobs.retention import apply_retention
from chatplane.conversation.jobs.titles import generate_title
from chatplane.conversation.settings import ConversationSettings

log = logging.getLogger(__name__)

RETRY: dict[str, Any] = {
    "autoretry_for": (Exception,),
    "dont_autoretry_for": (PermanentJobError,),
    "retry_backoff": 1,  # 1 s, 2 s, 4 s, ... (with full jitter)
    "retry_backoff_max": 300,
    "retry_jitter": True,
    "max_retries": 8,
}
BROKER_CONNECT_TIMEOUT_SECONDS = 2.0


def make_celery(settings: ConversationSettings) -> Celery:
    """The app, configured from ``settings``, with the three jobs registered."""
    app = Celery("chatplane.conversation", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_default_queue=settings.celery_queue,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=1,
        worker_concurrency=settings.worker_concurrency,
        worker_hijack_root_logger=False,  # our JSON logs (setup_logging) stay
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=BROKER_CONNECT_TIMEOUT_SECONDS,
        enable_utc=True,
        timezone="UTC",
        beat_schedule=_schedule(settings),
    )
    if settings.broker_url.startswith(("redis://", "rediss://")):
        # Every key of this queue (messages, unacked, control) under one prefix: queues never see each other's.
        app.conf.broker_transport_options = {"global_keyprefix": f"{settings.celery_queue}:"}
    runtime = Runtime(settings)

    @worker_process_shutdown.connect(weak=False)
    def _close(**_: Any) -> None:
        runtime.close()

    @app.task(name=TITLE_TASK, bind=True, **RETRY)
    def title(self: Task, conversation_id: str) -> None:
        runtime.run(lambda ctx: generate_title(ctx, conversation_id))

    class ExportTask(Task):
        def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
            log.error("export failed for good", extra={"export_id": args[0] if args else None})
            runtime.run(lambda ctx: give_up(ctx, args[0]))

    @app.task(name=EXPORT_TASK, bind=True, base=ExportTask, **RETRY)
    def export(self: Task, export_id: str) -> None:
        runtime.run(lambda ctx: run_export(ctx, export_id))

    @app.task(name=RETENTION_TASK, bind=True, **{**RETRY, "max_retries": 3})
    def retention(self: Task) -> None:
        runtime.run(apply_retention)

    @app.task(name=EXPORT_EXPIRY_TASK, bind=True, **{**RETRY, "max_retries": 3})
    def export_expiry(self: Task) -> None:
        runtime.run(lambda ctx: ctx.exports.expire())

    return app


def _schedule(settings: ConversationSettings) -> dict[str, dict[str, Any]]:
    schedule: dict[str, dict[str, Any]] = {}
    if settings.retention_days > 0:
        schedule["retention"] = {
            "task": RETENTION_TASK,
            "schedule": settings.retention_interval_seconds,
            "options": {"expires": settings.retention_interval_seconds},  # a backlog of runs is pointless
        }
    if settings.export_ttl_seconds > 0:
        every = min(settings.retention_interval_seconds, settings.export_ttl_seconds)
        schedule["export-expiry"] = {"task": EXPORT_EXPIRY_TASK, "schedule": every, "options": {"expires": every}}
    return schedule
