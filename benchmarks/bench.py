"""``make bench``: what the platform itself costs per request, and the real engine through it.

    python benchmarks/bench.py [--clients 1 32 128] [--skip-engine] [--out bench-results]

1. overhead: load generator -> gateway -> inference (synthetic engine, as fast as possible) against a bare HTTP
   server streaming the same 64 SSE events (benchmarks/bare_server.py), both started here, measured one after the
   other, never at once. For ``/v1/chat/completions`` and for the conversation path (gateway -> conversation ->
   inference, messages stored in SQLite, the embedded default, and in PostgreSQL: ``--databases``). Figures: requests/s, TTFT p50/p99, the ratio to the
   bare server, and the CPU time the platform's processes spent per request (from /proc, their own utime + stime).
2. real engine: ``benchmarks/throughput.py`` (the full stack against vLLM's AsyncLLM called directly, 1 and 8 streams).
3. events: outbox -> consumer, once the platform has an events path.
4. fleet: ``benchmarks/fleet.py`` (two real replicas: prefix-cache hit ratio and TTFT with affinity against round
   robin; a replica killed under 16 streams; a replica joining under load; the spread of 32 stateless clients).
5. web: the web app's first-screen JavaScript (gzipped, against the 300 KB budget) and its time to first paint in
   Chromium (``benchmarks/web.py``).

Everything listens on 127.0.0.1; every run is bounded by a request count and a deadline. Prints a table and writes
the JSON to ``<out>/bench-<time>.json``. Figures on a shared machine are noisy: the load average is recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib.util
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402

CHUNKS = 64
PROMPT = "Hello, world!"
CHAT_MARKER = b'"delta":{"content"'
CONVERSATION_MARKER = b'"type":"message.delta"'
TICKS = os.sysconf("SC_CLK_TCK")
# Limits of the platform that a load test must not trip over (ignored by a gateway that does not know them).
PLATFORM_ENV = {
    "CHATPLANE_INFERENCE_ENGINE": "synthetic",
    "CHATPLANE_INFERENCE_SERVED_MODEL_NAME": "synthetic",
    "CHATPLANE_INFERENCE_MAX_NUM_SEQS": "1024",
    # Rate limits stay on (their cost is part of the platform's) but high enough for one key's load test.
    "CHATPLANE_GATEWAY_RATE_LIMIT_REQUESTS_PER_MINUTE": "10000000",
    "CHATPLANE_GATEWAY_RATE_LIMIT_TOKENS_PER_MINUTE": "1000000000",
}


def cpu_seconds(pid: int) -> float:
    """The process's own user + system CPU time."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def requests_for(clients: int, scale: float) -> int:
    return max(int(clients * (100 if clients == 1 else 10 if clients <= 32 else 5) * scale), clients)


async def _json_post(port: int, path: str, body: dict, key: str | None = None) -> dict:
    conn = loadgen.Connection(port)
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    try:
        status, _, data = await conn.post(path, json.dumps(body).encode(), headers, b"")
    finally:
        await conn.close()
    if status >= 300:
        raise RuntimeError(f"POST {path}: {status} {data[:300]!r}")
    return json.loads(data)


