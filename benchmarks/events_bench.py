"""The events path on its own: outbox (SQLite) -> relay -> Kafka (the embedded Tansu broker) -> consumer.

    python benchmarks/events_bench.py [--events 2000] [--json out.json]

Each event is written in its own committed transaction, as the services do. Two runs after a warm-up event:
throughput (``--events`` written back to back: events/s from the first commit to the last event applied by the
consumer) and latency (``--paced`` events at ``--rate`` a second: commit -> applied by the consumer, p50/p99).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

SESSION_TIMEOUT_MS = 6000


async def main(args: argparse.Namespace) -> dict:
    from sqlalchemy import MetaData

    from chatplane.common import db
    from chatplane.common.broker import BrokerProcess
    from chatplane.common.consumer import EventConsumer
    from chatplane.common.events import TOPICS, envelope
    from chatplane.common.outbox import add_event, outbox_table, processed_events_table
    from chatplane.common.procs import free_port
    from chatplane.common.relay import OutboxRelay
    from chatplane.protos.events.v1 import events_pb2

    metadata = MetaData()
    outbox_table(metadata)
    processed_events_table(metadata)
    producer = f"bench-{uuid.uuid4().hex[:8]}"
    committed: dict[str, float] = {}
    applied: dict[str, float] = {}

    async def handler(session, env) -> None:
        if env.producer == producer:
            applied[env.event_id] = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="chatplane-events-bench-") as tmp:
        broker = BrokerProcess(free_port(), Path(tmp) / "broker.log")
        broker.start()
        engine = db.make_engine(f"sqlite+aiosqlite:///{tmp}/events.db")
        try:
            broker.wait_ready(30)
            async with engine.begin() as conn:
                await conn.run_sync(metadata.create_all)
            sessions = db.sessionmaker(engine)
            relay = OutboxRelay(engine, broker.bootstrap_servers, name=producer, poll_interval=0.2)
            relay.start()
            consumer = EventConsumer(broker.bootstrap_servers, f"{producer}-group", TOPICS, sessions, handler,
                                     session_timeout_ms=SESSION_TIMEOUT_MS, poll_timeout_ms=100)
            task = asyncio.create_task(consumer.run())

            async def write(n: int, rate: float | None) -> list[str]:
                ids, start = [], time.perf_counter()
                for i in range(n):
                    if rate:
                        await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
                    env = envelope(events_pb2.MessageStored(conversation_id=uuid.uuid4().hex, user_id="u",
                                                            message_id=uuid.uuid4().hex, role="user",
                                                            status="complete", seq=i), producer=producer)
                    async with sessions() as session, session.begin():
                        await add_event(session, env)
                    committed[env.event_id] = time.perf_counter()
                    ids.append(env.event_id)
                return ids

            async def settle(ids: list[str], timeout: float) -> None:
                deadline = time.monotonic() + timeout
                while not all(i in applied for i in ids):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{sum(i in applied for i in ids)} of {len(ids)} events consumed")
                    await asyncio.sleep(0.01)

            try:
                await settle(await write(1, None), 60)  # the consumer group has joined
                ids = await write(args.events, None)
                await settle(ids, 120)
                span = max(applied[i] for i in ids) - min(committed[i] for i in ids)
                throughput = {"events": len(ids), "seconds": round(span, 2),
                              "events_per_s": round(len(ids) / span, 1)}
                ids = await write(args.paced, args.rate)
                await settle(ids, 60)
                lat = sorted(applied[i] - committed[i] for i in ids)
                q = statistics.quantiles(lat, n=100, method="inclusive")
                latency = {"events": len(ids), "rate_per_s": args.rate, "p50_ms": round(q[49] * 1000, 1),
                           "p99_ms": round(q[98] * 1000, 1)}
            finally:
                consumer.stop()
                await asyncio.gather(task, return_exceptions=True)
                await consumer.close()
                await relay.stop()
        finally:
            await engine.dispose()
            broker.stop()
    return {"path": "outbox (SQLite) -> relay -> Kafka (Tansu) -> consumer", "throughput": throughput,
            "latency": latency}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--paced", type=int, default=200)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--json")
    args = parser.parse_args()
    report = asyncio.run(main(args))
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    sys.exit(0)
