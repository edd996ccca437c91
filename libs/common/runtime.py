"""One life for every gRPC service: listen, prepare, serve, drain, close.

:class:`ServiceRuntime` owns a service's :class:`~chatplane.common.grpc_server.GrpcService` (health NOT_SERVING from
the moment the port opens) and runs what the service registers with it, in this order:

1. ``prepare`` hooks (migrate the database, start an engine): each retried by the one retry policy
   (:mod:`chatplane.common.retry`: 0.5 s doubling up to ``prepare_retry_max_seconds``) unless registered with
   ``retry=False``; the health status stays NOT_SERVING until all of them are done;
2. ``background`` work (the outbox relay, the monitors: objects with ``start()`` and ``async stop()``), started once
   prepared;
3. SERVING, until SIGTERM or SIGINT;
4. the drain: NOT_SERVING at once, ``drain`` hooks (refuse new work that others can take), the calls under way
   finish within the grace period;
5. ``stopped`` hooks (work the last calls left behind), the background work stopped, then ``close`` hooks in the
   reverse order of registration.

Readiness lives in one place, :attr:`GrpcService.state` (``starting``, ``serving``, ``draining``), which the health
service reports and a servicer may read.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any, Protocol

from chatplane.common import retry
from chatplane.common.grpc_server import GrpcService
from chatplane.common.settings import GrpcServiceSettings

log = logging.getLogger(__name__)

Hook = Callable[[], Awaitable[Any]]


class Background(Protocol):
    def start(self) -> None: ...

    async def stop(self) -> None: ...


class ServiceRuntime:
    def __init__(
        self,
        name: str,
        service_names: list[str],
        settings: GrpcServiceSettings,
        *,
        access: dict[str, set[str]] | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.grpc = GrpcService(service_names, settings=settings, access=access)
        self._prepare: list[tuple[Hook, bool]] = []
        self._background: list[Background] = []
        self._drain: list[Callable[[], None]] = []
        self._stopped: list[Hook] = []
        self._close: list[Hook] = []
        self._started: list[Background] = []
        self._stopping = False

    @property
    def server(self) -> Any:
        """The grpc.aio server, to add servicers to."""
        return self.grpc.server

    # -- what the service registers --------------------------------------------------------------------------------

    def on_prepare(self, hook: Hook, *, retry: bool = True) -> None:
        self._prepare.append((hook, retry))

    def background(self, work: Background | None) -> None:
        if work is not None:
            self._background.append(work)

    def on_drain(self, hook: Callable[[], None]) -> None:
        self._drain.append(hook)

    def on_stopped(self, hook: Hook) -> None:
        """``hook`` runs once the server stopped, before the background work stops (work the last calls left)."""
        self._stopped.append(hook)

    def on_close(self, hook: Hook) -> None:
        self._close.append(hook)

    def outbox(self, engine: Any, bootstrap_servers: str, *, linger: float = 0.0) -> Any:
        """The service's outbox: its backlog monitor always, and its relay to Kafka when a broker is set (else the
        events wait in the outbox; ``linger``: see the relay). Returns the relay (or None)."""
        from chatplane.common.metrics import OutboxMonitor
        from chatplane.common.relay import OutboxRelay

        relay = (
            OutboxRelay(engine, bootstrap_servers, name=self.name, linger=linger) if bootstrap_servers else None
        )
        self.background(relay)
        self.background(OutboxMonitor(engine))
        return relay

    # -- the life --------------------------------------------------------------------------------------------------

    async def start(self, address: str | None = None) -> int:
        """Listen (NOT_SERVING); the port."""
        address = address or self.settings.listen_address()
        port = await self.grpc.start(address)
        log.info("listening", extra={"address": address, "port": port})
        return port

    async def prepare(self) -> None:
        """Run the prepare hooks (retried by the policy), start the background work, report SERVING."""
        for hook, retried in self._prepare:
            if retried:
                await retry.until_success(hook, maximum=self.settings.prepare_retry_max_seconds,
                                          on_failure=self._not_ready)
            else:
                await hook()
        for work in self._background:
            work.start()
            self._started.append(work)
        await self.grpc.set_serving(True)
        log.info("serving")

    def _not_ready(self, exc: BaseException, delay: float) -> None:
        log.warning("not ready yet, retrying", extra={"service": self.name, "retry_in_s": round(delay, 2),
                                                      "error": f"{type(exc).__name__}: {exc}"[:500]})

    async def stop(self, grace: float | None = None) -> None:
        """Drain (at most ``grace`` seconds), stop the background work, close."""
        if self._stopping:
            return
        self._stopping = True
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        for hook in self._drain:
            hook()
        await self.grpc.stop(grace)
        # Every hook runs even when one before it fails: a failing one must not leave a store or engine open.
        for stopped in self._stopped:
            await self._quietly(stopped)
        while self._started:
            await self._quietly(self._started.pop().stop)
        for close in reversed(self._close):
            await self._quietly(close)
        log.info("stopped")

    async def _quietly(self, hook: Hook) -> None:
        try:
            await hook()
        except Exception:
            log.exception("stopping: a hook failed",
                          extra={"service": self.name, "hook": getattr(hook, "__qualname__", repr(hook))})

    async def serve(self) -> None:
        """The process's life: listen, prepare (a signal meanwhile stops it), serve until SIGTERM/SIGINT, stop."""
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        await self.start()
        preparing = asyncio.create_task(self.prepare())
        waiter = asyncio.create_task(stopping.wait())
        try:
            await asyncio.wait({preparing, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if preparing.done():
                preparing.result()  # a hook that is not retried failed: the process ends with its error
                await stopping.wait()
            log.info("draining", extra={"grace_seconds": self.settings.shutdown_grace_seconds})
        finally:
            for task in (preparing, waiter):
                if not task.done():
                    task.cancel()
                    with suppress(asyncio.CancelledError):
                        await task
            await self.stop()

    @asynccontextmanager
    async def running(self, address: str | None = None, grace: float = 1.0) -> AsyncIterator[int]:
        """In-process (tests, benchmarks): listen, prepare, yield the port; stop at the end."""
        try:
            port = await self.start(address)
            await self.prepare()
            yield port
        finally:
            await self.stop(grace)
