"""The replicas of a pool as a client sees them.

:class:`Replica`: one replica's channel, health and load, kept current by two watch streams (``grpc.health.v1``
Watch and ``WatchEngineStats``) while it is part of a pool. :class:`Pool`: the replicas of one model, kept current
by discovery, and the policy that picks among them (:mod:`.pools` parses the setting that describes the pools)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chatplane.common.errors import ServiceError
from chatplane.common.grpc_client import channel
from chatplane.common.inference import metrics
from chatplane.common.inference.discovery import Discoverer
from chatplane.common.inference.pools import PoolSpec
from chatplane.common.inference.routing import Picker
from chatplane.protos.inference.v1 import inference_pb2, inference_pb2_grpc

log = logging.getLogger(__name__)

HEALTH_SERVICE = ""  # the server's overall status (what the kubelet probes), NOT_SERVING while it drains
STATS_INTERVAL_MS = 250
RETRY_FIRST_SECONDS = 0.2  # reconnecting a watch: first wait, doubled up to RETRY_MAX_SECONDS
RETRY_MAX_SECONDS = 5.0
FAILED_SKIP_SECONDS = 1.0  # a replica whose call just failed is passed over this long (its health may lag)
MODELS_TIMEOUT_SECONDS = 5.0
SETTLE_SECONDS = 1.0  # right after a pool starts, a model's details wait this long at most for the replicas
WAIT_FOR_REPLICA_SECONDS = 10.0  # a request waits this long at most for a serving replica (start-up, restarts)


def unavailable(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.UNAVAILABLE, message)


class Replica:
    """Health, load and models of one replica; ``on_change`` is called when it becomes routable or stops being so."""

    def __init__(
        self, pool: str, address: str, on_change: Callable[[], None], on_closed: Callable[[], None] = lambda: None
    ) -> None:
        self.pool = pool
        self.address = address
        # Replicas are reached by address (discovered pod IPs): their certificates name the service, "inference".
        self.channel = channel(address, server_name="inference")
        self.stub = inference_pb2_grpc.InferenceServiceStub(self.channel)
        self.serving = False
        self.in_flight = 0
        self.engine_running = 0
        self.engine_waiting = 0
        self.kv_cache_usage = 0.0
        self.models: list[inference_pb2.Model] = []
        self.failed_until = 0.0
        self.leaving = False  # gone from discovery: no new calls; closed once the last one ends
        self.known = asyncio.Event()  # set once the health watch first answered (or failed)
        self._on_change = on_change
        self._on_closed = on_closed
        self._tasks: list[asyncio.Task] = []
        self._in_flight_gauge = metrics.IN_FLIGHT.labels(pool, address)

    # --- what routing reads -------------------------------------------------------------------------------------

    @property
    def load(self) -> int:
        return max(self.in_flight, self.engine_running + self.engine_waiting)

    def routable(self, now: float) -> bool:
        return self.serving and not self.leaving and now >= self.failed_until

    def call_started(self) -> None:
        self.in_flight += 1
        self._in_flight_gauge.inc()

    def call_ended(self, outcome: str) -> None:
        self.in_flight -= 1
        self._in_flight_gauge.dec()
        metrics.REQUESTS.labels(self.pool, self.address, outcome).inc()
        if self.leaving and self.in_flight == 0:
            asyncio.get_running_loop().create_task(self.close())

    def failed(self) -> None:
        """A call found the replica unreachable: pass it over until its health watch says otherwise."""
        self.failed_until = time.monotonic() + FAILED_SKIP_SECONDS
        self._on_change()

    # --- life -----------------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._watch_health(), name=f"inference-health-{self.address}"),
            asyncio.create_task(self._watch_stats(), name=f"inference-stats-{self.address}"),
        ]

    def leave(self) -> None:
        """Taken out of the pool: no new calls; closed now if idle, else when its last call ends."""
        self.leaving = True
        self._set_serving(False)
        if self.in_flight == 0:
            asyncio.get_running_loop().create_task(self.close())

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.channel.close()
        self._on_closed()

    def _set_serving(self, serving: bool) -> None:
        self.known.set()
        if serving != self.serving:
            self.serving = serving
            log.info("inference replica %s", "serving" if serving else "not serving",
                     extra={"pool": self.pool, "replica": self.address})
            self._on_change()

    async def _watch_health(self) -> None:
        health = health_pb2_grpc.HealthStub(self.channel)
        delay = RETRY_FIRST_SECONDS
        while True:
            try:
                async for reply in health.Watch(health_pb2.HealthCheckRequest(service=HEALTH_SERVICE)):
                    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
                    if serving and not self.serving:  # (re)started: its model may have changed
                        self.models = await self._list_models()
                    self._set_serving(serving)
                    delay = RETRY_FIRST_SECONDS
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.UNIMPLEMENTED:
                    # No health service: as gRPC's own health checking does, count it serving (failed calls still
                    # move requests elsewhere).
                    log.warning("inference replica has no health service; assumed serving",
                                extra={"pool": self.pool, "replica": self.address})
                    try:
                        self.models = await self._list_models()
                    except grpc.aio.AioRpcError:
                        pass  # not answering yet: tried again below
                    else:
                        self._set_serving(True)
                        return
            self._set_serving(False)  # the watch ended: the replica is gone, restarting or unreachable
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)

    async def _list_models(self) -> list[inference_pb2.Model]:
        reply = await self.stub.ListModels(inference_pb2.ListModelsRequest(), timeout=MODELS_TIMEOUT_SECONDS)
        return list(reply.models)

    async def _watch_stats(self) -> None:
        delay = RETRY_FIRST_SECONDS
        request = inference_pb2.WatchEngineStatsRequest(interval_ms=STATS_INTERVAL_MS)
        while True:
            try:
                async for stats in self.stub.WatchEngineStats(request):
                    self.engine_running = stats.running
                    self.engine_waiting = stats.waiting
                    self.kv_cache_usage = stats.kv_cache_usage
                    delay = RETRY_FIRST_SECONDS
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.UNIMPLEMENTED:
                    log.warning("inference replica reports no load (an older version?)",
                                extra={"pool": self.pool, "replica": self.address})
                    return
            self.engine_running = self.engine_waiting = 0  # unknown: the client's own in-flight count stands
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)


class Pool:
    """The replicas of one model, kept current by discovery, and the policy that picks among them."""

    def __init__(self, spec: PoolSpec, discovery_interval: float) -> None:
        self.spec = spec
        self.replicas: dict[str, Replica] = {}
        self.picker = Picker(spec.policy, spec.bound)
        self._changed = asyncio.Event()
        self._discoverer = Discoverer(spec.target, self._update, discovery_interval)
        self._settle_by = 0.0  # see settled()
        metrics.start_pool(spec.name, spec.policy.value)

    def models(self) -> list[inference_pb2.Model]:
        """The pool's models: the configured one, else what its replicas report (none until one answered)."""
        found: dict[str, inference_pb2.Model] = {}
        for replica in self.replicas.values():
            for model in replica.models:
                found.setdefault(model.id, model)
        if self.spec.model:
            return [found.get(self.spec.model) or inference_pb2.Model(id=self.spec.model, owned_by="chatplane")]
        return list(found.values())

    def settled(self) -> bool:
        """A replica has listed its models, or every replica's health is known (none serves), or the pool started
        more than :data:`SETTLE_SECONDS` ago: :meth:`models` holds what the replicas say, not the configuration's
        placeholder (no context window, no creation time), whenever a replica could tell in time."""
        replicas = self.replicas.values()
        return (time.monotonic() >= self._settle_by or any(r.models for r in replicas)
                or all(r.known.is_set() for r in replicas))

    @property
    def model(self) -> str:
        """The pool's (first) model, "" while unknown."""
        models = self.models()
        return models[0].id if models else ""

    def start(self) -> None:
        self._settle_by = time.monotonic() + SETTLE_SECONDS
        self._discoverer.start()

    async def close(self) -> None:
        await self._discoverer.stop()
        replicas, self.replicas = list(self.replicas.values()), {}
        await asyncio.gather(*(r.close() for r in replicas))
        self._count()

    def _update(self, addresses: set[str]) -> None:
        for address in addresses - self.replicas.keys():
            replica = Replica(self.spec.name, address, self._notify, lambda a=address: self._forget(a))
            self.replicas[address] = replica
            replica.start()
            log.info("inference replica joined", extra={"pool": self.spec.name, "replica": address})
        for address in self.replicas.keys() - addresses:
            self.replicas.pop(address).leave()
            log.info("inference replica left", extra={"pool": self.spec.name, "replica": address})
        self._notify()

    def _forget(self, address: str) -> None:
        if address not in self.replicas:  # gone for good (not back under the same address meanwhile)
            metrics.forget_replica(self.spec.name, address)

    def _notify(self) -> None:
        self._changed.set()
        self._count()

    def _count(self) -> None:
        serving = sum(1 for r in self.replicas.values() if r.serving)
        metrics.REPLICAS.labels(self.spec.name, "serving").set(serving)
        metrics.REPLICAS.labels(self.spec.name, "not_serving").set(len(self.replicas) - serving)

    def serving(self) -> bool:
        return any(r.serving for r in self.replicas.values())

    async def pick(self, key: str | None, exclude: set[str], deadline: float) -> Replica:
        """A replica for a new call (not in ``exclude``), waiting a bounded time for one to be serving."""
        wait_until = min(deadline, time.monotonic() + WAIT_FOR_REPLICA_SECONDS)
        while True:
            now = time.monotonic()
            candidates = [r for r in self.replicas.values() if r.routable(now) and r.address not in exclude]
            if candidates:
                replica, how = self.picker.pick(candidates, key)
                metrics.PICKS.labels(self.spec.name, self.spec.policy.value, how.value).inc()
                return replica  # type: ignore[return-value]
            if exclude and any(r.routable(now) for r in self.replicas.values()):
                raise unavailable("every replica of the model failed this request")
            if now >= wait_until:
                raise unavailable(f"no replica of the model {self.model or self.spec.name!r} is serving")
            self._changed.clear()
            try:
                # Woken by a change; also re-check soon, since a failed replica becomes routable again by time.
                await asyncio.wait_for(self._changed.wait(), min(0.25, wait_until - now))
            except TimeoutError:
                pass
