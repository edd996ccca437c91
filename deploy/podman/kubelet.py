"""The kubelet's part, for ``podman_up``: the podman command, a pod started with ``podman kube play`` on the network
under its Services' names, its volumes, its probes polled as the kubelet polls them, hook Jobs run to completion,
a container restarted as after a failed liveness probe; and the state file ``down`` reads.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from manifests import (
    LABEL, MEMORY_VOLUMES, NETWORK, Objects, RELEASE, REPO, UpError, Workload, aliases, pod_manifest,
    quantity_bytes,
)

STATE = REPO / "data" / "podman-up.json"  # what podman makes without our label (ConfigMap volumes), for `down`


def log(message: str) -> None:
    print(f"podman-up: {message}", file=sys.stderr, flush=True)


def podman(*args: str, input: str | None = None, check: bool = True, timeout: float = 600) -> str:
    result = subprocess.run(
        ["podman", *args], input=input, capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise UpError(f"podman {' '.join(args[:3])} ...: {result.stderr.strip()[-2000:]}")
    return result.stdout


def memory_volume(name: str, size: str, image: str) -> str:
    """A podman tmpfs volume of ``size`` that every user may write: the kubelet's memory emptyDir. A new volume
    takes the owner and mode of the folder it is first mounted on (podman's copy-up, root-only for /dev/shm), so it
    is first mounted once on a folder the image does not have."""
    if subprocess.run(["podman", "volume", "exists", name], capture_output=True).returncode != 0:
        blocks = max(1, quantity_bytes(size) // 4096)
        podman("volume", "create", "--label", f"{LABEL}={RELEASE}", "--opt", "type=tmpfs", "--opt", "device=tmpfs",
               "--opt", f"o=nr_blocks={blocks},mode=1777", name)
        podman("run", "--rm", "--network", "none", "--entrypoint", "/bin/true", "-v", f"{name}:/podman-up-new-volume",
               image)
    return name


def play(workload: Workload, pod: dict[str, Any], objects: Objects, scratch: Path) -> None:
    """Start one pod with `podman kube play` on the network, with its Services' names as aliases."""
    pod = dict(pod)
    memory = pod.pop(MEMORY_VOLUMES, {})
    names = aliases(workload)
    network = f"{NETWORK}:" + ",".join(f"alias={a}" for a in names) if names else NETWORK
    args = ["kube", "play", "--replace", "--network", network]
    for volume in pod["spec"]["volumes"]:
        if "configMap" in volume:
            name = volume["configMap"]["name"]
            path = scratch / f"configmap-{name}.yaml"
            path.write_text(yaml.safe_dump(objects.configmaps[name]))
            args += ["--configmap", str(path)]
            remember("volumes", name)  # kube play makes a volume of that name, without our label
        if "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            if claim in memory:
                memory_volume(claim, memory[claim], pod["spec"]["containers"][0]["image"])
            else:
                ensure_volume(claim)
    podman(*args, "-", input=yaml.safe_dump(pod))


def remember(kind: str, name: str) -> None:
    """Note something podman makes that cannot carry our label, for `down`."""
    state = load_state()
    if name not in state.setdefault(kind, []):
        state[kind].append(name)
        save_state(state)


def ensure_volume(name: str) -> None:
    if subprocess.run(["podman", "volume", "exists", name], capture_output=True).returncode != 0:
        podman("volume", "create", "--label", f"{LABEL}={RELEASE}", name)


def pod_ip(pod: str) -> str:
    infra = podman("pod", "inspect", pod, "--format", "{{.InfraContainerID}}").strip()
    networks = json.loads(podman("inspect", infra, "--format", "{{json .NetworkSettings.Networks}}"))
    return networks[NETWORK]["IPAddress"]


def container_state(pod: str, container: str) -> tuple[str, int, int]:
    """(status, exit code, restarts) of one container of a pod."""
    out = podman(
        "inspect", f"{pod}-{container}", "--format", "{{.State.Status}} {{.State.ExitCode}} {{.RestartCount}}"
    ).split()
    return out[0], int(out[1]), int(out[2])


def last_lines(pod: str, container: str, lines: int = 15) -> str:
    result = subprocess.run(["podman", "logs", "--tail", str(lines), f"{pod}-{container}"],
                            capture_output=True, text=True)
    return (result.stdout + result.stderr).strip()


def port_number(port: Any, container: dict[str, Any]) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for p in container.get("ports", []):
        if p.get("name") == port:
            return int(p["containerPort"])
    raise UpError(f"container {container['name']} has no port named {port}")


def probe_once(probe: dict[str, Any], ip: str, pod: str, container: dict[str, Any]) -> bool:
    timeout = float(probe.get("timeoutSeconds", 1))
    try:
        if "grpc" in probe:
            import grpc
            from grpc_health.v1 import health_pb2, health_pb2_grpc

            with grpc.insecure_channel(f"{ip}:{probe['grpc']['port']}") as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=probe["grpc"].get("service", "")), timeout=timeout
                )
            return reply.status == health_pb2.HealthCheckResponse.SERVING
        if "httpGet" in probe:
            get = probe["httpGet"]
            url = f"http://{ip}:{port_number(get['port'], container)}{get.get('path', '/')}"
            try:
                with urllib.request.urlopen(url, timeout=timeout) as reply:  # noqa: S310 - the pod's own address
                    return 200 <= reply.status < 400
            except urllib.error.HTTPError as exc:
                return 200 <= exc.code < 400
        if "tcpSocket" in probe:
            with socket.create_connection((ip, port_number(probe["tcpSocket"]["port"], container)), timeout=timeout):
                return True
        if "exec" in probe:
            result = subprocess.run(
                ["podman", "exec", f"{pod}-{container['name']}", *probe["exec"]["command"]],
                capture_output=True, timeout=timeout + 5,
            )
            return result.returncode == 0
    except Exception:  # noqa: BLE001 - any failure of a probe is a failed probe, as for the kubelet
        return False
    raise UpError(f"unknown probe {sorted(probe)}")


