"""Outbox -> relay -> Kafka -> consumer: throughput (events/s) and latency (commit to applied: p50, p99).

    python benchmarks/events.py                     # SQLite file, an embedded broker (Tansu) on a free port
    python benchmarks/events.py --database-url postgresql+asyncpg://postgres@127.0.0.1:5432/test --events 20000

Events are written by ``--writers`` concurrent tasks, each committing ``--per-tx`` events per transaction (the way the
services write them: in the transaction of a state change); one relay publishes them; one consumer group applies
them idempotently (the processed_events table) into the same database. Latency is measured from the commit of an
event's transaction to the commit of its consumer transaction.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import MetaData

from chatplane.common import db
from chatplane.dev.broker import BrokerProcess
from chatplane.common.consumer import EventConsumer
from chatplane.common.events import TOPICS, envelope
from chatplane.common.outbox import add_event, outbox_table, processed_events_table
from chatplane.dev.procs import free_port
from chatplane.common.relay import OutboxRelay
from chatplane.protos.events.v1 import events_pb2


async def run(args: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="chatplane-events-bench-"))
    broker = BrokerProcess(free_port(), tmp / "broker.log")
    broker.start()
    try:
        broker.wait_ready(30)
        url = args.database_url or f"sqlite+aiosqlite:///{tmp / 'bench.db'}"
        engine = db.make_engine(url)
        metadata = MetaData()
        outbox_table(metadata)
        processed_events_table(metadata)
        async with engine.begin() as conn:
            await conn.run_sync(metadata.drop_all)
            await conn.run_sync(metadata.create_all)
        sessions = db.sessionmaker(engine)
        producer = uuid.uuid4().hex
        committed: dict[str, float] = {}
        applied: dict[str, float] = {}
        pending: list[str] = []

        async def handler(session, env) -> None:
            if env.producer == producer:
                pending.append(env.event_id)  # stamped after the consumer's commit, below

        relay = OutboxRelay(engine, broker.bootstrap_servers, name=producer, poll_interval=0.5)
        consumer = EventConsumer(broker.bootstrap_servers, f"bench-{producer[:8]}", TOPICS, sessions, handler,
                                 session_timeout_ms=6000)
        apply_batch = consumer.apply_batch

        async def timed_apply(values: list[bytes]) -> int:
            done = await apply_batch(values)  # the batch's transaction is committed when it returns
            now = time.perf_counter()
            for event_id in pending:
                applied[event_id] = now
            pending.clear()
            return done

        consumer.apply_batch = timed_apply  # type: ignore[method-assign]
        consumer_task = asyncio.create_task(consumer.run())
        # Warm-up: the first group join takes about half the session timeout; start measuring once it has consumed.
        relay.start()
        warm = envelope(events_pb2.MessageStored(conversation_id="warm", user_id="u"), producer=producer)
        async with sessions() as session, session.begin():
            await add_event(session, warm)
        while warm.event_id not in applied:
            await asyncio.sleep(0.05)
        applied.clear()

        keys = [uuid.uuid4().hex for _ in range(args.keys)]
        per_writer = args.events // args.writers

        interval = args.writers * args.per_tx / args.rate if args.rate else 0.0

        async def writer(w: int) -> None:
            next_at = time.perf_counter()
            for start in range(0, per_writer, args.per_tx):
                if interval:
                    next_at += interval
                    await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                envs = [
                    envelope(events_pb2.MessageStored(conversation_id=keys[(w + i) % len(keys)], user_id="u", seq=i),
                             producer=producer)
                    for i in range(start, min(start + args.per_tx, per_writer))
                ]
                async with sessions() as session, session.begin():
                    for env in envs:
                        await add_event(session, env)
                now = time.perf_counter()
                for env in envs:
                    committed[env.event_id] = now

        total = per_writer * args.writers
        started = time.perf_counter()
        await asyncio.gather(*(writer(w) for w in range(args.writers)))
        written = time.perf_counter()
        while len(applied) < total and time.perf_counter() - written < 300:
            await asyncio.sleep(0.01)
        finished = max(applied.values()) if applied else time.perf_counter()
        consumer.stop()
        await asyncio.gather(consumer_task, return_exceptions=True)
        await consumer.close()
        await relay.stop()
        await engine.dispose()
    finally:
        broker.stop()  # also when the run fails or is stopped (SIGTERM): never leave a broker behind

    latencies = sorted((applied[e] - committed[e]) * 1000 for e in applied if e in committed)
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return {
        "database": url.split(":", 1)[0],
        "events": total,
        "consumed": len(applied),
        "writers": args.writers,
        "events_per_transaction": args.per_tx,
        "offered_rate_events_per_s": args.rate or "as fast as possible",
        "write_seconds": round(written - started, 3),
        "throughput_events_per_s": round(len(applied) / (finished - started), 1),
        "latency_ms_p50": round(q[49], 1),
        "latency_ms_p99": round(q[98], 1),
        "latency_ms_max": round(latencies[-1], 1) if latencies else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--per-tx", type=int, default=1, help="events per committed transaction")
    parser.add_argument("--keys", type=int, default=50)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--rate", type=float, default=0, help="offered events/s (0: as fast as the writers go)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped from outside: clean up on the way out
    result = asyncio.run(run(args))
    print(json.dumps(result, indent=2))
    return 0 if result["consumed"] == result["events"] else 1


if __name__ == "__main__":
    sys.exit(main())
