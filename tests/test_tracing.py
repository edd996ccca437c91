"""One trace per request: a conversation message is followed, with OpenTelemetry's in-memory exporter, from the
gateway through auth, conversation and inference and on through Kafka to the usage consumer.

The services run in-process (real gRPC servers, the real gateway app, a real Kafka broker); inference runs the
synthetic engine, which streams made-up tokens through the same servicer and server as vLLM."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from chatplane.auth import metering
from chatplane.auth.server import AuthServer
from chatplane.auth.settings import AuthSettings
from chatplane.common import db, tracing
from chatplane.common.consumer import EventConsumer
from chatplane.conversation.server import running
from chatplane.conversation.settings import ConversationSettings
from chatplane.gateway.app import create_app
from chatplane.gateway.settings import GatewaySettings
from chatplane.inference.server import build
from chatplane.inference.settings import InferenceSettings
from chatplane.inference.synthetic import SyntheticEngine


@pytest.fixture
def spans():
    """Tracing on, into memory, for the servers and channels made during the test."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.uninstall()
        provider.shutdown()


async def test_one_trace_from_the_gateway_to_the_kafka_consumer(spans, kafka_broker, tmp_path):
    kafka = kafka_broker.bootstrap_servers
    engine = SyntheticEngine(InferenceSettings(engine="synthetic", data_dir=tmp_path, synthetic_reply_tokens=8))
    await engine.start()
    inference, servicer = build(engine)
    inference_port = await inference.start("127.0.0.1:0")
    await inference.grpc.set_serving(True)

    auth_settings = AuthSettings(port=0, data_dir=tmp_path, database_url=f"sqlite+aiosqlite:///{tmp_path}/auth.db",
                                 kafka_bootstrap_servers=kafka, consumer_session_timeout_ms=6000)
    auth = AuthServer(auth_settings)
    auth_port = await auth.runtime.start("127.0.0.1:0")
    await auth.runtime.prepare()
    # The usage consumer's handler in a group of its own: the run's shared broker may have the stack's consumers.
    group = f"trace-test-{uuid.uuid4().hex[:8]}"
    consumer = EventConsumer(kafka, group, metering.USAGE_TOPICS, db.sessionmaker(auth.engine), metering.apply_event,
                             session_timeout_ms=6000)
    consuming = asyncio.create_task(consumer.run())

    conversation_settings = ConversationSettings(
        port=0, data_dir=tmp_path, database_url=f"sqlite+aiosqlite:///{tmp_path}/conversation.db",
        inference_pools=f"127.0.0.1:{inference_port}", kafka_bootstrap_servers=kafka, generate_titles=False,
    )
    try:
        async with running(conversation_settings) as conversation:
            gateway = GatewaySettings(
                auth_target=f"127.0.0.1:{auth_port}", conversation_target=conversation.address,
                inference_pools=f"127.0.0.1:{inference_port}", kafka_bootstrap_servers=kafka,
            )
            app = create_app(gateway)
            async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://gateway.test", timeout=30
            ) as http:
                account = {"email": "trace@example.com", "password": "correct horse battery staple"}
                assert (await http.post("/v1/auth/signup", json=account)).status_code == 201
                token = (await http.post("/v1/auth/login", json=account)).json()["access_token"]
                jwt = {"Authorization": f"Bearer {token}"}
                key = (await http.post("/v1/api-keys", json={"name": "t"}, headers=jwt)).json()["key"]
                conversation_id = (await http.post("/v1/conversations", json={}, headers=jwt)).json()["id"]
                spans.clear()
                # The API key's first use: the gateway asks auth, inside this request's trace.
                reply = await http.post(f"/v1/conversations/{conversation_id}/messages",
                                        json={"content": "Hello there", "max_tokens": 8},
                                        headers={"Authorization": f"Bearer {key}"})
                assert reply.status_code == 201, reply.text

                (request_span,) = [s for s in spans.get_finished_spans()
                                   if s.kind == SpanKind.SERVER and "/messages" in s.name]
                trace_id = request_span.context.trace_id

                def in_trace(kind: SpanKind, name: str) -> list:
                    return [s for s in spans.get_finished_spans()
                            if s.context.trace_id == trace_id and s.kind == kind and name in s.name]

                deadline = time.monotonic() + 30
                while not in_trace(SpanKind.CONSUMER, "chatplane.usage.v1") and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
    finally:
        consumer.stop()
        await asyncio.wait_for(consuming, 10)
        await consumer.close()
        await auth.runtime.stop(1)
        await inference.stop(1)
        await engine.stop()

    assert in_trace(SpanKind.SERVER, "AuthService/Authenticate")
    (send,) = in_trace(SpanKind.SERVER, "ConversationService/SendMessage")
    (generate,) = in_trace(SpanKind.SERVER, "InferenceService/Generate")
    assert in_trace(SpanKind.CLIENT, "InferenceService/Generate"), "conversation's call to inference"
    (consumed,) = in_trace(SpanKind.CONSUMER, "chatplane.usage.v1")
    assert consumed.attributes["chatplane.event_type"] == "completion.finished"
    assert consumed.attributes["messaging.consumer.group.name"] == group
    # Model, token counts and time to first token ride on the spans.
    assert generate.attributes["gen_ai.response.model"] == engine.model_name
    assert generate.attributes["gen_ai.usage.output_tokens"] > 0
    assert generate.attributes["chatplane.time_to_first_message_s"] > 0
    assert request_span.attributes["gen_ai.usage.output_tokens"] == generate.attributes["gen_ai.usage.output_tokens"]
    assert request_span.attributes["gen_ai.response.model"] == engine.model_name
    assert send.parent is not None and generate.parent is not None
    # The conversation service's statements (OpenTelemetry's SQLAlchemy instrumentation), inside SendMessage.
    statements = [s for s in in_trace(SpanKind.CLIENT, "") if s.attributes.get("db.system") == "sqlite"]
    assert any(s.name.startswith("INSERT") for s in statements), [s.name for s in statements]
    by_id = {s.context.span_id: s for s in spans.get_finished_spans()}

    def ancestors(span) -> set[int]:
        found = set()
        while span.parent is not None and span.parent.span_id in by_id:
            span = by_id[span.parent.span_id]
            found.add(span.context.span_id)
        return found

    assert all(send.context.span_id in ancestors(s) for s in statements if s.name.startswith("INSERT"))


def test_a_job_runs_in_the_trace_of_the_request_that_sent_it(spans):
    """OpenTelemetry's Celery instrumentation: the job's context travels in the message headers, so its run (in a
    worker thread with no context of its own) is a child of the span that sent it."""
    from celery import Celery
    from celery.contrib.testing.worker import start_worker

    app = Celery("trace-test", broker="memory://", set_as_current=False)
    app.conf.update(task_ignore_result=True, worker_hijack_root_logger=False)
    ran = []

    @app.task(name="trace-test.job")
    def job() -> None:
        ran.append(trace.get_current_span().get_span_context().trace_id)

    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        with tracing.tracer().start_as_current_span("request") as request:
            job.delay()
        deadline = time.monotonic() + 20
        while not ran and time.monotonic() < deadline:
            time.sleep(0.05)
    trace_id = request.get_span_context().trace_id
    assert ran == [trace_id]
    finished = {s.name: s for s in spans.get_finished_spans()}
    run, sent = finished["run/trace-test.job"], finished["apply_async/trace-test.job"]
    assert (run.kind, sent.kind) == (SpanKind.CONSUMER, SpanKind.PRODUCER)
    assert run.context.trace_id == sent.context.trace_id == trace_id
    assert run.parent.span_id == sent.context.span_id
