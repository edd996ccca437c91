"""Routing inside the inference client: the policies, the load bound, which replicas may be picked, pool settings."""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from dataclasses import dataclass

import grpc
import pytest

from chatplane.common.errors import ServiceError
from chatplane.common.inference import replica as replica_module
from chatplane.common.inference.discovery import Discoverer, ready_addresses
from chatplane.common.inference.pools import Discovery, Policy, PoolSpec, parse_pools, parse_target
from chatplane.common.inference.replica import Pool
from chatplane.common.inference.routing import BOUND, Pick, Picker, by_affinity, capacity, ranking


@dataclass
class R:
    """A replica as routing sees it (test double: an address and a load)."""

    address: str
    load: int = 0
    serving: bool = True
    leaving: bool = False
    failed_until: float = 0.0
    models: tuple = ()

    def routable(self, now: float) -> bool:
        return self.serving and not self.leaving and now >= self.failed_until


def replicas(n: int) -> list[R]:
    return [R(f"10.0.0.{i}:50053") for i in range(1, n + 1)]


KEYS = [f"conversation:{i:05d}" for i in range(2000)]


def owners(candidates: list[R]) -> dict[str, str]:
    return {key: ranking(key, candidates)[0].address for key in KEYS}


def test_a_replica_joining_moves_only_its_share_of_the_keys_and_only_to_itself():
    before = owners(replicas(4))
    after = owners(replicas(5))
    moved = [k for k in KEYS if before[k] != after[k]]
    assert 0.15 < len(moved) / len(KEYS) < 0.25  # about 1/5
    assert {after[k] for k in moved} == {"10.0.0.5:50053"}


def test_a_replica_leaving_moves_only_its_own_keys():
    five = replicas(5)
    before = owners(five)
    after = owners([r for r in five if r.address != "10.0.0.3:50053"])
    moved = {k for k in KEYS if before[k] != after[k]}
    assert moved == {k for k in KEYS if before[k] == "10.0.0.3:50053"}
    assert 0.15 < len(moved) / len(KEYS) < 0.25


def test_the_same_key_ranks_the_same_in_every_process_and_keys_spread():
    # blake2b, not Python's salted hash(): a gateway replica and the conversation service agree.
    assert ranking("conversation:1", replicas(3))[0].address == ranking("conversation:1", replicas(3)[::-1])[0].address
    counts = {}
    for owner in owners(replicas(4)).values():
        counts[owner] = counts.get(owner, 0) + 1
    assert min(counts.values()) > len(KEYS) / 4 * 0.8


def test_affinity_keeps_a_key_on_its_replica_until_it_is_over_the_bound():
    pool = replicas(2)
    key = "conversation:sticky"
    home = ranking(key, pool)[0]
    chosen, how = by_affinity(key, pool)
    assert (chosen, how) == (home, Pick.preferred)
    home.load = 3
    other = next(r for r in pool if r is not home)
    other.load = 2
    # capacity = ceil(1.25 * 6 / 2) = 4: home (3) still takes it
    assert by_affinity(key, pool) == (home, Pick.preferred)
    home.load = 5
    assert by_affinity(key, pool) == (other, Pick.spilled)


def test_the_load_bound_holds_whatever_the_keys():
    rng = random.Random(7)
    pool = replicas(4)
    for _ in range(500):
        if rng.random() < 0.3 and any(r.load for r in pool):  # some requests end
            rng.choice([r for r in pool if r.load]).load -= 1
        limit = capacity(pool)
        hot = f"conversation:{rng.randint(0, 3)}"  # few keys: they would pile up without the bound
        chosen, _ = by_affinity(hot, pool)
        assert chosen.load < limit
        chosen.load += 1
        total = sum(r.load for r in pool)
        assert max(r.load for r in pool) <= math.ceil(BOUND * total / len(pool)) + 1


def test_least_loaded_and_round_robin():
    pool = replicas(3)
    pool[0].load, pool[1].load, pool[2].load = 4, 1, 2
    picker = Picker(Policy.least_loaded)
    assert picker.pick(pool, "ignored") == (pool[1], Pick.least_loaded)
    rr = Picker(Policy.round_robin)
    assert [rr.pick(pool, None)[0].address for _ in range(4)] == [
        "10.0.0.1:50053", "10.0.0.2:50053", "10.0.0.3:50053", "10.0.0.1:50053"]
    # affinity without a key: least loaded
    assert Picker(Policy.affinity).pick(pool, None) == (pool[1], Pick.least_loaded)


