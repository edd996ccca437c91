"""``python -m chatplane.conversation`` serves; ``... migrate`` only migrates; ``... worker`` runs the jobs."""

from __future__ import annotations

import sys

from chatplane.common.grpc_server import run
from chatplane.common.logging import setup_logging
from chatplane.common.telemetry import setup_telemetry
from chatplane.conversation.server import serve
from chatplane.conversation.service import migrate_database
from chatplane.conversation.settings import ConversationSettings


def main(argv: list[str]) -> int:
    settings = ConversationSettings()
    setup_logging("conversation-worker" if argv == ["worker"] else "conversation", settings.log_level)
    if argv == ["migrate"]:
        run(migrate_database(settings.database_url))
        return 0
    if argv == ["worker"]:
        from chatplane.common.metrics import serve_worker_metrics
        from chatplane.conversation.jobs.worker import run_worker

        setup_telemetry("conversation-worker", 0, settings.host)
        serve_worker_metrics(settings.worker_metrics_port, settings.host)  # before the prefork children start
        run_worker(settings)
        return 0
    if argv:
        print("usage: python -m chatplane.conversation [migrate | worker]", file=sys.stderr)
        return 2
    setup_telemetry("conversation", settings.metrics_port, settings.host)
    run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
