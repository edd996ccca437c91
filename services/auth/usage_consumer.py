"""``python -m chatplane.auth consume-usage``: the usage consumer, a process of its own beside the auth service.

Reads ``completion.finished`` events from Kafka (consumer group ``chatplane-usage``) and adds them to the daily usage
rows in auth's database; idempotent by event id, offsets committed after the rows are written.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from chatplane.auth import metering
from chatplane.auth.settings import AuthSettings
from chatplane.common import db
from chatplane.common.consumer import EventConsumer

log = logging.getLogger(__name__)


def usage_consumer(settings: AuthSettings, sessions) -> EventConsumer:
    return EventConsumer(
        settings.kafka_bootstrap_servers,
        metering.USAGE_CONSUMER_GROUP,
        metering.USAGE_TOPICS,
        sessions,
        metering.apply_event,
        session_timeout_ms=settings.consumer_session_timeout_ms,
        batch_handler=metering.apply_events,  # a polled batch summed per usage row, one upsert per row
    )


async def consume_usage(settings: AuthSettings) -> None:
    """Consume until SIGTERM/SIGINT."""
    if not settings.kafka_bootstrap_servers:
        raise SystemExit("consume-usage: CHATPLANE_KAFKA_BOOTSTRAP_SERVERS is empty (events are disabled)")
    # No migrations here: the auth service runs them; until its tables exist the consumer retries.
    engine = db.make_engine(settings.database_url)
    consumer = usage_consumer(settings, db.sessionmaker(engine))
    task = asyncio.create_task(consumer.run())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, consumer.stop)
    try:
        await task
    finally:
        await consumer.close()
        await engine.dispose()
        log.info("usage consumer stopped", extra={"processed": consumer.processed, "skipped": consumer.skipped})
