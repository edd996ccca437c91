"""End-to-end fixtures: the whole platform as real processes (auth, conversation, gateway on PostgreSQL, sharing the
run's one real inference engine), and helpers to get a user and an API key through the public API."""

from __future__ import annotations

import uuid
from contextlib import ExitStack
from dataclasses import dataclass

import httpx
import pytest

from chatplane.common.procs import free_port
from chatplane.common.stack import Ports, services, start_all, stop_all
from tests_support import Account, new_account

@dataclass
class Stack:
    base_url: str
    ports: Ports
    inference: str
    data_dir: str
    auth_db: str
    conversation_db: str
    kafka_bootstrap_servers: str = ""


@pytest.fixture(scope="session")
def stack(inference_server, kafka_broker, tmp_path_factory, pg_database_factory):
    data = tmp_path_factory.mktemp("stack")
    ports = Ports(gateway=free_port(), auth=free_port(), conversation=free_port(), inference=0,
                  auth_metrics=free_port(), conversation_metrics=free_port(), worker_metrics=free_port(),
                  usage_metrics=free_port())
    with ExitStack() as dbs:
        auth_db = dbs.enter_context(pg_database_factory())
        conv_db = dbs.enter_context(pg_database_factory())
        svcs = services(
            ports,
            data,
            log_dir=data,
            env={
                "CHATPLANE_AUTH_DATABASE_URL": auth_db,
                "CHATPLANE_CONVERSATION_DATABASE_URL": conv_db,
                "CHATPLANE_AUTH_CONSUMER_SESSION_TIMEOUT_MS": "6000",
                # An operator's system prompt, as a deployment would set one. Without it SmolLM2 (bfloat16 on this
                # machine's CPU) answers "What is the capital of France?" at temperature 0 with "L'Étoile, la
                # Marseillaise, ..."; with it, "The capital of France is Paris." (float32 gives Paris too, but
                # generates 4x slower here).
                "CHATPLANE_CONVERSATION_SYSTEM_PROMPT": "You are a helpful assistant.",
            },
            inference_target=inference_server,
            kafka_bootstrap_servers=kafka_broker.bootstrap_servers,
        )
        try:
            start_all(svcs, 120)
            yield Stack(f"http://127.0.0.1:{ports.gateway}", ports, inference_server, str(data), auth_db, conv_db,
                        kafka_broker.bootstrap_servers)
        finally:
            stop_all(svcs)


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
async def http(stack):
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=60) as client:
        yield client
