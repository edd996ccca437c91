"""Finding a pool's replicas: a static list, a DNS name re-resolved periodically (a headless Service), a file of
addresses read again periodically, or a Service's EndpointSlices watched through the Kubernetes API. Each reports the current set of ``host:port``
addresses through a callback whenever it may have changed."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from chatplane.common.inference.pools import Discovery, Target

log = logging.getLogger(__name__)

Update = Callable[[set[str]], None]
WATCH_TIMEOUT_SECONDS = 300  # an EndpointSlice watch is renewed this often
WATCH_RETRY_SECONDS = 5.0


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def resolve(host: str, port: int) -> set[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return {address(info[4][0], port) for info in infos}


class Discoverer:
    """Runs in the background (:meth:`start` / :meth:`stop`), calling ``update`` with the addresses."""

    def __init__(self, target: Target, update: Update, interval: float) -> None:
        self.target = target
        self.update = update
        self.interval = interval
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        kind = self.target.discovery
        if kind is Discovery.static:
            self.update(set(self.target.addresses))
            return
        run = self._kubernetes() if kind is Discovery.kubernetes else self._poll(
            self._resolve if kind is Discovery.dns else self._read_file)
        self._task = asyncio.create_task(run, name=f"inference-discovery-{self.target}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _resolve(self) -> set[str]:
        try:
            return await resolve(self.target.host, self.target.port)
        except socket.gaierror as e:
            if e.errno == socket.EAI_NONAME:  # no record at all (a headless Service with no ready pod): none
                return set()
            raise

    async def _read_file(self) -> set[str]:
        text = await asyncio.to_thread(Path(self.target.host).read_text)
        return {line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")}

    async def _poll(self, lookup: Callable[[], Awaitable[set[str]]]) -> None:
        """Look the addresses up every ``interval`` seconds and report changes. A failed lookup keeps what was
        known (a resolver hiccup must not empty the pool)."""
        known: set[str] | None = None
        while True:
            try:
                found = await lookup()
            except OSError as e:
                log.warning("inference discovery: lookup failed", extra={"target": str(self.target), "error": str(e)})
                found = known if known is not None else set()
            if found != known:
                known = found
                self.update(found)
            await asyncio.sleep(self.interval)

    async def _kubernetes(self) -> None:
        loop = asyncio.get_running_loop()
        stop = threading.Event()
        thread = threading.Thread(
            target=watch_endpoint_slices,
            args=(self.target, lambda found: loop.call_soon_threadsafe(self.update, found), stop),
            name=f"endpointslices-{self.target.host}",
            daemon=True,
        )
        thread.start()
        try:
            await asyncio.Event().wait()  # until cancelled
        finally:
            stop.set()


def ready_addresses(slices: Iterable[object], port_name: str | None, default_port: int) -> set[str]:
    """The addresses of the ready, not terminating endpoints of a Service's EndpointSlices (kubernetes client
    ``V1EndpointSlice`` objects)."""
    found: set[str] = set()
    for s in slices:
        port = default_port
        for p in getattr(s, "ports", None) or []:
            if port_name is None or p.name == port_name:
                port = p.port or default_port
                break
        for endpoint in getattr(s, "endpoints", None) or []:
            conditions = endpoint.conditions
            if conditions is not None and (conditions.ready is False or conditions.terminating):
                continue
            for ip in endpoint.addresses or []:
                found.add(address(ip, port))
    return found


def watch_endpoint_slices(target: Target, update: Update, stop: threading.Event, api=None) -> None:
    """Blocking: list and watch the Service's EndpointSlices until ``stop`` is set, calling ``update`` on change.

    Uses the pod's service account (in-cluster config) unless an ``api`` (a ``DiscoveryV1Api``) is given; the chart
    grants get/list/watch on endpointslices when this discovery is chosen."""
    try:
        from kubernetes import client, config, watch
    except ImportError as e:  # pragma: no cover - the package is part of the gateway and conversation extras
        raise RuntimeError("kubernetes:/// inference targets need the `kubernetes` package") from e
    if api is None:
        config.load_incluster_config()
        api = client.DiscoveryV1Api()
    selector = f"kubernetes.io/service-name={target.host}"
    slices: dict[str, object] = {}
    known: set[str] | None = None

    def publish() -> None:
        nonlocal known
        found = ready_addresses(slices.values(), "grpc", target.port)
        if found != known:
            known = found
            update(found)

    while not stop.is_set():
        try:
            listed = api.list_namespaced_endpoint_slice(target.namespace, label_selector=selector)
            slices = {s.metadata.name: s for s in listed.items}
            publish()
            w = watch.Watch()
            for event in w.stream(
                api.list_namespaced_endpoint_slice,
                target.namespace,
                label_selector=selector,
                resource_version=listed.metadata.resource_version,
                timeout_seconds=WATCH_TIMEOUT_SECONDS,
            ):
                obj = event["object"]
                if event["type"] == "DELETED":
                    slices.pop(obj.metadata.name, None)
                elif event["type"] in ("ADDED", "MODIFIED"):
                    slices[obj.metadata.name] = obj
                publish()
                if stop.is_set():
                    w.stop()
                    return
        except Exception as e:  # noqa: BLE001 - the API server away or the watch expired: list again
            log.warning("inference discovery: EndpointSlice watch failed, retrying",
                        extra={"target": str(target), "error": f"{type(e).__name__}: {e}"[:300]})
            stop.wait(WATCH_RETRY_SECONDS)
