"""A minimal HTTP/1.1 load generator for streamed (SSE) POSTs on 127.0.0.1.

Raw asyncio streams rather than httpx: at 128 concurrent streams of 66 events each, httpx's per-chunk work made the
client the bottleneck of the measurement. Each client keeps one keep-alive connection and sends its requests one
after the other; the run is bounded by a request count and a deadline. TTFT is the time from sending the request to
the first body bytes holding a content token (``marker``).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

_END = b"\r\n0\r\n\r\n"  # the last chunk of a chunked body


@dataclass
class Result:
    ttft: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1

    def summary(self) -> dict:
        def pct(values: list[float], q: float) -> float | None:
            if not values:
                return None
            if len(values) == 1:
                return round(values[0] * 1000, 2)
            return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000, 2)

        return {
            "requests": self.ok,
            "errors": self.errors,
            "seconds": round(self.elapsed, 2),
            "requests_per_s": round(self.ok / self.elapsed, 1) if self.elapsed else 0.0,
            "ttft_p50_ms": pct(self.ttft, 50),
            "ttft_p99_ms": pct(self.ttft, 99),
            "latency_p50_ms": pct(self.latency, 50),
        }


class Connection:
    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port, limit=1 << 20)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
            self.writer = None

    async def post(self, path: str, body: bytes, headers: dict[str, str], marker: bytes) -> tuple[int, float, bytes]:
        """Status, seconds to the first ``marker`` (or to the end), and the body."""
        if self.writer is None:
            await self.open()
        assert self.reader is not None and self.writer is not None
        head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nContent-Length: {len(body)}\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers.items()
        )
        start = time.perf_counter()
        self.writer.write(head.encode() + b"\r\n" + body)
        status_line = await self.reader.readuntil(b"\r\n")
        status = int(status_line.split(b" ", 2)[1])
        raw = await self.reader.readuntil(b"\r\n\r\n")
        length = None
        chunked = False
        close = False
        for line in raw.split(b"\r\n"):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and b"close" in value.lower():
                close = True
        first = None
        if length is not None:
            data = await self.reader.readexactly(length)
        elif chunked:
            # Cheap: no per-chunk parsing, just watch for the marker and the terminating chunk.
            parts = []
            tail = b""
            while True:
                piece = await self.reader.read(65536)
                if not piece:
                    raise ConnectionError("connection closed mid-body")
                if first is None and marker in tail[-64:] + piece:
                    first = time.perf_counter() - start
                parts.append(piece)
                tail = (tail + piece)[-16:]
                if tail.endswith(_END):
                    break
            data = b"".join(parts)
        else:
            data = await self.reader.read()
            close = True
        if close:
            await self.close()
        return status, first if first is not None else time.perf_counter() - start, data


async def run(
    port: int,
    clients: int,
    requests: int,
    deadline_s: float,
    make: Callable[[int, int], tuple[str, bytes, dict[str, str]]],
    marker: bytes,
    check: Callable[[bytes], bool],
) -> Result:
    """``requests`` streamed POSTs spread over ``clients`` concurrent connections, stopped at ``deadline_s``.
    ``make(client, n)`` gives (path, body, headers) for the client's n-th request; ``check(body)`` says whether a 200
    answer is complete."""
    result = Result()
    counter = iter(range(requests))
    stop_at = time.perf_counter() + deadline_s

    async def client(c: int) -> None:
        conn = Connection(port)
        try:
            for n, _ in enumerate(counter):
                if time.perf_counter() > stop_at:
                    break
                path, body, headers = make(c, n)
                started = time.perf_counter()
                try:
                    status, ttft, data = await conn.post(path, body, headers, marker)
                except (OSError, asyncio.IncompleteReadError, ConnectionError) as e:
                    result.error(type(e).__name__)
                    await conn.close()
                    continue
                if status != 200:
                    result.error(str(status))
                elif not check(data):
                    result.error("incomplete")
                else:
                    result.ok += 1
                    result.ttft.append(ttft)
                    result.latency.append(time.perf_counter() - started)
        finally:
            await conn.close()

    begin = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(clients)))
    result.elapsed = time.perf_counter() - begin
    return result
