"""The whole platform on one machine: ``python -m chatplane.common.stack`` (what ``make run`` starts).

Starts inference, auth, conversation and the gateway as child processes on 127.0.0.1 with the embedded defaults
(SQLite files under the data folder), waits until the gateway is ready, creates a development user and API key on
the first run, and stops everything on Ctrl-C. The test suite starts the same services through :func:`services`.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from chatplane.common.procs import Service, grpc_serving, http_ok

DEV_EMAIL = "dev@example.com"  # a reserved example domain that email validation accepts


@dataclass(frozen=True)
class Ports:
    gateway: int = 8000
    auth: int = 50051
    conversation: int = 50052
    inference: int = 50053
    kafka: int = 9092  # the embedded broker, when the stack starts one
    # Prometheus metrics endpoints (the gateway serves /metrics on its own port); see chatplane.common.observe.
    auth_metrics: int = 9101
    conversation_metrics: int = 9102
    inference_metrics: int = 9103
    worker_metrics: int = 9104
    usage_metrics: int = 9105


def services(
    ports: Ports,
    data_dir: Path,
    *,
    log_dir: Path | None = None,
    env: dict[str, str] | None = None,
    inference_target: str | None = None,
    kafka_bootstrap_servers: str | None = None,
) -> list[Service]:
    """The platform's services wired to each other. ``inference_target`` reuses an inference server started
    elsewhere (the tests share one engine) instead of starting one. ``kafka_bootstrap_servers`` uses brokers
    running elsewhere ("" disables events); None starts the embedded broker (Tansu) on ``ports.kafka``."""
    from chatplane.common.broker import BrokerProcess

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
    inference = inference_target or f"127.0.0.1:{ports.inference}"

    out: list[Service] = [broker] if broker is not None else []
    if inference_target is None:
        out.append(
            Service(
                "inference",
                "chatplane.inference",
                {
                    **common,
                    "CHATPLANE_INFERENCE_PORT": str(ports.inference),
                    "CHATPLANE_INFERENCE_METRICS_PORT": str(ports.inference_metrics),
                },
                lambda: grpc_serving(f"127.0.0.1:{ports.inference}"),
                log("inference"),
            )
        )
    out += [
        Service(
            "auth",
            "chatplane.auth",
            {**common, "CHATPLANE_AUTH_PORT": str(ports.auth), "CHATPLANE_AUTH_METRICS_PORT": str(ports.auth_metrics)},
            lambda: grpc_serving(f"127.0.0.1:{ports.auth}"),
            log("auth"),
        ),
    ]
    if kafka_bootstrap_servers:
        # Builds the per-user, per-key daily usage from the completion events (into auth's database).
        out.append(
            Service(
                "usage",
                "chatplane.auth",
                {**common, "CHATPLANE_AUTH_CONSUMER_METRICS_PORT": str(ports.usage_metrics)},
                lambda: True,
                log("usage"),
                args=("consume-usage",),
            )
        )
    out += [
        Service(
            "conversation",
            "chatplane.conversation",
            {
                **common,
                "CHATPLANE_CONVERSATION_PORT": str(ports.conversation),
                "CHATPLANE_CONVERSATION_METRICS_PORT": str(ports.conversation_metrics),
                "CHATPLANE_CONVERSATION_INFERENCE_TARGET": inference,
            },
            lambda: grpc_serving(f"127.0.0.1:{ports.conversation}"),
            log("conversation"),
        ),
        # The conversation jobs (titles, exports, retention). Embedded default broker: a SQLite file in data_dir.
        Service(
            "worker",
            "chatplane.conversation",
            {
                **common,
                "CHATPLANE_CONVERSATION_INFERENCE_TARGET": inference,
                "CHATPLANE_CONVERSATION_WORKER_METRICS_PORT": str(ports.worker_metrics),
            },
            lambda: True,  # no port; it appears in the logs and its exit stops `make run`
            log("worker"),
            args=("worker",),
        ),
        Service(
            "gateway",
            "chatplane.gateway",
            {
                **common,
                "CHATPLANE_GATEWAY_PORT": str(ports.gateway),
                "CHATPLANE_GATEWAY_AUTH_TARGET": f"127.0.0.1:{ports.auth}",
                "CHATPLANE_GATEWAY_CONVERSATION_TARGET": f"127.0.0.1:{ports.conversation}",
                "CHATPLANE_GATEWAY_INFERENCE_TARGET": inference,
            },
            lambda: http_ok(f"http://127.0.0.1:{ports.gateway}/readyz"),
            log("gateway"),
        ),
    ]
    return out


def start_all(svcs: list[Service], timeout: float) -> None:
    for svc in svcs:
        svc.start()
    deadline = time.monotonic() + timeout
    for svc in svcs:
        svc.wait_ready(max(1.0, deadline - time.monotonic()))


def stop_all(svcs: list[Service]) -> None:
    for svc in reversed(svcs):
        svc.stop()


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
  -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "What is the capital of France?"}}]}}'

python - <<'PY'
from openai import OpenAI
client = OpenAI(base_url="{base_url}/v1", api_key="{key}")
reply = client.chat.completions.create(
    model="{model}", messages=[{{"role": "user", "content": "What is the capital of France?"}}])
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
    # CHATPLANE_KAFKA_BOOTSTRAP_SERVERS set: use those brokers ("" disables events); unset: the embedded broker.
    svcs = services(ports, data_dir, log_dir=log_dir,
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
        while all(s.proc and s.proc.poll() is None for s in svcs):
            time.sleep(1)
        dead = [s.name for s in svcs if s.proc and s.proc.poll() is not None]
        print(f"stopped: {', '.join(dead)} exited (see {log_dir})", file=sys.stderr)
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
