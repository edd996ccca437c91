"""The local launcher (``make run``): restarting a replica that dies, stopping when another service dies, services
that die with their launcher, and a port already taken named with who holds it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from chatplane.dev import stack
from chatplane.dev.procs import Service, check_ports_free, free_port


def dying(name: str, tmp_path, restart: bool) -> Service:
    """A service whose process exits with status 3 at once."""
    return Service(name, "chatplane.common.tests_dying_module_that_does_not_exist", {}, lambda: True,
                   tmp_path / f"{name}.log", restart=restart)


def test_a_restartable_service_is_started_again_with_backoff(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(stack, "RESTART_FIRST_SECONDS", 0.2)
    replica = dying("inference-1", tmp_path, restart=True)
    starts: list[float] = []
    original = replica.start

    def counted() -> None:
        starts.append(time.monotonic())
        original()

    replica.start = counted  # type: ignore[method-assign]
    replica.start()
    why = stack.supervise([replica], stop_when=lambda: len(starts) >= 4)
    assert why == "stopped"
    waits = [float(line.rsplit(" ", 1)[1].rstrip("s")) for line in capsys.readouterr().err.splitlines()]
    assert waits == [0.2, 0.4, 0.8]  # each quick death waits twice as long
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert all(gap >= wait for gap, wait in zip(gaps, waits))


def test_a_service_that_may_not_restart_stops_the_platform(tmp_path):
    keeper = Service("gateway", "http.server", {}, lambda: True, tmp_path / "gateway.log",
                     args=("--bind", "127.0.0.1", str(free_port())))
    worker = dying("worker", tmp_path, restart=False)
    keeper.start()
    worker.start()
    try:
        assert stack.supervise([keeper, worker]) == "worker exited with 1"
    finally:
        keeper.stop()


def test_services_die_with_their_launcher_however_it_dies(tmp_path):
    launcher = textwrap.dedent("""
        import sys, time
        from chatplane.dev.procs import popen
        child = popen([sys.executable, "-c", "import time; time.sleep(120)"])
        print(child.pid, flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", launcher], stdout=subprocess.PIPE, text=True)  # noqa: S603
    try:
        child = int(proc.stdout.readline())
        os.kill(child, 0)  # running
        proc.send_signal(signal.SIGKILL)  # no handler runs: only the kernel can tell the child
        proc.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                break
            with open(f"/proc/{child}/stat") as f:  # a zombie (reaped by init later) is dead too
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
            time.sleep(0.05)
        else:
            pytest.fail("the launcher's child outlived it")
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_taken_port_is_named_with_the_process_holding_it():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(RuntimeError) as err:
            check_ports_free({"gateway HTTP": port, "auth gRPC": free_port()})
    message = str(err.value)
    assert f"port {port} (gateway HTTP) is already in use by pid {os.getpid()}" in message
    assert "auth gRPC" not in message


def test_replica_ports_and_the_replicas_setting(monkeypatch):
    ports = stack.Ports()
    assert [ports.inference_replica(i) for i in range(3)] == [(50053, 9103), (50054, 9111), (50055, 9112)]
    monkeypatch.setenv("CHATPLANE_INFERENCE_REPLICAS", "3")
    assert stack.inference_replicas_setting() == 3
    svcs = stack.services(ports, stack.Path("/tmp/x"), inference_replicas=3, kafka_bootstrap_servers="")
    names = [s.name for s in svcs]
    assert names[:3] == ["inference-0", "inference-1", "inference-2"]
    assert all(s.restart for s in svcs[:3]) and not any(s.restart for s in svcs[3:])
    gateway = next(s for s in svcs if s.name == "gateway")
    assert gateway.env["CHATPLANE_INFERENCE_POOLS"] == "127.0.0.1:50053,127.0.0.1:50054,127.0.0.1:50055"
    for bad in ("0", "x", "17"):
        monkeypatch.setenv("CHATPLANE_INFERENCE_REPLICAS", bad)
        with pytest.raises(ValueError, match="CHATPLANE_INFERENCE_REPLICAS"):
            stack.inference_replicas_setting()
