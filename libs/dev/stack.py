"""The whole platform on one machine: ``python -m chatplane.dev.stack`` (what ``make run`` starts).

Starts inference (``CHATPLANE_INFERENCE_REPLICAS`` replicas, default 1), auth, conversation and the gateway as child
processes on 127.0.0.1 with the embedded defaults (SQLite files under the data folder), waits until the gateway is
ready, creates a development user and API key on the first run, restarts an inference replica that dies, and stops
everything on Ctrl-C (or when another service dies). The services die with it however it dies. The test suite
starts the same services through :func:`services`.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import secrets
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chatplane.dev import devcerts
from chatplane.dev.procs import Service, check_ports_free, grpc_serving, http_ok

DEV_EMAIL = "dev@example.com"  # a reserved example domain that email validation accepts
# Every process's identity on the gRPC hops (mutual TLS; ``probe`` is the launcher's own, for health checks only).
IDENTITIES = ("gateway", "auth", "usage", "conversation", "worker", "inference", "probe")


@dataclass(frozen=True)
class Ports:
    gateway: int = 8000
    auth: int = 50051
    conversation: int = 50052
    inference: int = 50053  # replica i of N listens on inference + i
    kafka: int = 9092  # the embedded broker, when the stack starts one
    # Prometheus metrics endpoints (each on a port of its own, never a public one); see chatplane.dev.observe.
    gateway_metrics: int = 9100
    auth_metrics: int = 9101
    conversation_metrics: int = 9102
    inference_metrics: int = 9103  # the first inference replica's; replica i > 0: more_inference_metrics + i - 1
    worker_metrics: int = 9104
    usage_metrics: int = 9105
    more_inference_metrics: int = 9111

    def inference_replica(self, i: int) -> tuple[int, int]:
        """(gRPC port, metrics port) of inference replica ``i``."""
        return self.inference + i, self.inference_metrics if i == 0 else self.more_inference_metrics + i - 1


def inference_replicas_setting() -> int:
    """``CHATPLANE_INFERENCE_REPLICAS``: how many local inference replicas ``make run`` starts (default 1)."""
    raw = os.environ.get("CHATPLANE_INFERENCE_REPLICAS", "1").strip() or "1"
    if not raw.isdigit() or not 1 <= int(raw) <= 16:
        raise ValueError(f"CHATPLANE_INFERENCE_REPLICAS must be a whole number from 1 to 16, not {raw!r}")
    return int(raw)


def services(
    ports: Ports,
    data_dir: Path,
    *,
    log_dir: Path | None = None,
    env: dict[str, str] | None = None,
    inference_target: str | None = None,
    kafka_bootstrap_servers: str | None = None,
    inference_replicas: int = 1,
    tls_dir: Path | None = None,
) -> list[Service]:
    """The platform's services wired to each other. ``inference_target`` reuses inference servers started elsewhere
    (the tests share one engine; any ``CHATPLANE_INFERENCE_POOLS`` value) instead of starting
    ``inference_replicas`` of them, each its own process, port and metrics port, restarted when it dies.
    ``kafka_bootstrap_servers`` uses brokers running elsewhere ("" disables events); None starts the embedded broker
    (Tansu) on ``ports.kafka``. Every gRPC hop is mutual TLS with certificates of a development CA under ``tls_dir``
    (default ``data_dir/tls``), made on first use."""
    from chatplane.dev.broker import BrokerProcess

    def log(name: str) -> Path | None:
        return log_dir / f"{name}.log" if log_dir else None

    broker = None
    if kafka_bootstrap_servers is None:
        broker = BrokerProcess(ports.kafka, log("kafka"))
        kafka_bootstrap_servers = broker.bootstrap_servers
    common = {
        "CHATPLANE_DATA_DIR": str(data_dir),
        "CHATPLANE_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap_servers,
        **(env or {}),
    }
    replicas = [] if inference_target is not None else [ports.inference_replica(i) for i in range(inference_replicas)]
    inference = inference_target or ",".join(f"127.0.0.1:{port}" for port, _ in replicas)
    common["CHATPLANE_INFERENCE_POOLS"] = inference  # every caller of inference: gateway, conversation, worker
    certs = devcerts.ensure(tls_dir or data_dir / "tls", IDENTITIES)

    def tls(identity: str) -> dict[str, str]:
        return devcerts.env(certs, identity)

    def serving(port: int) -> Callable[[], bool]:
        return functools.partial(grpc_serving, f"127.0.0.1:{port}", tls=tls("probe"))

    out: list[Service] = [broker] if broker is not None else []
    for i, (port, metrics_port) in enumerate(replicas):
        name = "inference" if len(replicas) == 1 else f"inference-{i}"
        out.append(
            Service(
                name,
                "chatplane.inference",
                {
                    **common,
                    **tls("inference"),
                    "CHATPLANE_INFERENCE_PORT": str(port),
                    "CHATPLANE_INFERENCE_METRICS_PORT": str(metrics_port),
                },
                serving(port),
                log(name),
                restart=True,  # a replica that dies comes back; the others carry the load meanwhile
                ports={"gRPC": port, "metrics": metrics_port},
            )
        )
    out += [
        Service(
            "auth",
            "chatplane.auth",
            {**common, **tls("auth"), "CHATPLANE_AUTH_PORT": str(ports.auth),
             "CHATPLANE_AUTH_METRICS_PORT": str(ports.auth_metrics)},
            serving(ports.auth),
            log("auth"),
            ports={"gRPC": ports.auth, "metrics": ports.auth_metrics},
        ),
    ]
    if kafka_bootstrap_servers:
        # Builds the per-user, per-key daily usage from the completion events (into auth's database).
        out.append(
            Service(
                "usage",
                "chatplane.auth",
                {**common, **tls("usage"), "CHATPLANE_AUTH_CONSUMER_METRICS_PORT": str(ports.usage_metrics)},
                lambda: True,
                log("usage"),
                args=("consume-usage",),
                ports={"metrics": ports.usage_metrics},
            )
        )
    out += [
        Service(
            "conversation",
            "chatplane.conversation",
            {
                **common,
                **tls("conversation"),
                "CHATPLANE_CONVERSATION_PORT": str(ports.conversation),
                "CHATPLANE_CONVERSATION_METRICS_PORT": str(ports.conversation_metrics),
            },
            serving(ports.conversation),
            log("conversation"),
            ports={"gRPC": ports.conversation, "metrics": ports.conversation_metrics},
        ),
        # The conversation jobs (titles, exports, retention). Embedded default broker: a SQLite file in data_dir.
        Service(
            "worker",
            "chatplane.conversation",
            {**common, **tls("worker"), "CHATPLANE_CONVERSATION_WORKER_METRICS_PORT": str(ports.worker_metrics)},
            lambda: True,  # no port; it appears in the logs and its exit stops `make run`
            log("worker"),
            args=("worker",),
            ports={"metrics": ports.worker_metrics},
        ),
        Service(
            "gateway",
            "chatplane.gateway",
            {
                **common,
                **tls("gateway"),
                "CHATPLANE_GATEWAY_PORT": str(ports.gateway),
                "CHATPLANE_GATEWAY_METRICS_PORT": str(ports.gateway_metrics),
                "CHATPLANE_GATEWAY_AUTH_TARGET": f"127.0.0.1:{ports.auth}",
                "CHATPLANE_GATEWAY_CONVERSATION_TARGET": f"127.0.0.1:{ports.conversation}",
            },
            lambda: http_ok(f"http://127.0.0.1:{ports.gateway}/readyz"),
            log("gateway"),
            ports={"HTTP": ports.gateway, "metrics": ports.gateway_metrics},
        ),
    ]
    return out


def start_all(svcs: list[Service], timeout: float) -> None:
    """Start every service, then wait until each is ready. A port already taken is reported (by number, with the
    process holding it) before anything starts."""
    check_ports_free({f"{svc.name} {kind}": port for svc in svcs for kind, port in svc.ports.items()})
    for svc in svcs:
        svc.start()
    deadline = time.monotonic() + timeout
    for svc in svcs:
        svc.wait_ready(max(1.0, deadline - time.monotonic()))


def stop_all(svcs: list[Service]) -> None:
    for svc in reversed(svcs):
        svc.stop()


RESTART_FIRST_SECONDS = 1.0  # a restarted service's first wait, doubled on each quick death up to the next figure
RESTART_MAX_SECONDS = 30.0
RESTART_RESET_SECONDS = 60.0  # a service that ran this long starts again from the first wait


def supervise(svcs: list[Service], stop_when: Callable[[], bool] = lambda: False) -> str:
    """Watch the services until one that may not be restarted exits (returns why) or ``stop_when()``. Services
    with ``restart`` (inference replicas) are started again with backoff; the platform goes on meanwhile."""
    due: dict[str, float] = {}
    delay: dict[str, float] = {}
    while not stop_when():
        now = time.monotonic()
        for svc in svcs:
            if svc.proc is None or svc.proc.poll() is None:
                continue
            if not svc.restart:
                return f"{svc.name} exited with {svc.proc.returncode}"
            if svc.name not in due:
                ran = now - svc.started_at
                wait = RESTART_FIRST_SECONDS if ran >= RESTART_RESET_SECONDS else min(
                    delay.get(svc.name, RESTART_FIRST_SECONDS / 2) * 2, RESTART_MAX_SECONDS)
                delay[svc.name] = wait
                due[svc.name] = now + wait
                print(f"{svc.name} exited with {svc.proc.returncode}; restarting in {wait:.1f}s", file=sys.stderr,
                      flush=True)
            elif now >= due[svc.name]:
                del due[svc.name]
                svc.start()
        time.sleep(0.2)
    return "stopped"


def _post(url: str, body: dict, token: str | None = None) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback only
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"POST {url}: {e.code} {e.read().decode(errors='replace')}") from None


def dev_api_key(base_url: str, data_dir: Path) -> str:
    """A development user and API key, made on the first run and kept (mode 0600) in the data folder."""
    path = data_dir / "dev-credentials.json"
    if path.exists():
        creds = json.loads(path.read_text())
        return creds["api_key"]
    password = secrets.token_urlsafe(18)
    _post(f"{base_url}/v1/auth/signup", {"email": DEV_EMAIL, "password": password})
    token = _post(f"{base_url}/v1/auth/login", {"email": DEV_EMAIL, "password": password})["access_token"]
    key = _post(f"{base_url}/v1/api-keys", {"name": "make run"}, token)["key"]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"email": DEV_EMAIL, "password": password, "api_key": key}, f)
    return key


def usage_text(base_url: str, key: str, model: str) -> str:
    return f"""
