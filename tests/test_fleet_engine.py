"""A reply continued on another replica with the real engine (vLLM, the model's own chat template).

The run's one real engine is reached two ways: directly, and through a TCP relay that the test can cut like a
replica that dies. The client sees two replicas; the reply starts behind the relay, the relay is cut after its
first tokens, and the reply goes on through the direct address from the prompt plus what was said, as an assistant
message to continue. The relay carries the mutual TLS untouched (the client verifies the engine as "inference")."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from chatplane.common.inference import InferenceClient
from chatplane.common.inference.routing import ranking
from chatplane.protos.inference.v1 import inference_pb2 as pb

pytestmark = pytest.mark.engine


class Relay:
    """A TCP relay to ``target`` on 127.0.0.1; :meth:`cut` drops every connection and refuses new ones."""

    def __init__(self, target: str) -> None:
        self.host, port = target.rsplit(":", 1)
        self.port = int(port)
        self.server: asyncio.base_events.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.transport.abort()  # a reset, as when the replica's process is killed


def question() -> pb.GenerateRequest:
    # With this system message SmolLM2's greedy answer is "The capital of France is Paris." on every CPU tried (the
    # model's own default system prompt flips to French under bfloat16 on some).
    return pb.GenerateRequest(
        chat=pb.ChatMessages(messages=[pb.ChatMessage(role="system", content="You are a helpful assistant."),
                                       pb.ChatMessage(role="user", content="What is the capital of France?")]),
        sampling=pb.SamplingParams(temperature=0.0, max_tokens=32), request_id="continue-me",
    )


async def test_a_reply_cut_off_on_the_real_engine_is_continued_on_another_replica(inference_server, dev_certs,
                                                                                    monkeypatch):
    from chatplane.dev import devcerts

    for name, value in devcerts.env(dev_certs, "gateway").items():  # the engine takes callers it can identify
        monkeypatch.setenv(name, value)
    relay = Relay(inference_server)
    relayed = await relay.start()
    client = InferenceClient(f"{relayed},{inference_server}", timeout=30, stream_timeout=120)
    client.start()
    try:
        assert await client.ready(30)
        whole = [r async for r in client.generate(question())]
        reference = "".join(r.text for r in whole)
        assert "Paris" in reference  # the greedy answer, uninterrupted

        key = next(k for k in (f"session:{i}" for i in range(200))
                   if ranking(k, list(client.pools[0].replicas.values()))[0].address == relayed)
        gen = client.generate(question(), key=key)
        first = await gen.read()
        assert gen.replica.address == relayed and first.text
        await relay.cut()
        rest = [r async for r in gen]
        text = first.text + "".join(r.text for r in rest)
        last = rest[-1]
        assert gen.replica.address == inference_server and gen.failovers == 1
        assert last.finish_reason == whole[-1].finish_reason
        assert text.startswith(first.text) and "Paris" in text
        assert text == reference  # greedy decoding goes on exactly where it was cut
        assert last.usage.prompt_tokens == whole[-1].usage.prompt_tokens  # the prompt counted once
        assert last.usage.completion_tokens == whole[-1].usage.completion_tokens
    finally:
        await client.close()
