"""The one inference client: every caller of inference (gateway, conversation service, jobs worker) uses it.

It knows each pool's replicas (:mod:`.discovery`), their health and load (:mod:`.replica`), picks one per request
(:mod:`.routing`), and hides a replica's failure from the caller: unary calls are retried on another replica, and a
stream (:mod:`.generation`) fails over before its first token and is continued elsewhere after it. Deadlines and error mapping live here: failures are raised as :class:`~chatplane.common.errors.ServiceError`.
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from chatplane.common.errors import ServiceError
from chatplane.common.inference import metrics
from chatplane.common.inference.generation import MAX_ATTEMPTS, REPLICA_FAILURES, Generation
from chatplane.common.inference.pools import PoolSpec, parse_pools
from chatplane.common.inference.replica import WAIT_FOR_REPLICA_SECONDS, Pool
from chatplane.protos.inference.v1 import inference_pb2 as pb

log = logging.getLogger(__name__)


class InferenceClient:
    """Calls inference for one process. ``start()`` inside the event loop that uses it; ``close()`` at the end."""

    def __init__(
        self,
        pools: list[PoolSpec] | str,
        *,
        timeout: float = 10.0,
        stream_timeout: float = 900.0,
        discovery_interval: float = 5.0,
    ) -> None:
        specs = parse_pools(pools) if isinstance(pools, str) else pools
        self.timeout = timeout  # unary calls
        self.stream_timeout = stream_timeout  # one whole generation
        self.pools = [Pool(spec, discovery_interval) for spec in specs]
        self._started = False

    @classmethod
    def from_settings(cls, settings, *, timeout: float, stream_timeout: float) -> InferenceClient:
        """From a service's :class:`~chatplane.common.settings.InferenceClientSettings` fields."""
        return cls(
            settings.inference_pools,
            timeout=timeout,
            stream_timeout=stream_timeout,
            discovery_interval=settings.inference_discovery_interval_seconds,
        )

    def start(self) -> None:
        if not self._started:
            self._started = True
            for pool in self.pools:
                pool.start()

    async def close(self) -> None:
        await asyncio.gather(*(pool.close() for pool in self.pools))
        self._started = False

    # --- models ---------------------------------------------------------------------------------------------------

    def pool_for(self, model: str) -> Pool | None:
        """The pool serving ``model`` as known now; "" means the default model (the first pool's)."""
        self.start()
        if not model:
            return self.pools[0]
        for pool in self.pools:
            if any(m.id == model for m in pool.models()):
                return pool
        return None

    async def find_pool(self, model: str) -> Pool | None:
        """:meth:`pool_for`, waiting a bounded time while a pool's model is not known yet (no replica answered)."""
        deadline = time.monotonic() + min(self.timeout, WAIT_FOR_REPLICA_SECONDS)
        while True:
            pool = self.pool_for(model)
            if pool is not None and pool.models():
                return pool
            if pool is None and all(p.models() for p in self.pools):
                return None  # every model is known: this one is not served here
            if time.monotonic() >= deadline:
                return pool
            await asyncio.sleep(0.05)

    async def model(self, model: str) -> pb.Model | None:
        """The served model called ``model`` ("": the default one; None: not served here)."""
        pool = await self.find_pool(model)
        if pool is None:
            return None
        await self._settle([pool])
        return next((m for m in pool.models() if m.id == model or not model), None)

    def models(self) -> list[pb.Model]:
        """Every pool's model (as known now: a pool whose replicas never answered and whose model is not configured
        is left out)."""
        self.start()
        return [m for pool in self.pools for m in pool.models()]

    async def wait_models(self) -> list[pb.Model]:
        """:meth:`models`, waiting a bounded time for the first replica to answer when none has yet."""
        deadline = time.monotonic() + min(self.timeout, WAIT_FOR_REPLICA_SECONDS)
        while not self.models() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await self._settle(self.pools)
        return self.models()

    @staticmethod
    async def _settle(pools: list[Pool]) -> None:
        """Right after start (at most ``SETTLE_SECONDS`` from a pool's start: see ``Pool.settled``), wait for the
        replicas' first answers, so that a configured model is told with its context window and creation time
        rather than as a placeholder. Afterwards this returns at once."""
        while not all(pool.settled() for pool in pools):
            await asyncio.sleep(0.02)

    async def ready(self, timeout: float = 1.0) -> bool:
        """Every pool has a serving replica (waiting up to ``timeout`` for replicas whose health is not known yet,
        as right after start)."""
        self.start()
        deadline = time.monotonic() + timeout
        while not all(pool.serving() for pool in self.pools):
            settled = all(pool.replicas and all(r.known.is_set() for r in pool.replicas.values())
                          for pool in self.pools)
            if settled or time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    async def _pool(self, model: str) -> Pool:
        pool = await self.find_pool(model)
        if pool is None:
            raise ServiceError(
                grpc.StatusCode.NOT_FOUND,
                f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found",
                param="model",
            )
        return pool

    # --- calls ----------------------------------------------------------------------------------------------------

    def generate(self, request: pb.GenerateRequest, *, key: str | None = None,
                 timeout: float | None = None) -> Generation:
        """Stream a generation. ``key`` (a conversation or session) keeps related requests on one replica. Nothing
        happens until the first ``read()``, which raises when no replica can take it (NOT_FOUND: an unknown model)."""
        return Generation(self, request, key, timeout or self.stream_timeout)

    async def count_tokens(self, request: pb.CountTokensRequest) -> pb.CountTokensResponse:
        return await self._unary(request.model, "CountTokens", request)

    async def _unary(self, model: str, method: str, request):
        """A unary call to any replica of the model's pool (least loaded), retried on another when one fails."""
        pool = await self._pool(model)
        deadline = time.monotonic() + self.timeout
        tried: set[str] = set()
        while True:
            replica = await pool.pick(None, tried, deadline)
            tried.add(replica.address)
            replica.call_started()
            outcome = "error"
            try:
                reply = await getattr(replica.stub, method)(request, timeout=max(0.01, deadline - time.monotonic()))
                outcome = "ok"
                return reply
            except grpc.aio.AioRpcError as err:
                if err.code() in REPLICA_FAILURES and len(tried) < MAX_ATTEMPTS:
                    outcome = "failed_over"
                    replica.failed()
                    metrics.FAILOVERS.labels(pool.spec.name, "before_first_token").inc()
                    continue
                raise ServiceError.from_rpc(err) from None
            finally:
                replica.call_ended(outcome)
