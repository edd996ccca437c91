"""Observability, checked for real: a real Prometheus (Debian's package) scrapes every metrics endpoint of the test
platform while a bounded load of chat requests goes through the gateway; then every query of every dashboard panel
must return data and every alert rule must evaluate. (The rule files' promtool checks and the dashboards' shape are
tested without the platform in deploy/tests/test_observability_assets.py.)"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from chatplane.dev.observe import DASHBOARDS_DIR, Prometheus, prometheus_config, scrape_targets
from chatplane.dev.procs import free_port

pytestmark = pytest.mark.engine

# What Grafana puts in place of its variables when it runs a panel's query.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "15m", "$api_key": ".+"}


def run_installer() -> None:
    """Debian's prometheus package, installed when missing (``make test`` has bootstrap.sh do it first)."""
    subprocess.run([str(Path(__file__).resolve().parents[1] / "scripts" / "install_prometheus.sh")], check=True)


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, PromQL with Grafana's variables replaced) for every target of every panel."""
    out = []
    for path in sorted(DASHBOARDS_DIR.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"]
                for variable, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(variable, value)
                assert "$" not in expr, f"{path.name} / {panel['title']}: unknown variable in {expr}"
                out.append((path.name, panel["title"], expr))
    return out


@pytest.fixture(scope="module")
def prometheus(stack, inference_metrics_port, tmp_path_factory):
    run_installer()
    targets = scrape_targets(stack.ports, inference_metrics=inference_metrics_port)
    log = tmp_path_factory.mktemp("prometheus") / "prometheus.log"
    prom = Prometheus(prometheus_config(targets, interval="1s"), free_port(), log_path=log)
    prom.start()
    try:
        prom.wait_ready(60)
        yield prom
    finally:
        prom.stop()


def drive_load(base_url: str, account, rejected_key_id: str, rejected_key: str) -> None:
    """A bounded load: chat completions (plain and streamed), a conversation message, a client that goes away,
    an unknown model, a request over its quota."""
    client = OpenAI(base_url=f"{base_url}/v1", api_key=account.api_key, timeout=120, max_retries=0)
    model = client.models.list().data[0].id
    question = [{"role": "user", "content": "What is the capital of France?"}]
    client.chat.completions.create(model=model, messages=question, max_tokens=8)
    for _ in range(3):
        for _chunk in client.chat.completions.create(model=model, messages=question, max_tokens=12, stream=True):
            pass
    with httpx.Client(base_url=base_url, headers=account.headers, timeout=120) as http:
        conversation = http.post("/v1/conversations", json={}).json()["id"]  # untitled: a title job runs
        r = http.post(f"/v1/conversations/{conversation}/messages",
                      json={"content": "Name a color.", "stream": True, "max_tokens": 8})
        assert r.status_code == 200 and "message.done" in r.text, r.text
        r = http.post(f"/v1/conversations/{conversation}/messages", json={"content": "Another?", "max_tokens": 8})
        assert r.status_code == 201, r.text
        # A client that reads the first event and goes away.
        body = {"model": model, "messages": question, "max_tokens": 200, "stream": True}
        with http.stream("POST", "/v1/chat/completions", json=body) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    break
        assert http.post("/v1/chat/completions", json={**body, "model": "no-such-model"}).status_code == 404
    # A key with a budget of one token a day: refused with 429 insufficient_quota.
    with httpx.Client(base_url=base_url, timeout=60) as http:
        headers = {"Authorization": f"Bearer {rejected_key}"}
        r = http.put(f"/v1/quotas/api-keys/{rejected_key_id}", json={"period": "day", "token_limit": 1},
                     headers=headers)
        assert r.status_code == 200, r.text
        r = http.post("/v1/chat/completions", json={"model": model, "messages": question, "max_tokens": 8},
                      headers=headers)
        assert r.status_code == 429, r.text


def test_metrics_endpoints_show_each_service(stack, inference_metrics_port):
    targets = scrape_targets(stack.ports, inference_metrics=inference_metrics_port)
    for component, address in targets.items():
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as resp:  # noqa: S310 - loopback
            text = resp.read().decode()
        assert "# TYPE" in text, component
    with urllib.request.urlopen(f"http://{targets['inference']}/metrics", timeout=10) as resp:  # noqa: S310
        inference = resp.read().decode()
    assert re.search(r"^vllm:num_requests_waiting\{", inference, re.M), "vLLM's own metrics are exposed"
    assert re.search(r'^chatplane_inference_engine_ready\{model="[^"]+"\} 1\.0$', inference, re.M)


def fresh_key(base_url: str) -> tuple[str, str]:
    """A new user's API key (id, key): this test puts a tiny quota on it, so no shared account is used."""
    email, password = f"quota-{uuid.uuid4().hex[:10]}@example.com", "correct horse battery staple"
    with httpx.Client(base_url=base_url, timeout=30) as http:
        assert http.post("/v1/auth/signup", json={"email": email, "password": password}).status_code == 201
        token = http.post("/v1/auth/login", json={"email": email, "password": password}).json()["access_token"]
        key = http.post("/v1/api-keys", json={"name": "quota"}, headers={"Authorization": f"Bearer {token}"}).json()
    return key["id"], key["key"]


def test_every_dashboard_query_returns_data(stack, prometheus, account):
    drive_load(stack.base_url, account, *fresh_key(stack.base_url))
    queries = dashboard_queries()
    assert len(queries) > 30

    def missing() -> list[str]:
        return [f"{board} / {title}: {expr}" for board, title, expr in queries if not prometheus.query(expr)]

    # Scrapes every second; events reach the usage consumer and the title jobs run within seconds.
    deadline = time.monotonic() + 90
    empty = missing()
    while empty and time.monotonic() < deadline:
        time.sleep(2)
        empty = missing()
    assert not empty, "panels without data:\n" + "\n".join(empty)

    # Every scrape target is up and every rule evaluates without error against real data. A scrape times out after
    # a second (the interval): on a loaded machine one slow answer marks a target down until its next scrape, so a
    # target must be down for 30 s in a row to fail this.
    def down() -> set[str]:
        return {t["labels"]["job"] for t in prometheus.api("targets")["activeTargets"] if t["health"] != "up"}

    deadline = time.monotonic() + 30
    not_up = down()
    while not_up and time.monotonic() < deadline:
        time.sleep(1)
        not_up = down()
    assert not not_up, f"scrape targets down: {sorted(not_up)}"
    groups = prometheus.api("rules")["groups"]
    assert groups and all(rule["health"] == "ok" for group in groups for rule in group["rules"]), groups
    assert prometheus.query('chatplane_gateway_rejections_total{reason="insufficient_quota"}')
