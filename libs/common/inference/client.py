"""The one inference client: every caller of inference (gateway, conversation service, jobs worker) uses it.

It knows each pool's replicas (:mod:`.discovery`), their health and load (:mod:`.replica`), picks one per request
(:mod:`.routing`), and hides a replica's failure from the caller: a request that fails before its first token is
sent to another replica; a reply cut off mid-stream is continued on another replica from the prompt plus what was
already said (the partial reply as an assistant message to continue), so the caller reads one uninterrupted stream.
Deadlines and error mapping live here: failures are raised as :class:`~chatplane.common.errors.ServiceError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import grpc

from chatplane.common.errors import ServiceError
from chatplane.common.inference import metrics
from chatplane.common.inference.discovery import Discoverer
from chatplane.common.inference.pools import PoolSpec, parse_pools
from chatplane.common.inference.replica import Replica
from chatplane.common.inference.routing import Picker
from chatplane.protos.inference.v1 import inference_pb2 as pb

log = logging.getLogger(__name__)

# A replica that answers one of these did not do the request (or stopped doing it): another replica may.
REPLICA_FAILURES = frozenset({
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.CANCELLED,  # the server cancelled the call (stopped); our own cancel is told apart
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.ABORTED,
})
MAX_ATTEMPTS = 4  # replicas one request may try in all
WAIT_FOR_REPLICA_SECONDS = 10.0  # a request waits this long at most for a serving replica (start-up, restarts)


def unavailable(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.UNAVAILABLE, message)


class Pool:
    """The replicas of one model, kept current by discovery, and the policy that picks among them."""

    def __init__(self, spec: PoolSpec, discovery_interval: float) -> None:
        self.spec = spec
        self.replicas: dict[str, Replica] = {}
        self.picker = Picker(spec.policy, spec.bound)
        self._changed = asyncio.Event()
        self._discoverer = Discoverer(spec.target, self._update, discovery_interval)
        metrics.start_pool(spec.name, spec.policy.value)

    def models(self) -> list[pb.Model]:
        """The pool's models: the configured one, else what its replicas report (none until one answered)."""
        found: dict[str, pb.Model] = {}
        for replica in self.replicas.values():
            for model in replica.models:
                found.setdefault(model.id, model)
        if self.spec.model:
            return [found.get(self.spec.model) or pb.Model(id=self.spec.model, owned_by="chatplane")]
        return list(found.values())

    @property
    def model(self) -> str:
        """The pool's (first) model, "" while unknown."""
        models = self.models()
        return models[0].id if models else ""

    def start(self) -> None:
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
        return next((m for m in pool.models() if m.id == model or not model), None)

    def models(self) -> list[pb.Model]:
        """Every pool's model (as known now: a pool whose replicas never answered and whose model is not configured
        is left out)."""
        self.start()
        return [m for pool in self.pools for m in pool.models()]

    async def wait_models(self) -> list[pb.Model]:
        """:meth:`models`, waiting a bounded time for the first replica to answer when none has yet."""
        deadline = time.monotonic() + min(self.timeout, WAIT_FOR_REPLICA_SECONDS)
        while not (found := self.models()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return found

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


def can_continue(request: pb.GenerateRequest) -> bool:
    """Whether a reply to ``request`` cut off mid-stream can go on elsewhere from its partial text.

    Chat input only (the partial reply becomes an assistant message to continue). Any request feature whose
    meaning a restart from a text prefix would change (several choices, constrained decoding, log-probabilities)
    must make this False: such a stream ends with an error instead."""
    sampling = request.sampling
    return (
        request.WhichOneof("input") == "chat"
        and sampling.n <= 1
        and not sampling.HasField("logprobs")
        and not sampling.HasField("prompt_logprobs")
        and not request.tools
        and request.structured_output.WhichOneof("format") is None
    )


class Generation:
    """One streamed generation: ``await read()`` gives the next :class:`GenerateResponse`, None at the end; or
    iterate. ``cancel()`` stops it (the replica's engine aborts the request)."""

    def __init__(self, client: InferenceClient, request: pb.GenerateRequest, key: str | None, timeout: float) -> None:
        self.client = client
        self.pool: Pool | None = None  # found at the first read
        self.request = request
        self.key = key
        self.deadline = time.monotonic() + timeout
        self.replica: Replica | None = None  # the replica serving it now
        self.failovers = 0
        self._call = None
        self._tried: set[str] = set()
        self._attempts = 0
        self._text: list[str] = []  # the text the caller has been given
        self._given = False  # whether the caller has been given anything (text, tool calls, log-probabilities)
        self._tokens = 0  # completion tokens given
        self._attempt_tokens = 0  # of them, given by the current attempt
        self._prompt_tokens = 0
        self._first_of_attempt = True
        self._strip = ""  # whitespace the continued prefix lost at its end (the chat template trims it)
        self._ended = False
        self._complete = False  # the last message (with the usage) was given
        self._cancelled = False
        self._last_error: ServiceError | None = None  # the last replica failure, told when no replica is left

    def __aiter__(self) -> AsyncIterator[pb.GenerateResponse]:
        return self

    async def __anext__(self) -> pb.GenerateResponse:
        reply = await self.read()
        if reply is None:
            raise StopAsyncIteration
        return reply

    def cancel(self) -> None:
        self._cancelled = True
        self._finish("ok" if self._complete else "cancelled", cancel=True)

    async def read(self) -> pb.GenerateResponse | None:
        try:
            return await self._read()
        except asyncio.CancelledError:
            self.cancel()  # the reader was cancelled (its client went away): stop the replica's work too
            raise

    async def _read(self) -> pb.GenerateResponse | None:
        while not self._ended:
            if self._cancelled:
                raise ServiceError(grpc.StatusCode.CANCELLED, "the generation was cancelled")
            if self._call is None:
                last = await self._start()
                if last is not None:
                    return last
            try:
                reply = await self._call.read()
            except grpc.aio.AioRpcError as err:
                if self._cancelled:
                    raise ServiceError(grpc.StatusCode.CANCELLED, "the generation was cancelled") from None
                if err.code() in REPLICA_FAILURES:
                    self._last_error = ServiceError.from_rpc(err)
                    self._fail_over(err.code().name)
                    continue
                self._finish("error")
                raise ServiceError.from_rpc(err) from None
            if reply is grpc.aio.EOF:  # ended without its last message: the replica went away
                self._last_error = unavailable("the model's replica went away before the reply was complete")
                self._fail_over("ended early")
                continue
            if reply.finish_reason == "abort":  # the replica's engine gave the request up (it is stopping)
                given = self._take(reply, final=False)
                self._last_error = unavailable("the model's replica stopped the reply before it was complete")
                self._fail_over("aborted")
                if given is not None:
                    return given
                continue
            # The stream's last message carries the usage (with n > 1 each choice's last has a finish_reason).
            return self._take(reply, final=reply.HasField("usage"))
        if self._call is not None:  # the last message came: read the call's end (it ends the call's trace span)
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self._call.read()
            self._finish("ok")
        return None

    # --- internals ------------------------------------------------------------------------------------------------

    async def _start(self) -> pb.GenerateResponse | None:
        """Send the request (or its continuation) to a replica; a last reply when there is nothing left to ask."""
        if self._attempts >= MAX_ATTEMPTS:
            raise self._lost("the model's replicas kept failing")
        if time.monotonic() >= self.deadline:
            raise ServiceError(grpc.StatusCode.DEADLINE_EXCEEDED, "the generation did not finish in time")
        if self.pool is None:
            self.pool = await self.client._pool(self.request.model)  # noqa: SLF001 - the client's own helper
        request = self.request if not self._given else self._continuation()
        if request is None:  # the token budget was used up exactly when the replica was lost
            self._ended = True
            return pb.GenerateResponse(
                finish_reason="length",
                usage=pb.Usage(prompt_tokens=self._prompt_tokens, completion_tokens=self._tokens),
                model=self.pool.model,
            )
        try:
            replica = await self.pool.pick(self.key, self._tried, self.deadline)
        except ServiceError:
            if self._last_error is not None:  # no other replica: the caller hears what went wrong
                self._ended = True
                raise self._last_error from None
            raise
        self._attempts += 1
        self._tried.add(replica.address)
        self.replica = replica
        replica.call_started()
        self._first_of_attempt = True
        self._attempt_tokens = 0
        self._call = replica.stub.Generate(request, timeout=max(0.01, self.deadline - time.monotonic()))
        return None

    def _continuation(self) -> pb.GenerateRequest | None:
        """The request that goes on with the reply given so far, on another replica."""
        if not can_continue(self.request):
            raise self._lost("the reply was cut off and this request cannot be continued elsewhere")
        partial = "".join(self._text)
        request = pb.GenerateRequest()
        request.CopyFrom(self.request)
        request.chat.messages.add(role="assistant", content=partial)
        request.continue_final_message = True
        request.request_id = f"{self.request.request_id or 'req'}-cont{self.failovers}"
        if self.request.sampling.HasField("max_tokens"):
            left = self.request.sampling.max_tokens - self._tokens
            if left < 1:
                return None
            request.sampling.max_tokens = left
        if self.request.HasField("fit"):  # fitted again there: the partial reply is kept like the new message
            request.fit.keep_last += 1
            if request.fit.default_max_tokens:
                left = request.fit.default_max_tokens - self._tokens
                if left < 1:
                    return None
                request.fit.default_max_tokens = left
        self._strip = partial[len(partial.rstrip()):]
        return request

    def _take(self, reply: pb.GenerateResponse, *, final: bool) -> pb.GenerateResponse | None:
        """Account for a reply from the current attempt and make it what the caller sees."""
        continued = self._given
        if self._first_of_attempt:
            self._first_of_attempt = False
            if self._attempts == 1 or not continued:
                self._prompt_tokens = reply.prompt_tokens
            elif reply.prompt_tokens or reply.dropped_messages:
                reply.prompt_tokens = 0  # the caller's prompt was counted once, on its first message
                reply.dropped_messages = 0
            if self._strip and reply.text.startswith(self._strip):
                reply.text = reply.text[len(self._strip):]
            self._strip = ""
        if reply.text:
            self._text.append(reply.text)
        tokens_before = self._tokens - self._attempt_tokens
        self._tokens += reply.tokens
        self._attempt_tokens += reply.tokens
        if not final:
            if reply.finish_reason == "abort":  # an aborted last message: only its text goes on
                reply = pb.GenerateResponse(text=reply.text, tokens=reply.tokens, prompt_tokens=reply.prompt_tokens)
                if not reply.text:
                    return None
            self._given = True
            return reply
        if self.failovers and self._attempts > 1 and tokens_before:
            # Usage as if one replica had answered: the first prompt, every token given.
            reply.usage.prompt_tokens = self._prompt_tokens or reply.usage.prompt_tokens
            reply.usage.completion_tokens = tokens_before + reply.usage.completion_tokens
        self._ended = self._complete = True
        return reply

    def _fail_over(self, reason: str) -> None:
        replica = self.replica
        stage = "mid_stream" if self._given else "before_first_token"
        log.warning("inference replica failed, going on with another",
                    extra={"pool": self.pool.spec.name, "replica": replica.address if replica else None,
                           "reason": reason, "stage": stage, "request_id": self.request.request_id})
        self._finish("failed_over", cancel=True)
        if replica is not None:
            replica.failed()
        self.failovers += 1
        metrics.FAILOVERS.labels(self.pool.spec.name, stage).inc()
        if stage == "mid_stream":
            self._tried = {replica.address} if replica else set()  # a fresh choice among the others

    def _finish(self, outcome: str, *, cancel: bool = False) -> None:
        call, self._call = self._call, None
        if call is None:
            return
        if cancel:
            call.cancel()
        if self.replica is not None:
            self.replica.call_ended(outcome)

    def _lost(self, message: str) -> ServiceError:
        self._ended = True
        log.error("inference stream lost", extra={"pool": self.pool.spec.name if self.pool else "",
                                                  "request_id": self.request.request_id, "reason": message})
        return unavailable(message)