class Target:
    """What the load generator talks to: the platform or the bare server, and the processes that do its work."""

    def __init__(self, name: str, port: int, pids: dict[str, int], key: str = "", model: str = "bare") -> None:
        self.name, self.port, self.pids, self.key, self.model = name, port, pids, key, model

    def cpu(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    async def conversations(self, clients: int, per_client: int) -> list[list[str]]:
        if not self.key:
            return [["bare"] * per_client for _ in range(clients)]
        sem = asyncio.Semaphore(16)

        async def one() -> str:
            async with sem:
                return (await _json_post(self.port, "/v1/conversations", {"title": "bench"}, self.key))["id"]

        ids = await asyncio.gather(*(one() for _ in range(clients * per_client)))
        return [ids[c * per_client:(c + 1) * per_client] for c in range(clients)]

    async def measure(self, path: str, clients: int, requests: int, deadline: float) -> dict:
        headers = {"content-type": "application/json"}
        if self.key:
            headers["authorization"] = f"Bearer {self.key}"
        if path == "chat":
            body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": PROMPT}],
                               "max_tokens": CHUNKS, "stream": True}).encode()
            marker = CHAT_MARKER

            def make(c: int, n: int) -> tuple[str, bytes, dict[str, str]]:
                return "/v1/chat/completions", body, headers
        else:
            body = json.dumps({"content": PROMPT, "max_tokens": CHUNKS, "stream": True}).encode()
            marker = CONVERSATION_MARKER
            # A fresh conversation every 8 messages, so that histories stay short as in ordinary use.
            per_client = -(-requests // clients) // 8 + 2
            pool = await self.conversations(clients, per_client)

            def make(c: int, n: int) -> tuple[str, bytes, dict[str, str]]:
                ids = pool[c]
                return f"/v1/conversations/{ids[(n // 8) % len(ids)]}/messages", body, headers

        def check(data: bytes) -> bool:
            # Every token (" word", " tok7": one space each; the events hold no other but their "data: ") and the
            # end, however many events carried them: the platform merges the tokens ready together into one event.
            tokens = data.count(b" ") - data.count(b"data: ")
            return tokens == CHUNKS and data.count(marker) > 0 and b"data: [DONE]" in data

        # Warm-up: connections, caches, the first conversation rows.
        await loadgen.run(self.port, clients, min(requests, 2 * clients), deadline, make, marker, check)
        before, t0 = self.cpu(), time.perf_counter()
        result = await loadgen.run(self.port, clients, requests, deadline, make, marker, check)
        after = self.cpu()
        out = result.summary()
        wall = time.perf_counter() - t0
        spent = {name: after[name] - before[name] for name in after}
        out["cpu_ms_per_request"] = {n: round(s * 1000 / max(result.ok, 1), 3) for n, s in spent.items()}
        out["cpu_ms_per_request_total"] = round(sum(spent.values()) * 1000 / max(result.ok, 1), 3)
        out["cpu_utilisation"] = {n: round(s / wall, 2) for n, s in spent.items()}
        out["loadavg"] = loadavg()
        return out


def start_bare(port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(HERE / "bare_server.py"), str(port), str(CHUNKS)],  # noqa: S603
                            start_new_session=True)
    from chatplane.dev.procs import http_ok

    deadline = time.monotonic() + 30
    while not http_ok(f"http://127.0.0.1:{port}/healthz"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the bare server did not start")
        time.sleep(0.1)
    return proc


def overhead(args: argparse.Namespace, report: dict) -> None:
    from chatplane.dev.procs import free_port
    from chatplane.dev.stack import Ports, dev_api_key, services, start_all, stop_all

    section: dict = {"chunks": CHUNKS, "paths": {}}
    report["overhead"] = section
    results: dict[tuple[str, str, int], dict] = {}

    # The bare server first, alone.
    port = free_port()
    bare_proc = start_bare(port)
    try:
        bare = Target("bare", port, {"bare": bare_proc.pid})
        for path in args.paths:
            for n in args.clients:
                results["bare", path, n] = asyncio.run(
                    bare.measure(path, n, requests_for(n, args.scale), args.deadline))
                print(f"  bare      {path:<13} {n:>4} clients: {fmt_run(results['bare', path, n])}", flush=True)
    finally:
        bare_proc.terminate()
        bare_proc.wait(10)

    # Then the platform, alone: as deployed by default (the inference service's 20 ms stream interval: the synthetic
    # engine's tokens, made as fast as possible, go out in batches, fewer and larger SSE events than the bare
    # server's 64), then (unless --stream-interval-ms is negative) with another interval, by default 0 (every token
    # its own message), so that the two rows show what the setting buys.
    # The conversation path also runs with the conversation service on PostgreSQL (its database made for the run).
    variants: list[tuple[str, dict[str, str], list[str]]] = []
    intervals = [("default", {})]
    if args.stream_interval_ms >= 0:
        intervals.append((f"interval{args.stream_interval_ms:g}ms",
                          {"CHATPLANE_INFERENCE_STREAM_INTERVAL_MS": str(args.stream_interval_ms)}))
    for database in args.databases:
        paths = args.paths if database == "sqlite" else [p for p in args.paths if p == "conversation"]
        if paths:
            variants += [(name if database == "sqlite" else f"pg-{name}", extra, paths) for name, extra in intervals]
    section["variants"] = {name: extra for name, extra, _ in variants}
    for variant, extra, paths in variants:
        with tempfile.TemporaryDirectory(prefix="chatplane-bench-") as tmp, \
                (pg_database(args.pg_dsn) if variant.startswith("pg-") else contextlib.nullcontext()) as pg_url:
            if pg_url:
                extra = {**extra, "CHATPLANE_CONVERSATION_DATABASE_URL": pg_url}
            # Every port free, metrics and the broker's too: other platforms may run on this machine.
            ports = Ports(**{f.name: free_port() for f in dataclasses.fields(Ports)})
            env = {**PLATFORM_ENV, **extra, **dict(kv.split("=", 1) for kv in args.env)}
            svcs = services(ports, Path(tmp), log_dir=Path(tmp), env=env)
            try:
                start_all(svcs, 120)
                base = f"http://127.0.0.1:{ports.gateway}"
                key = dev_api_key(base, Path(tmp))
                pids = {s.name: s.proc.pid for s in svcs if s.proc is not None}
                for path in paths:
                    involved = ["gateway", "inference"] + (["conversation"] if path == "conversation" else [])
                    plat = Target(variant, ports.gateway, {n: pids[n] for n in [*involved, "auth"]}, key, "synthetic")
                    for n in args.clients:
                        results[variant, path, n] = asyncio.run(
                            plat.measure(path, n, requests_for(n, args.scale), args.deadline))
                        print(f"  {variant:<9} {path:<13} {n:>4} clients: {fmt_run(results[variant, path, n])}",
                              flush=True)
            finally:
                stop_all(svcs)
                report.setdefault("platform_logs_tail", []).extend(_log_errors(Path(tmp)))

    for path in args.paths:
        rows = []
        for (variant, _, paths), n in itertools.product(variants, args.clients):
            if path not in paths:
                continue
            p, b = results[variant, path, n], results["bare", path, n]
            rows.append({
                "variant": variant,
                "clients": n,
                "platform": p,
                "bare": b,
                "throughput_ratio": (round(p["requests_per_s"] / b["requests_per_s"], 3)
                                     if b["requests_per_s"] else None),
                "added_ttft_p50_ms": _sub(p["ttft_p50_ms"], b["ttft_p50_ms"]),
                "platform_cpu_ms_per_request": round(
                    sum(v for k, v in p["cpu_ms_per_request"].items() if k != "auth"), 3),
            })
        section["paths"][path] = rows


@contextlib.contextmanager
def pg_database(dsn: str):
    """A new PostgreSQL database for one run (``postgresql+asyncpg://`` URL), dropped afterwards."""
    import uuid

    import asyncpg

    base = dsn.rpartition("/")[0]
    name = f"chatplane_bench_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{base.replace('postgresql://', 'postgresql+asyncpg://', 1)}/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 2)


def _log_errors(folder: Path) -> list[str]:
    lines = []
    for log in folder.glob("*.log"):
        lines += [f"{log.stem}: {line[:300]}" for line in log.read_text(errors="replace").splitlines()
                  if '"levelname": "ERROR"' in line or "Traceback" in line][:5]
    return lines


def fmt_run(r: dict) -> str:
    return (f"{r['requests_per_s']:>7} req/s  TTFT p50 {r['ttft_p50_ms']} ms p99 {r['ttft_p99_ms']} ms  "
            f"CPU {r['cpu_ms_per_request_total']} ms/req  errors {r['errors'] or 0}")


def run_child(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """``subprocess.run`` with captured text output, except that a child past its timeout gets SIGTERM first and 30 s
    to stop what it started (a broker, a platform), SIGKILL only after that."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # noqa: S603
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def real_engine(args: argparse.Namespace, report: dict) -> None:
    for attempt in (1, 2):  # vLLM's start-up can fail on a busy shared machine: one more try
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            cmd = [sys.executable, str(HERE / "throughput.py"), "--streams", "1", "8", "--max-tokens", "64",
                   "--json", out.name]
            try:
                done = run_child(cmd, args.engine_timeout)
            except subprocess.TimeoutExpired:
                report["real_engine"] = {"error": f"timed out after {args.engine_timeout} s"}
                return
            if done.returncode == 0:
                report["real_engine"] = json.loads(Path(out.name).read_text())
                report["real_engine"]["attempts"] = attempt
                return
            errors = [line for line in done.stderr.splitlines() if "Error" in line or "error" in line]
            report["real_engine"] = {"error": "\n".join(errors[-20:]) + "\n" + done.stderr[-1500:]}
            print(f"  real engine attempt {attempt} failed", flush=True)


def events(args: argparse.Namespace, report: dict) -> None:
    if not all(importlib.util.find_spec(f"chatplane.common.{m}") for m in ("outbox", "relay", "consumer", "broker")):
        print("events: events path not built yet (no chatplane.common outbox/relay): skipped")
        report["events"] = {"skipped": "events path not built yet"}
        return
    print("events section (benchmarks/events.py) ...", flush=True)

    def run_events(*extra: str) -> dict:
        cmd = [sys.executable, str(HERE / "events.py"), *extra]
        done = run_child(cmd, args.events_timeout)
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-2000:] or done.stdout[-2000:])
        return json.loads(done.stdout)

    try:
        flat_out = run_events("--events", "2000")
        paced = run_events("--events", "500", "--rate", "50")
    except subprocess.TimeoutExpired:
        report["events"] = {"error": f"timed out after {args.events_timeout} s"}
        return
    except RuntimeError as e:
        report["events"] = {"error": str(e)}
        return
    report["events"] = {
        "path": "outbox (SQLite) -> relay -> Kafka (Tansu) -> consumer",
        "throughput": {"events": flat_out["consumed"], "events_per_s": flat_out["throughput_events_per_s"]},
        "latency": {"events": paced["consumed"], "rate_per_s": 50, "p50_ms": paced["latency_ms_p50"],
                    "p99_ms": paced["latency_ms_p99"]},
    }


def web(args: argparse.Namespace, report: dict) -> None:
    print("web section (benchmarks/web.py) ...", flush=True)
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        try:
            done = run_child([sys.executable, str(HERE / "web.py"), "--json", out.name], 180)
        except subprocess.TimeoutExpired:
            report["web"] = {"error": "timed out after 180 s"}
            return
        if done.returncode != 0:
            report["web"] = {"error": (done.stderr or done.stdout)[-1500:]}
            return
        report["web"] = json.loads(Path(out.name).read_text())


def fleet(args: argparse.Namespace, report: dict) -> None:
    print("fleet section (benchmarks/fleet.py: two real replicas, affinity against round robin; kill, join, spread) "
          "...", flush=True)
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        try:
            done = run_child([sys.executable, str(HERE / "fleet.py"), "--json", out.name], args.fleet_timeout)
        except subprocess.TimeoutExpired:
            report["fleet"] = {"error": f"timed out after {args.fleet_timeout} s"}
            return
        if done.returncode != 0:
            report["fleet"] = {"error": (done.stderr or done.stdout)[-1500:]}
            return
        report["fleet"] = json.loads(Path(out.name).read_text())


def print_fleet(fl: dict) -> None:
    if "error" in fl:
        print(f"\nfleet: failed: {fl['error'][-500:]}")
        return
    px = fl.get("prefix") or {}
    if "phases" in px:
        print(f"\nfleet: {px['replicas']} real replicas, {px['conversations']} conversations x {px['turns']} turns "
              f"(a {px['document_words']}-word document, then questions), KV cache {px['kv_cache_gib_per_replica']} GiB "
              f"a replica, block size {px['block_size']}, {px['rounds']} rounds of each policy")
        print(f"{'policy':<12} {'prefix-cache hit ratio':>22} {'prefilled tokens/msg':>20} {'TTFT p50 ms':>12} "
              f"{'TTFT p99 ms':>12} {'p50 turns 2+':>13}")
        for policy, ph in px["phases"].items():
            print(f"{policy:<12} {ph['prefix_cache_hit_ratio']!s:>22} {ph['prompt_tokens_computed_per_message']!s:>20} "
                  f"{ph['ttft_p50_ms']!s:>12} {ph['ttft_p99_ms']!s:>12} {ph['ttft_p50_ms_turns_2_on']!s:>13}")
        print(f"  TTFT p50 round robin / affinity: {px.get('ttft_p50_speedup')}")
        if "kill_real_engine" in px:
            print(f"  kill -9 of a real replica under 16 streams: {px['kill_real_engine']}")
    elif px:
        print(f"\nfleet prefix: failed: {px.get('error', '')[-500:]}")
    for name in ("kill", "join"):
        if fl.get(name):
            print(f"  {name}: {fl[name]}")
    for policy, sp in (fl.get("spread") or {}).items():
        print(f"  spread ({policy}): {sp}")


def print_tables(report: dict) -> None:
    ov = report.get("overhead")
    if ov:
        print(f"\noverhead: platform (synthetic engine) vs bare server, {ov['chunks']} SSE chunks a request; "
              f"load average {report['loadavg_start']} at start")
        print(f"{'path':<13} {'platform':<15} {'clients':>7} {'req/s plat':>10} {'req/s bare':>10} {'ratio':>6} "
              f"{'TTFT p50 plat/bare ms':>22} {'TTFT p99 plat/bare ms':>22} {'platform CPU ms/req':>20} {'auth':>6} "
              f"{'conv':>6}")
        for path, rows in ov["paths"].items():
            for r in rows:
                p, b = r["platform"], r["bare"]
                print(f"{path:<13} {r['variant']:<15} {r['clients']:>7} {p['requests_per_s']:>10} {b['requests_per_s']:>10} "
                      f"{r['throughput_ratio']:>6} {p['ttft_p50_ms']:>11} / {b['ttft_p50_ms']:<8} "
                      f"{p['ttft_p99_ms']:>11} / {b['ttft_p99_ms']:<8} {r['platform_cpu_ms_per_request']:>20} "
                      f"{p['cpu_ms_per_request'].get('auth', 0):>6} {p['cpu_ms_per_request'].get('conversation', ''):>6}")
        print("  (platform CPU: gateway + inference [+ conversation], the bare server's own for bare; auth: the auth "
              "service's CPU per request, apart; conv: the conversation service's, included; per process in the JSON. pg-: the "
              "conversation service on PostgreSQL; default: the 20 ms stream interval, tokens grouped; interval...: "
              "CHATPLANE_INFERENCE_STREAM_INTERVAL_MS set, interval0ms: every token its own message)")
    eng = report.get("real_engine")
    if eng and "error" not in eng:
        print(f"\nreal engine ({eng['max_tokens']} tokens a stream, platform ready in {eng.get('ready_seconds')} s)")
        print(f"{'streams':>7} {'platform tok/s':>14} {'direct tok/s':>13} {'ratio':>6} "
              f"{'TTFT p50 plat/direct ms':>24}")
        for n, g in eng["gateway"].items():
            d = eng["direct"].get(n) or eng["direct"].get(int(n))
            print(f"{n:>7} {g['tokens_per_s']:>14} {d['tokens_per_s']:>13} "
                  f"{g['tokens_per_s'] / d['tokens_per_s']:>6.2f} {g['ttft_p50_ms']:>12} / {d['ttft_p50_ms']}")
    elif eng:
        print(f"\nreal engine: failed: {eng['error'][-500:]}")
    ev = report.get("events") or {}
    if "throughput" in ev:
        t, lat = ev["throughput"], ev["latency"]
        print(f"\nevents ({ev['path']}): {t['events_per_s']} events/s ({t['events']} events); "
              f"commit -> applied at {lat['rate_per_s']}/s: p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms")
    elif ev:
        print(f"\nevents: {ev.get('skipped') or 'failed: ' + ev.get('error', '')[-500:]}")
    if report.get("fleet"):
        print_fleet(report["fleet"])
    wb = report.get("web") or {}
    if "bundle" in wb:
        import web as web_bench

        web_bench.print_table(wb)
    elif wb:
        print(f"\nweb app: failed: {wb['error'][-500:]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 32, 128])
    parser.add_argument("--paths", nargs="+", default=["chat", "conversation"], choices=["chat", "conversation"])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the request counts")
    parser.add_argument("--deadline", type=float, default=30.0, help="seconds at most for one measured run")
    parser.add_argument("--skip-engine", action="store_true", help="skip the real-engine section")
    parser.add_argument("--engine-timeout", type=float, default=360.0)
    parser.add_argument("--skip-events", action="store_true", help="skip the events section")
    parser.add_argument("--events-timeout", type=float, default=180.0)
    parser.add_argument("--skip-web", action="store_true", help="skip the web app section (bundle size, first paint)")
    parser.add_argument("--skip-fleet", action="store_true", help="skip the inference fleet section")
    parser.add_argument("--fleet-timeout", type=float, default=1500.0)
    parser.add_argument("--stream-interval-ms", type=float, default=0.0,
                        help="also measure the platform with this inference stream interval (0: every token its own "
                        "message; the default setting is 20); negative: skip that run")
    parser.add_argument("--databases", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"],
                        help="the conversation service's database in the conversation path's runs")
    parser.add_argument("--pg-dsn", default="postgresql://postgres@127.0.0.1:5432/test",
                        help="PostgreSQL server (and a database to connect to) where the run's database is made")
    parser.add_argument("--env", nargs="*", default=[], help="KEY=VALUE settings for the platform's services")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args()

    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())  # the load generator's loop
    started = time.perf_counter()
    report: dict = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "loadavg_start": loadavg(),
        "client": "benchmarks/loadgen.py (raw asyncio HTTP/1.1, uvloop, one keep-alive connection per client)",
    }
    print(f"overhead section (load average {report['loadavg_start']})", flush=True)
    overhead(args, report)
    if args.skip_engine:
        report["real_engine"] = None
    else:
        print("real engine section (benchmarks/throughput.py) ...", flush=True)
        real_engine(args, report)
    if args.skip_events:
        report["events"] = None
    else:
        events(args, report)
    if args.skip_fleet:
        report["fleet"] = None
    else:
        fleet(args, report)
    if args.skip_web:
        report["web"] = None
    else:
        web(args, report)
    report["loadavg_end"] = loadavg()
    report["seconds"] = round(time.perf_counter() - started, 1)
    print_tables(report)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"\n{report['seconds']} s; load average {report['loadavg_end']} at the end; JSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