chatplane is ready at {base_url}   (API docs: {base_url}/docs)
Development API key (also in data/dev-credentials.json): {key}

curl {base_url}/v1/chat/completions \\
  -H "Authorization: Bearer {key}" -H "Content-Type: application/json" \\
  -d '{{"model": "{model}", "messages": [{{"role": "system", "content": "You are a helpful assistant."}}, {{"role": "user", "content": "What is the capital of France?"}}]}}'

python - <<'PY'
from openai import OpenAI
client = OpenAI(base_url="{base_url}/v1", api_key="{key}")
reply = client.chat.completions.create(
    model="{model}", messages=[{{"role": "system", "content": "You are a helpful assistant."}},
              {{"role": "user", "content": "What is the capital of France?"}}])
print(reply.choices[0].message.content)
PY

Press Ctrl-C to stop.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the whole platform on this machine.")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("CHATPLANE_DATA_DIR", "data")))
    parser.add_argument("--port", type=int, default=8000, help="the gateway's HTTP port")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for readiness")
    args = parser.parse_args(argv)

    data_dir = args.data_dir.resolve()
    log_dir = data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    ports = Ports(gateway=args.port)
    try:
        replicas = inference_replicas_setting()
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    # CHATPLANE_KAFKA_BOOTSTRAP_SERVERS set: use those brokers ("" disables events); unset: the embedded broker.
    svcs = services(ports, data_dir, log_dir=log_dir, inference_replicas=replicas,
                    kafka_bootstrap_servers=os.environ.get("CHATPLANE_KAFKA_BOOTSTRAP_SERVERS"))
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    started = time.monotonic()
    try:
        print(f"starting {', '.join(s.name for s in svcs)} (logs in {log_dir}) ...", flush=True)
        start_all(svcs, args.timeout)
        ready_s = time.monotonic() - started
        base_url = f"http://127.0.0.1:{ports.gateway}"
        key = dev_api_key(base_url, data_dir)
        with urllib.request.urlopen(  # noqa: S310 - loopback only
            urllib.request.Request(f"{base_url}/v1/models", headers={"authorization": f"Bearer {key}"}), timeout=10
        ) as resp:
            model = json.loads(resp.read())["data"][0]["id"]
        print(f"ready in {ready_s:.1f}s", flush=True)
        print(usage_text(base_url, key, model), flush=True)
        why = supervise(svcs)
        print(f"stopped: {why} (see {log_dir})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
        return 0
    except (RuntimeError, TimeoutError) as e:
        print(f"failed to start: {e}", file=sys.stderr)
        return 1
    finally:
        stop_all(svcs)


if __name__ == "__main__":
    sys.exit(main())
