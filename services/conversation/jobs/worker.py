"""``python -m chatplane.conversation worker``: a Celery worker for the jobs, with the scheduler (beat) inside."""

from __future__ import annotations

import os
from pathlib import Path

from chatplane.conversation.jobs.app import make_celery
from chatplane.conversation.settings import ConversationSettings


def worker_argv(settings: ConversationSettings) -> list[str]:
    argv = [
        "worker",
        f"--loglevel={settings.log_level}",
        f"--concurrency={settings.worker_concurrency}",
        f"--queues={settings.celery_queue}",
        f"--hostname=conversation-{os.getpid()}@%h",
        "--without-gossip",
        "--without-mingle",
    ]
    if settings.worker_beat:
        schedule = Path(settings.data_dir).resolve() / f"celerybeat-{settings.celery_queue}"
        schedule.parent.mkdir(parents=True, exist_ok=True)
        argv += ["--beat", f"--schedule={schedule}"]
    return argv


def run_worker(settings: ConversationSettings) -> None:
    """Runs until SIGTERM (warm shutdown: running jobs finish; unacknowledged ones go back to the queue)."""
    make_celery(settings).worker_main(argv=worker_argv(settings))
