"""End-to-end fixtures: the whole platform as real processes (auth, conversation, gateway on PostgreSQL, sharing the
run's one real inference engine), and helpers to get a user and an API key through the public API."""

from __future__ import annotations

import os
import uuid
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from chatplane.dev.procs import Service, free_port, http_ok
from chatplane.dev.stack import Ports, services, start_all, stop_all
from tests_support import Account, new_account

REDIS_URL = os.environ.get("CHATPLANE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# The shared stack's gateway: limits that the many accounts and wrong passwords of the tests never reach (tests of
# the limits start gateway replicas of their own with lower ones).
GENEROUS_LIMITS = {
    "CHATPLANE_GATEWAY_SIGNUPS_PER_HOUR_PER_ADDRESS": "100000",
    "CHATPLANE_GATEWAY_LOGIN_ATTEMPTS_PER_MINUTE_PER_ADDRESS": "100000",
    "CHATPLANE_GATEWAY_LOGIN_ATTEMPTS_PER_MINUTE_PER_ACCOUNT": "1000",
}

@dataclass
class Stack:
    base_url: str
    ports: Ports
    inference: str
    data_dir: str
    auth_db: str
    conversation_db: str
    kafka_bootstrap_servers: str = ""
    redis_key_prefix: str = ""
    gateway_env: dict[str, str] = field(default_factory=dict)  # what a replica of the stack's gateway is started with
    services: list[Service] = field(default_factory=list)  # the stack's processes (a test may stop one for a while)

    def service(self, name: str) -> Service:
        return next(s for s in self.services if s.name == name)


@pytest.fixture(scope="session")
def stack(inference_server, kafka_broker, tmp_path_factory, pg_database_factory, dev_certs):
    data = tmp_path_factory.mktemp("stack")
    ports = Ports(gateway=free_port(), gateway_metrics=free_port(), auth=free_port(), conversation=free_port(),
                  inference=0,
                  auth_metrics=free_port(), conversation_metrics=free_port(), worker_metrics=free_port(),
                  usage_metrics=free_port())
    prefix = f"cp-e2e-{uuid.uuid4().hex[:12]}:"
    with ExitStack() as dbs:
        auth_db = dbs.enter_context(pg_database_factory())
        conv_db = dbs.enter_context(pg_database_factory())
        env = {
            "CHATPLANE_AUTH_DATABASE_URL": auth_db,
            "CHATPLANE_CONVERSATION_DATABASE_URL": conv_db,
            "CHATPLANE_AUTH_CONSUMER_SESSION_TIMEOUT_MS": "6000",
            "CHATPLANE_AUTH_MAX_API_KEYS_PER_USER": "10",
            "CHATPLANE_CONVERSATION_EXPORT_TTL_SECONDS": "20",  # long enough to fetch one, short enough to see it go
            "CHATPLANE_GATEWAY_REDIS_URL": REDIS_URL,
            "CHATPLANE_GATEWAY_REDIS_KEY_PREFIX": prefix,
            **GENEROUS_LIMITS,
        }
        svcs = services(
            ports,
            data,
            log_dir=data,
            env=env,
            inference_target=inference_server,
            kafka_bootstrap_servers=kafka_broker.bootstrap_servers,
            tls_dir=dev_certs,
        )
        gateway_env = {**env, **next(s for s in svcs if s.name == "gateway").env}
        try:
            start_all(svcs, 120)
            yield Stack(f"http://127.0.0.1:{ports.gateway}", ports, inference_server, str(data), auth_db, conv_db,
                        kafka_broker.bootstrap_servers, prefix, gateway_env, svcs)
        finally:
            stop_all(svcs)


@pytest.fixture
def gateway_replica(stack, tmp_path):
    """``with gateway_replica(**env) as url:`` another gateway process in front of the stack's services (the same
    Redis prefix unless ``CHATPLANE_GATEWAY_REDIS_KEY_PREFIX`` is given; a data folder, so a spool, of its own unless
    ``CHATPLANE_DATA_DIR`` is given), ready once ``ready_path`` answers 200, stopped at the end of the block."""

    @contextmanager
    def start(ready_path: str = "/readyz", **overrides: str):
        port = free_port()
        env = {**stack.gateway_env, "CHATPLANE_GATEWAY_PORT": str(port), "CHATPLANE_GATEWAY_METRICS_PORT": "0",
               "CHATPLANE_DATA_DIR": str(Path(tmp_path) / f"gateway-{port}"), **overrides}
        svc = Service("gateway-replica", "chatplane.gateway", env, lambda: http_ok(f"http://127.0.0.1:{port}{ready_path}"),
                      Path(tmp_path) / f"gateway-{port}.log")
        svc.start()
        try:
            svc.wait_ready(60)
            yield f"http://127.0.0.1:{port}"
        finally:
            svc.stop()

    return start


@pytest.fixture(scope="session")
def account(stack) -> Account:
    return new_account(stack.base_url)


@pytest.fixture(scope="session")
def other_account(stack) -> Account:
    return new_account(stack.base_url)


@pytest.fixture(scope="session")
def make_account(stack):
    """``make_account()``: a new user with an API key, for a test that needs one nobody else touches."""
    return lambda: new_account(stack.base_url)


@pytest.fixture
def fresh_account(make_account) -> Account:
    """``make_account()`` as a fixture: an account of this test's own."""
    return make_account()


@pytest.fixture
async def http(stack):
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=60) as client:
        yield client
