"""The gateway's durable spool of finished stateless completions: a local outbox (a SQLite file of the gateway's
own) that the same relay as the services' (:class:`chatplane.common.relay.OutboxRelay`) publishes to Kafka's usage
topic, where the usage consumer adds them to the usage table (idempotent by event id).

Nothing waits for auth any more: a completion is on disk at most ``max_delay`` (50 ms) after it ended (written in
batches, one transaction each), then published with ``acks=all`` whenever the broker is there, in order, and marked
sent only once acknowledged. A gateway that stops gracefully writes what it holds and gives the relay a few seconds to
publish; a gateway that is killed, or finds the broker away, leaves the rest in the file, and the next process on the
same data folder publishes it. In a cluster the file lives on the pod's volume (``gateway.spool`` in the chart).
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import MetaData

from chatplane.common import db
from chatplane.common.events import envelope
from chatplane.common.metrics import OutboxMonitor
from chatplane.common.outbox import add_events, outbox_table
from chatplane.common.relay import OutboxRelay
from chatplane.protos.events.v1 import events_pb2

log = logging.getLogger(__name__)

PRODUCER = "gateway"
_metadata = MetaData()
outbox = outbox_table(_metadata)


class CompletionSpool:
    def __init__(self, path: Path, bootstrap_servers: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.engine = db.make_engine(f"sqlite+aiosqlite:///{path}")
        self._sessions = db.sessionmaker(self.engine)
        # None when events are disabled: completions then wait in the file (like the services' outboxes).
        self.relay = OutboxRelay(self.engine, bootstrap_servers, name="gateway") if bootstrap_servers else None
        self.monitor = OutboxMonitor(self.engine)

    async def start(self) -> None:
        async with self.engine.begin() as conn:
            await conn.run_sync(_metadata.create_all)
        if self.relay is not None:
            self.relay.start()
        self.monitor.start()

    async def write(self, records: list[tuple[str, events_pb2.CompletionFinished]]) -> None:
        """Write ``(event id, completion)`` records in one transaction; the relay publishes them after the commit."""
        async with db.writer(self.engine), self._sessions() as session, session.begin():
            await add_events(session, [envelope(c, producer=PRODUCER, event_id=event_id) for event_id, c in records])

    async def close(self) -> None:
        await self.monitor.stop()
        if self.relay is not None:
            await self.relay.stop()  # publishes what is waiting, for a few seconds; the rest stays in the file
        await self.engine.dispose()