def pool_with(reps: list[R], policy: Policy = Policy.least_loaded) -> Pool:
    pool = Pool(PoolSpec(name="p", target=parse_target("127.0.0.1:1"), policy=policy), discovery_interval=5)
    pool.replicas = {r.address: r for r in reps}  # type: ignore[misc]
    return pool


async def test_draining_unhealthy_leaving_and_failed_replicas_are_skipped():
    reps = replicas(4)
    reps[0].serving = False  # draining or unhealthy: its health says NOT_SERVING
    reps[1].leaving = True  # gone from discovery
    reps[2].failed_until = float("inf")  # a call just found it unreachable
    reps[3].load = 10  # busy, but the only one left
    pool = pool_with(reps)
    loop = asyncio.get_running_loop()
    for _ in range(5):
        assert await pool.pick(None, set(), loop.time() + 1) is reps[3]


async def test_with_no_replica_serving_a_pick_waits_then_fails_unavailable(monkeypatch):
    monkeypatch.setattr(replica_module, "WAIT_FOR_REPLICA_SECONDS", 0.3)
    reps = replicas(1)
    reps[0].serving = False
    pool = pool_with(reps)
    import time

    started = time.monotonic()
    with pytest.raises(ServiceError) as err:
        await pool.pick(None, set(), time.monotonic() + 5)
    assert err.value.status == grpc.StatusCode.UNAVAILABLE
    assert 0.25 < time.monotonic() - started < 2


async def test_a_pick_waiting_for_a_replica_takes_it_as_soon_as_it_serves():
    import time

    reps = replicas(1)
    reps[0].serving = False
    pool = pool_with(reps)

    async def comes_up() -> None:
        await asyncio.sleep(0.1)
        reps[0].serving = True
        pool._notify()

    task = asyncio.create_task(comes_up())
    assert await pool.pick(None, set(), time.monotonic() + 5) is reps[0]
    await task


async def test_replicas_already_tried_are_not_picked_again():
    import time

    reps = replicas(2)
    pool = pool_with(reps)
    assert await pool.pick(None, {reps[0].address}, time.monotonic() + 1) is reps[1]
    with pytest.raises(ServiceError):
        await pool.pick(None, {r.address for r in reps}, time.monotonic() + 1)


def test_pool_settings_parse_and_reject_clearly():
    (one,) = parse_pools("127.0.0.1:50053, 127.0.0.1:50054")
    assert one.target.addresses == ("127.0.0.1:50053", "127.0.0.1:50054") and one.policy is Policy.affinity
    pools = parse_pools('[{"name": "a", "model": "m1", "target": "dns:///inference-a.ns.svc:50053"},'
                        ' {"name": "b", "model": "m2", "target": "kubernetes:///inference-b.ns:50053",'
                        ' "policy": "round_robin"}]')
    assert [(p.name, p.model, p.target.discovery, p.policy) for p in pools] == [
        ("a", "m1", Discovery.dns, Policy.affinity), ("b", "m2", Discovery.kubernetes, Policy.round_robin)]
    assert (pools[1].target.host, pools[1].target.namespace, pools[1].target.port) == ("inference-b", "ns", 50053)
    for bad, words in [
        ("", "empty"),
        ("dns:///no-port", "host:port"),
        ("grpc://x:1", "scheme"),
        ('[{"target": "a:1", "policy": "fastest"}]', "policy"),
        ('[{"name": "a", "target": "a:1"}, {"name": "a", "target": "b:1"}]', "unique"),
        ('[{"model": "m", "target": "a:1"}, {"model": "m", "target": "b:1"}]', "same model"),
        ('[{"target": "a:1", "replicas": 3}]', "unknown keys"),
        ('[{"target": "a:1", "bound": 0.5}]', "bound"),
        ("[not json", "JSON"),
    ]:
        with pytest.raises(ValueError, match=words):
            parse_pools(bad)


async def test_file_discovery_follows_the_file(tmp_path):
    path = tmp_path / "replicas"
    path.write_text("127.0.0.1:1\n# a comment\n127.0.0.1:2\n")
    seen: list[set[str]] = []
    discoverer = Discoverer(parse_target(f"file://{path}"), seen.append, interval=0.05)
    discoverer.start()
    try:
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.02)
        assert seen[-1] == {"127.0.0.1:1", "127.0.0.1:2"}
        path.write_text("127.0.0.1:2\n127.0.0.1:3\n")
        for _ in range(100):
            if seen[-1] == {"127.0.0.1:2", "127.0.0.1:3"}:
                break
            await asyncio.sleep(0.02)
        assert seen[-1] == {"127.0.0.1:2", "127.0.0.1:3"}
        path.unlink()  # unreadable: what was known stays
        await asyncio.sleep(0.2)
        assert seen[-1] == {"127.0.0.1:2", "127.0.0.1:3"}
    finally:
        await discoverer.stop()


