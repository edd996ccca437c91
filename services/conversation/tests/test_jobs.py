"""Celery jobs with a real worker process, the Redis broker of this machine and PostgreSQL: titles, exports,
retention, retries and idempotence."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
import redis
from conv_harness import status_of
from chatplane.dev.inference import inference_service
from tests_support import eventually
from sqlalchemy import select, text, update

from chatplane.dev import devcerts
from chatplane.common.db import migrate, utcnow
from chatplane.common.grpc_client import channel
from chatplane.dev.procs import Service, free_port
from chatplane.conversation.jobs.app import make_celery
from chatplane.conversation.jobs.context import JobContext
from chatplane.conversation.jobs.exporting import run_export
from chatplane.conversation.jobs.queue import JobQueue
from chatplane.conversation.jobs.retention import apply_retention
from chatplane.conversation.jobs.titles import TITLE_MAX_CHARS, clean_title, generate_title
from chatplane.conversation.models import Conversation
from chatplane.conversation.server import running
from chatplane.conversation.service import MIGRATIONS
from chatplane.conversation.settings import ConversationSettings
from chatplane.protos.conversation.v1 import conversation_pb2 as pb
from chatplane.protos.conversation.v1 import conversation_pb2_grpc

REDIS = os.environ.get("CHATPLANE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
DEFAULT = "New conversation"


# --- fixtures -----------------------------------------------------------------------------------------------------


@dataclass
class Jobs:
    """One PostgreSQL database, and a run-unique queue (and Redis key prefix) per worker."""

    database_url: str
    data_dir: Path
    queues: list[str]

    def settings(self, queue: str, **overrides) -> ConversationSettings:
        fields = dict(
            database_url=self.database_url,
            data_dir=self.data_dir,
            port=0,
            celery_broker_url=REDIS,
            celery_queue=queue,
            default_max_tokens=16,
            inference_timeout_seconds=60,
        )
        return ConversationSettings(**{**fields, **overrides})

    def new_queue(self) -> str:
        queue = f"test-jobs-{uuid.uuid4().hex[:12]}"
        self.queues.append(queue)
        return queue


@pytest.fixture(scope="module")
def jobs(pg_database_factory, tmp_path_factory) -> Iterator[Jobs]:
    with pg_database_factory() as url:
        asyncio.run(migrate(MIGRATIONS, url))
        env = Jobs(url, tmp_path_factory.mktemp("jobs"), [])
        yield env
    client = redis.Redis.from_url(REDIS)
    for queue in env.queues:  # leave nothing of this run in Redis
        keys = list(client.scan_iter(f"{queue}:*"))
        if keys:
            client.delete(*keys)
    client.close()


def start_worker(settings: ConversationSettings, log: Path) -> Service:
    """``python -m chatplane.conversation worker`` as a child process, ready once it answers a broadcast ping."""
    env = {
        "CHATPLANE_DATA_DIR": str(settings.data_dir),
        "CHATPLANE_CONVERSATION_DATABASE_URL": settings.database_url,
        "CHATPLANE_INFERENCE_POOLS": settings.inference_pools,
        "CHATPLANE_CONVERSATION_CELERY_BROKER_URL": settings.celery_broker_url,
        "CHATPLANE_CONVERSATION_CELERY_QUEUE": settings.celery_queue,
        "CHATPLANE_CONVERSATION_WORKER_CONCURRENCY": "2",
        "CHATPLANE_CONVERSATION_RETENTION_DAYS": str(settings.retention_days),
        "CHATPLANE_CONVERSATION_RETENTION_INTERVAL_SECONDS": str(settings.retention_interval_seconds),
        "CHATPLANE_CONVERSATION_INFERENCE_TIMEOUT_SECONDS": str(settings.inference_timeout_seconds),
        "CHATPLANE_CONVERSATION_TITLE_MAX_TOKENS": str(settings.title_max_tokens),
    }
    app = make_celery(settings)
    svc = Service("worker", "chatplane.conversation", env, lambda: bool(app.control.ping(timeout=0.5)), log,
                  args=("worker",))
    svc.start()
    try:
        svc.wait_ready(60)
    except BaseException:
        svc.stop()
        raise
    return svc


@asynccontextmanager
async def conversation_service(
    settings: ConversationSettings,
) -> AsyncIterator[conversation_pb2_grpc.ConversationServiceStub]:
    # Mutual TLS when the test set the CHATPLANE_TLS_* variables (the real engine's test), plaintext otherwise.
    async with running(settings) as server, channel(server.address) as chan:
        yield conversation_pb2_grpc.ConversationServiceStub(chan)




async def exchange(stub, user: str, content: str, title: str = "") -> pb.Conversation:
    """A conversation of ``user`` with one exchange (user message and reply)."""
    conv = await stub.CreateConversation(pb.CreateConversationRequest(user_id=user, title=title))
    async for _ in stub.SendMessage(pb.SendMessageRequest(user_id=user, conversation_id=conv.id, content=content)):
        pass
    return conv


async def title_of(stub, user: str, conversation_id: str) -> str:
    page = await stub.ListConversations(pb.ListConversationsRequest(user_id=user, include_archived=True))
    return next(c.title for c in page.conversations if c.id == conversation_id)


# --- the title job ------------------------------------------------------------------------------------------------


def test_clean_title():
    assert clean_title('"The Capital of France."\nMore text') == "The Capital of France"
    assert clean_title("Title: **Paris facts**") == "Paris facts"
    assert clean_title("\n\n  # “Quick question”  \n") == "Quick question"
    assert clean_title("Tab\tand\x07bell") == "Tab and bell"
    long = clean_title("word " * 40)
    assert len(long) <= TITLE_MAX_CHARS and long.endswith("word") and "\n" not in long
    assert clean_title('""') == ""


@pytest.mark.engine
async def test_title_from_the_real_model_after_the_first_exchange(jobs: Jobs, inference_server, tmp_path,
                                                                  dev_certs, monkeypatch):
    # The real engine speaks mutual TLS only: this process (the service and its caller) and the worker it starts
    # present the gateway's certificate, an identity the conversation service and inference both accept.
    for name, value in devcerts.env(dev_certs, "gateway").items():
        monkeypatch.setenv(name, value)
    settings = jobs.settings(jobs.new_queue(), inference_pools=inference_server)
    worker = start_worker(settings, tmp_path / "worker.log")
    try:
        async with conversation_service(settings) as stub:
            conv = await exchange(stub, "tess", "What is the capital of France?")
            titled = await eventually(
                lambda: _changed(stub, "tess", conv.id), timeout=120, interval=0.25
            )
    finally:
        worker.stop()
    assert titled != DEFAULT
    assert 1 <= len(titled) <= TITLE_MAX_CHARS
    assert "\n" not in titled and '"' not in titled


async def _changed(stub, user: str, conversation_id: str) -> str | None:
    title = await title_of(stub, user, conversation_id)
    return title if title != DEFAULT else None


async def test_title_job_retries_until_inference_is_back(jobs: Jobs, tmp_path):
    """Inference is down when the job first runs: it is retried with backoff and the title appears once it is up."""
    port = free_port()  # nothing listens here yet
    settings = jobs.settings(jobs.new_queue(), inference_pools=f"127.0.0.1:{port}", title_max_tokens=7)
    worker = start_worker(settings, tmp_path / "worker.log")
    try:
        async with inference_service() as served:
            # The service itself talks to a working inference; only the worker's is down.
            async with conversation_service(settings.model_copy(update={"inference_pools": served.target})) as stub:
                conv = await exchange(stub, "rita", "Tell me about the Eiffel tower")
                await asyncio.sleep(1.5)  # the job has run and failed at least once by now
                assert await title_of(stub, "rita", conv.id) == DEFAULT
                script = ['"The', " Eiffel", " Tower.", '"', "\nextra", " words", " here", " ignored"]
                async with inference_service(port, synthetic_script=script) as model:
                    titled = await eventually(lambda: _changed(stub, "rita", conv.id), timeout=40, interval=0.2)
                sampling = model.generations[0].sampling
    finally:
        worker.stop()
    assert titled == "The Eiffel Tower"
    assert sampling.max_tokens == 7  # title_max_tokens bounds the reply


async def test_title_job_twice_changes_nothing_and_a_rename_wins(jobs: Jobs, tmp_path):
    async with inference_service() as served:
        settings = jobs.settings(jobs.new_queue(), inference_pools=served.target, generate_titles=False)
        async with conversation_service(settings) as stub:
            first = await exchange(stub, "ida", "How do magnets work?")
            renamed = await exchange(stub, "ida", "What is a prime number?")
            await stub.UpdateConversation(
                pb.UpdateConversationRequest(user_id="ida", conversation_id=renamed.id, title="My primes")
            )
            served.reply("Magnets", " explained")
            ctx = JobContext.open(settings)
            try:
                assert await generate_title(ctx, first.id) == "Magnets explained"
                calls = len(served.generations)
                assert await generate_title(ctx, first.id) is None  # already titled: the model is not asked again
                assert len(served.generations) == calls
                assert await generate_title(ctx, renamed.id) is None
            finally:
                await ctx.close()
            assert await title_of(stub, "ida", first.id) == "Magnets explained"
            assert await title_of(stub, "ida", renamed.id) == "My primes"


# --- exports ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def export_worker(jobs: Jobs, tmp_path_factory) -> Iterator[ConversationSettings]:
    """A worker for export and retention tests (no model needed; retention runs every second, 30 days)."""
    settings = jobs.settings(jobs.new_queue(), retention_days=30, retention_interval_seconds=1.0, generate_titles=False)
    worker = start_worker(settings, tmp_path_factory.mktemp("export-worker") / "worker.log")
    yield settings
    worker.stop()


async def finished_export(stub, user: str, conversation_id: str, export_id: str) -> pb.Export:
    async def done():
        request = pb.GetExportRequest(user_id=user, conversation_id=conversation_id, export_id=export_id)
        e = await stub.GetExport(request)
        return e if e.status != pb.EXPORT_STATUS_PENDING else None

    return await eventually(done)


async def test_export_markdown_and_json(export_worker: ConversationSettings):
    async with inference_service() as served:
        settings = export_worker.model_copy(update={"inference_pools": served.target})
        async with conversation_service(settings) as stub:
            tricky = "Quote: \"x\" | `code` ; DROP TABLE messages;\n# not a heading"
            conv = await exchange(stub, "eve", tricky, title="Notes")
            full = await stub.GetConversation(pb.GetConversationRequest(user_id="eve", conversation_id=conv.id))

            md = await stub.CreateExport(
                pb.CreateExportRequest(user_id="eve", conversation_id=conv.id, format=pb.EXPORT_FORMAT_MARKDOWN)
            )
            js = await stub.CreateExport(
                pb.CreateExportRequest(user_id="eve", conversation_id=conv.id, format=pb.EXPORT_FORMAT_JSON)
            )
            assert md.status == js.status == pb.EXPORT_STATUS_PENDING
            md = await finished_export(stub, "eve", conv.id, md.id)
            js = await finished_export(stub, "eve", conv.id, js.id)

    assert md.status == js.status == pb.EXPORT_STATUS_COMPLETED
    assert md.completed_at.ToDatetime() >= md.created_at.ToDatetime()
    user, assistant = full.messages
    assert md.content.startswith("# Notes\n")
    assert f"## User\n\n_{_stamp(user)}_\n\n{user.content}\n" in md.content
    assert md.content.index("## User") < md.content.index("## Assistant")
    assert assistant.content in md.content

    doc = json.loads(js.content)
    assert (doc["id"], doc["title"], doc["archived"]) == (conv.id, "Notes", False)
    assert [(m["id"], m["role"], m["content"]) for m in doc["messages"]] == [
        (m.id, m.role, m.content) for m in full.messages
    ]
    assert doc["messages"][1]["usage"] == {
        "prompt_tokens": assistant.prompt_tokens,
        "completion_tokens": assistant.completion_tokens,
    }


def _stamp(message: pb.Message) -> str:
    return message.created_at.ToDatetime().isoformat() + "Z"


async def test_export_is_not_found_for_another_user(export_worker: ConversationSettings):
    async with conversation_service(export_worker) as stub:
        conv = await stub.CreateConversation(pb.CreateConversationRequest(user_id="owner"))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CreateExport(
                pb.CreateExportRequest(user_id="mallory", conversation_id=conv.id, format=pb.EXPORT_FORMAT_JSON)
            )
        assert status_of(err.value)[0] == grpc.StatusCode.NOT_FOUND
        mine = await stub.CreateExport(
            pb.CreateExportRequest(user_id="owner", conversation_id=conv.id, format=pb.EXPORT_FORMAT_JSON)
        )
        for user, conversation_id, export_id in [
            ("mallory", conv.id, mine.id),  # another user
            ("owner", uuid.uuid4().hex, mine.id),  # another conversation
            ("owner", conv.id, uuid.uuid4().hex),  # no such export
            ("owner", conv.id, "not-an-id"),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetExport(
                    pb.GetExportRequest(user_id=user, conversation_id=conversation_id, export_id=export_id)
                )
            assert status_of(err.value)[0] == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CreateExport(pb.CreateExportRequest(user_id="owner", conversation_id=conv.id))
        assert status_of(err.value)[:3:2] == (grpc.StatusCode.INVALID_ARGUMENT, "format")
        done = await finished_export(stub, "owner", conv.id, mine.id)
        assert done.status == pb.EXPORT_STATUS_COMPLETED


async def test_export_job_delivered_twice_changes_nothing(export_worker: ConversationSettings):
    async with conversation_service(export_worker) as stub:
        conv = await stub.CreateConversation(pb.CreateConversationRequest(user_id="dora", title="Twice"))
        created = await stub.CreateExport(
            pb.CreateExportRequest(user_id="dora", conversation_id=conv.id, format=pb.EXPORT_FORMAT_MARKDOWN)
        )
        first = await finished_export(stub, "dora", conv.id, created.id)
        # The conversation changes after the export: a redelivered job must not redo the finished export.
        await stub.UpdateConversation(
            pb.UpdateConversationRequest(user_id="dora", conversation_id=conv.id, title="Later")
        )
        queue = JobQueue(export_worker)
        try:
            await queue.export(created.id)
            await queue.export(created.id)
        finally:
            await queue.close()
        ctx = JobContext.open(export_worker)
        try:
            assert await run_export(ctx, created.id) == "completed"  # and once more in-process
        finally:
            await ctx.close()
        await asyncio.sleep(1.5)  # the worker has taken both deliveries by now
        again = await stub.GetExport(pb.GetExportRequest(user_id="dora", conversation_id=conv.id, export_id=created.id))
    assert again == first
    assert "# Twice" in again.content


# --- retention ----------------------------------------------------------------------------------------------------


async def _age(settings: ConversationSettings, conversation_id: str, days: float) -> None:
    ctx = JobContext.open(settings)
    try:
        async with ctx.store.transaction() as session:
            await session.execute(
                update(Conversation)
                .where(Conversation.id == conversation_id)
                .values(updated_at=utcnow() - timedelta(days=days))
            )
    finally:
        await ctx.close()


async def _outbox_deletions(settings: ConversationSettings, conversation_ids: set[str]) -> list[str]:
    """The conversation ids of conversation.deleted events in the outbox."""
    from chatplane.common.events import decode

    ctx = JobContext.open(settings)
    try:
        async with ctx.store.engine.connect() as conn:
            rows = (await conn.execute(text("SELECT payload FROM outbox WHERE event_type = 'conversation.deleted'")))
            ids = [decode(bytes(p)).conversation_deleted.conversation_id for (p,) in rows]
    finally:
        await ctx.close()
    return [i for i in ids if i in conversation_ids]


async def test_retention_deletes_only_old_archived_conversations(export_worker: ConversationSettings):
    settings = export_worker
    async with conversation_service(settings) as stub:
        async def make(title: str, archived: bool, days: float) -> str:
            c = await stub.CreateConversation(pb.CreateConversationRequest(user_id="ret", title=title))
            if archived:
                await stub.UpdateConversation(
                    pb.UpdateConversationRequest(user_id="ret", conversation_id=c.id, archived=True)
                )
            await _age(settings, c.id, days)
            return c.id

        old_archived = [await make("old archived 1", True, 31), await make("old archived 2", True, 400)]
        old_active = await make("old active", False, 400)
        recent_archived = await make("recent archived", True, 29)

        async def gone() -> bool:
            page = await stub.ListConversations(pb.ListConversationsRequest(user_id="ret", include_archived=True))
            return not {c.id for c in page.conversations} & set(old_archived)

        await eventually(gone, timeout=20)  # the scheduled job (every second) did it
        page = await stub.ListConversations(pb.ListConversationsRequest(user_id="ret", include_archived=True))
        assert {c.id for c in page.conversations} == {old_active, recent_archived}

    ctx = JobContext.open(settings)
    try:
        assert await apply_retention(ctx) == 0  # running it again changes nothing
    finally:
        await ctx.close()
    assert sorted(await _outbox_deletions(settings, set(old_archived))) == sorted(old_archived)


async def test_retention_off_deletes_nothing(jobs: Jobs):
    settings = jobs.settings(jobs.new_queue(), retention_days=0)
    async with conversation_service(settings) as stub:
        c = await stub.CreateConversation(pb.CreateConversationRequest(user_id="keep"))
        await stub.UpdateConversation(pb.UpdateConversationRequest(user_id="keep", conversation_id=c.id, archived=True))
    await _age(settings, c.id, 10_000)
    ctx = JobContext.open(settings)
    try:
        assert await apply_retention(ctx) == 0
        async with ctx.store.engine.connect() as conn:
            assert await conn.scalar(select(Conversation.id).where(Conversation.id == c.id)) == c.id
    finally:
        await ctx.close()


async def test_a_broken_queue_never_fails_the_reply(jobs: Jobs):
    """The title job cannot be queued (broker down): the reply is still stored and answered."""
    async with inference_service() as served:
        settings = jobs.settings(
            jobs.new_queue(), inference_pools=served.target, celery_broker_url=f"redis://127.0.0.1:{free_port()}/0"
        )
        async with conversation_service(settings) as stub:
            conv = await exchange(stub, "noq", "Hello there")
            stored = await stub.GetConversation(pb.GetConversationRequest(user_id="noq", conversation_id=conv.id))
            assert [m.role for m in stored.messages] == ["user", "assistant"]
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.CreateExport(
                    pb.CreateExportRequest(user_id="noq", conversation_id=conv.id, format=pb.EXPORT_FORMAT_JSON)
                )
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