@dataclass
class ProbeRun:
    """One container's startup then readiness probe, stepped like the kubelet's prober."""

    pod: str
    container: dict[str, Any]
    started_at: float
    phase: str = "startup"
    failures: int = 0
    successes: int = 0
    next_at: float = 0.0

    def probe(self) -> dict[str, Any] | None:
        return self.container.get("startupProbe" if self.phase == "startup" else "readinessProbe")

    def step(self, now: float, ip: str) -> None:
        while self.phase != "ready" and self.probe() is None:
            self.phase = "readiness" if self.phase == "startup" else "ready"
        probe = self.probe()
        if probe is None or now < max(self.next_at, self.started_at + probe.get("initialDelaySeconds", 0)):
            return
        self.next_at = now + probe.get("periodSeconds", 10)
        if probe_once(probe, ip, self.pod, self.container):
            self.failures = 0
            self.successes += 1
            if self.successes >= probe.get("successThreshold", 1):
                self.phase, self.successes = ("readiness" if self.phase == "startup" else "ready"), 0
                self.next_at = 0
        else:
            self.successes = 0
            self.failures += 1
            # A startup probe that fails failureThreshold times gets the container killed; readiness keeps trying.
            if self.phase == "startup" and self.failures >= probe.get("failureThreshold", 3):
                period = probe.get("periodSeconds", 10)
                raise UpError(f"{self.pod}/{self.container['name']}: startup probe failed {self.failures} times "
                              f"({self.failures * period} s)")


CRASH_LOOP = 3  # restarts before a container counts as crash-looping (the kubelet's CrashLoopBackOff)


def wait_ready(workloads: list[Workload], timeout: float, only: str = "") -> None:
    """Until every container of the workloads' pods (or of the pod `only`) passed its startup, then readiness probe."""
    runs = [
        ProbeRun(pod, container, time.monotonic())
        for w in workloads for pod in w.pods for container in w.template["spec"]["containers"]
        if not only or pod == only
    ]
    ips: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while True:
        pending = [r for r in runs if r.phase != "ready"]
        if not pending:
            return
        now = time.monotonic()
        if now > deadline:
            raise UpError("not ready in time: " + ", ".join(f"{r.pod}/{r.container['name']} ({r.phase})" for r in pending))
        for run in pending:
            name = run.container["name"]
            status, code, restarts = container_state(run.pod, name)
            if status in ("exited", "stopped") and code != 0 or restarts >= CRASH_LOOP:
                raise UpError(f"{run.pod}/{name} {'keeps crashing' if restarts else 'exited'} (exit {code}, "
                              f"{restarts} restarts):\n{last_lines(run.pod, name)}")
            if run.pod not in ips:
                ips[run.pod] = pod_ip(run.pod)
            run.step(now, ips[run.pod])
        time.sleep(0.5)


def run_job(workload: Workload, objects: Objects, scratch: Path, timeout: float) -> None:
    """A hook Job: its pod to completion, again up to backoffLimit times, then removed (hook-succeeded)."""
    attempts = int(workload.obj["spec"].get("backoffLimit", 6)) + 1
    container = workload.template["spec"]["containers"][0]["name"]
    for attempt in range(1, attempts + 1):
        pod = pod_manifest(workload, workload.name, objects, {})
        play(workload, pod, objects, scratch)
        deadline = time.monotonic() + timeout
        while True:
            status, code, _ = container_state(workload.name, container)
            if status in ("exited", "stopped"):
                break
            if time.monotonic() > deadline:
                raise UpError(f"Job {workload.name} did not finish in {timeout:.0f} s")
            time.sleep(1)
        if code == 0:
            log(f"hook Job {workload.name} succeeded")
            podman("pod", "rm", "-f", "-t", "0", workload.name)
            return
        log(f"hook Job {workload.name} failed (exit {code}), attempt {attempt}/{attempts}:\n"
            + last_lines(workload.name, container))
        time.sleep(min(10 * attempt, 60))
    raise UpError(f"hook Job {workload.name} failed {attempts} times")


def restart_container(container: str, grace: float) -> None:
    """Restart one container as the kubelet does after a failed liveness probe: SIGTERM, `grace` seconds, SIGKILL,
    then start it again (`podman restart` gives up when a killed process lingers)."""
    subprocess.run(["podman", "stop", "-t", str(int(grace)), container], capture_output=True, timeout=grace + 120)
    deadline = time.monotonic() + 120
    while podman("inspect", container, "--format", "{{.State.Status}}").strip() not in ("exited", "stopped"):
        if time.monotonic() > deadline:
            raise UpError(f"{container} did not stop")
        time.sleep(0.5)
    podman("start", container)


def load_state() -> dict[str, Any]:
    return json.loads(STATE.read_text()) if STATE.exists() else {}


def save_state(state: dict[str, Any]) -> None:
    STATE.parent.mkdir(parents=True, exist_ok=True)
    STATE.touch(mode=0o600)
    STATE.write_text(json.dumps(state))