async def test_dns_discovery_resolves_a_name_to_its_addresses():
    seen: list[set[str]] = []
    discoverer = Discoverer(parse_target("dns:///localhost:50053"), seen.append, interval=60)
    discoverer.start()
    try:
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.02)
        assert "127.0.0.1:50053" in seen[0]
    finally:
        await discoverer.stop()


def test_endpoint_slices_give_the_ready_endpoints_on_the_grpc_port():
    from kubernetes.client import (
        DiscoveryV1EndpointPort,
        V1Endpoint,
        V1EndpointConditions,
        V1EndpointSlice,
        V1ObjectMeta,
    )

    def endpoint(ip: str, ready: bool = True, terminating: bool = False) -> V1Endpoint:
        return V1Endpoint(addresses=[ip], conditions=V1EndpointConditions(ready=ready, terminating=terminating))

    slices = [
        V1EndpointSlice(
            address_type="IPv4", metadata=V1ObjectMeta(name="inference-abc"),
            ports=[DiscoveryV1EndpointPort(name="metrics", port=9090), DiscoveryV1EndpointPort(name="grpc", port=50053)],
            endpoints=[endpoint("10.1.0.4"), endpoint("10.1.0.5", ready=False),
                       endpoint("10.1.0.6", terminating=True)],
        ),
        V1EndpointSlice(
            address_type="IPv6", metadata=V1ObjectMeta(name="inference-def"),
            ports=[DiscoveryV1EndpointPort(name="grpc", port=50053)],
            endpoints=[endpoint("fd00::7")],
        ),
    ]
    assert ready_addresses(slices, "grpc", 1) == {"10.1.0.4:50053", "[fd00::7]:50053"}


def test_endpoint_slices_are_listed_then_watched_through_the_kubernetes_api(tmp_path):
    """The watch loop against a test double of the API server's two calls (list, then watch as a stream of events)."""
    import http.server
    import threading

    from kubernetes import client

    from chatplane.common.inference.discovery import watch_endpoint_slices

    def slice_json(name: str, ips: list[str], ready: bool = True) -> dict:
        return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
                "metadata": {"name": name, "resourceVersion": "7",
                             "labels": {"kubernetes.io/service-name": "inference-a"}},
                "ports": [{"name": "grpc", "port": 50053}],
                "endpoints": [{"addresses": [ip], "conditions": {"ready": ready}} for ip in ips]}

    seen_paths: list[str] = []
    watch_go = threading.Event()

    class FakeApiServer(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            seen_paths.append(self.path)
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            if "watch=True" not in self.path and "watch=true" not in self.path:
                body = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList",
                        "metadata": {"resourceVersion": "7"}, "items": [slice_json("a-1", ["10.1.0.4"])]}
                self.wfile.write(json.dumps(body).encode())
                return
            watch_go.wait(10)
            for event in ({"type": "ADDED", "object": slice_json("a-2", ["10.1.0.5", "10.1.0.6"])},
                          {"type": "MODIFIED", "object": slice_json("a-2", ["10.1.0.5", "10.1.0.6"], ready=False)},
                          {"type": "DELETED", "object": slice_json("a-1", ["10.1.0.4"])}):
                self.wfile.write((json.dumps(event) + "\n").encode())
                self.wfile.flush()
                time.sleep(0.05)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeApiServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    updates: list[set[str]] = []
    stop = threading.Event()
    config = client.Configuration(host=f"http://127.0.0.1:{server.server_address[1]}")
    api = client.DiscoveryV1Api(client.ApiClient(config))
    target = parse_target("kubernetes:///inference-a.chat:50053")

    def update(found: set[str]) -> None:
        updates.append(found)
        if len(updates) == 1:
            watch_go.set()
        if len(updates) == 4:
            stop.set()

    worker = threading.Thread(target=watch_endpoint_slices, args=(target, update, stop, api), daemon=True)
    worker.start()
    worker.join(20)
    server.shutdown()
    assert updates == [{"10.1.0.4:50053"}, {"10.1.0.4:50053", "10.1.0.5:50053", "10.1.0.6:50053"},
                       {"10.1.0.4:50053"}, set()]
    assert all("/apis/discovery.k8s.io/v1/namespaces/chat/endpointslices" in p for p in seen_paths)
    assert all("labelSelector=kubernetes.io" in p and "service-name" in p and "inference-a" in p for p in seen_paths)
