"""Child processes and ports on this machine: start a service (``python -m <module>``) that dies with its launcher,
wait until it is ready (:func:`grpc_serving`, :func:`http_ok`), find free ports and name who holds a taken one.

Used by the launcher of ``make run`` (:mod:`chatplane.dev.stack`), the embedded broker (:mod:`chatplane.dev.broker`),
the test fixtures and the benchmarks, so that all of them start the platform the same way: real processes, real
ports on 127.0.0.1.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

PR_SET_PDEATHSIG = 1


@functools.cache
def _setpriv() -> str | None:
    """util-linux's setpriv when it can set the parent-death signal (2.33 and later): it sets it and execs the
    command, so nothing of Python runs in the forked child. (Unlike the fallback it cannot tell whether the launcher
    died in the instant before: a window of microseconds.)"""
    path = shutil.which("setpriv")
    if path is None:
        return None
    usage = subprocess.run([path, "--help"], capture_output=True, text=True, check=False).stdout  # noqa: S603
    return path if "--pdeathsig" in usage else None


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _die_with_parent(libc: ctypes.CDLL) -> None:
    """In the child, before exec (only without setpriv): the kernel sends SIGTERM when the launching process dies.
    Python in a forked child of a process with threads (gRPC's) is fragile, so this does the least: libc was loaded
    in the parent."""
    parent = os.getppid()
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the line above: nobody would send the signal
        os.kill(os.getpid(), signal.SIGTERM)


def popen(argv: list[str], **kwargs) -> subprocess.Popen:
    """Start a child in its own session (Ctrl-C reaches only the launcher) that dies with its launcher, however the
    launcher dies (even SIGKILL), so that no service outlives ``make run`` or a test run holding its ports."""
    if not sys.platform.startswith("linux"):
        return subprocess.Popen(argv, start_new_session=True, **kwargs)  # noqa: S603
    setpriv = _setpriv()
    if setpriv is not None:
        return subprocess.Popen([setpriv, "--pdeathsig", "TERM", "--", *argv], start_new_session=True,  # noqa: S603
                                **kwargs)
    preexec = functools.partial(_die_with_parent, _libc())  # libc loaded here, in the parent
    return subprocess.Popen(argv, start_new_session=True, preexec_fn=preexec, **kwargs)  # noqa: S603, PLW1509


def listeners(port: int) -> list[str]:
    """Who listens on TCP ``port`` on this machine, as "pid NNN (command line)" when /proc shows it, else
    "another process" (a process of another user, or outside /proc's view)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    found: list[str] = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            fds = list((proc / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                found.append(f"pid {proc.name} ({cmd[:120]})")
                break
    return found or (["another process"] if inodes else [])


def port_taken(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def check_ports_free(ports: dict[str, int]) -> None:
    """Raise RuntimeError naming every port (and what holds it) that is already taken."""
    taken = []
    for name, port in ports.items():
        if port and port_taken(port):
            holders = listeners(port)
            taken.append(f"port {port} ({name}) is already in use" + (f" by {', '.join(holders)}" if holders else ""))
    if taken:
        raise RuntimeError("; ".join(taken) + ". Stop that process, or choose other ports.")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def grpc_serving(address: str, timeout: float = 2.0, tls: dict[str, str] | None = None) -> bool:
    """The standard health service at ``address`` answers SERVING (over mutual TLS with the CHATPLANE_TLS_* files
    in ``tls``, e.g. the development CA's ``probe`` certificate)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if tls:
        creds = grpc.ssl_channel_credentials(
            root_certificates=Path(tls["CHATPLANE_TLS_CA_FILE"]).read_bytes(),
            private_key=Path(tls["CHATPLANE_TLS_KEY_FILE"]).read_bytes(),
            certificate_chain=Path(tls["CHATPLANE_TLS_CERT_FILE"]).read_bytes(),
        )
        chan_cm = grpc.secure_channel(address, creds)
    else:
        chan_cm = grpc.insecure_channel(address)
    with chan_cm as chan:
        try:
            reply = health_pb2_grpc.HealthStub(chan).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def http_ok(url: str, timeout: float = 2.0) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback only
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class Service:
    name: str
    module: str
    env: dict[str, str]
    ready: Callable[[], bool]
    log_path: Path | None = None
    args: tuple[str, ...] = ()  # after ``python -m module``
    restart: bool = False  # a launcher restarts it when it dies instead of stopping everything
    ports: dict[str, int] = field(default_factory=dict)  # what it listens on, checked free before it starts
    proc: subprocess.Popen | None = field(default=None, repr=False)
    started_at: float = 0.0

    def start(self) -> None:
        self.started_at = time.monotonic()
        env = {**os.environ, **self.env}
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.proc = popen(
                [sys.executable, "-m", self.module, *self.args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT if self.log_path else None,
            )
        finally:
            if self.log_path:
                out.close()  # the child holds its own descriptor

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}" + self._log_tail())
            if self.ready():
                return
            time.sleep(0.25)
        raise TimeoutError(f"{self.name} not ready after {timeout:.0f}s" + self._log_tail())

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait()

    def _log_tail(self) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        return "\n--- last log lines ---\n" + "\n".join(self.log_path.read_text(errors="replace").splitlines()[-40:])
