"""``make podman-up`` / ``make podman-down``: the Helm chart's workloads run as podman pods, from our images.

No kube-apiserver, scheduler or kubelet can run here, but containers can. This tool plays the part of Helm and the
kubelet, driven by the chart itself: it renders the chart offline (Helm's own library, helm-python-sdk) with the
chart's values plus deploy/podman/values.yaml, then
- runs the pre-install hook Jobs first, in weight order, each to completion (backoffLimit retries);
- runs every Deployment and StatefulSet replica as a pod through ``podman kube play`` (image, command, args,
  environment with Secret and ConfigMap references and $(VAR) expansion resolved, volumes, user, read-only root
  filesystem, capabilities, resources, restart policy), StatefulSet claims as podman volumes;
- puts every pod on one podman network where each Service's name (short and FQDN) resolves to the pods it selects
  (network aliases: a headless Service's name returns every pod, as its DNS does);
- starts the workloads in tiers (a workload comes after the Services its environment names), and before the next
  tier polls each container's startup and readiness probes (grpc, httpGet, tcpSocket, exec) from the host against the
  pod's address with the probe's period, timeout and failure threshold, as the kubelet would;
- publishes the gateway's port on 127.0.0.1 and prints its URL.

What it does not do (Kubernetes' own machinery): scheduling, NetworkPolicy enforcement, autoscalers (HPA, KEDA),
PodDisruptionBudgets, Ingress, ServiceAccount tokens, liveness restarts (a container that exits is restarted by its
restart policy). Those objects are rendered and listed, not executed.

    python deploy/podman/podman_up.py up [--port PORT] [--values FILE ...] [--keep-on-failure]
    python deploy/podman/podman_up.py down
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "chatplane"
HERE = Path(__file__).resolve().parent
LOCAL_VALUES = HERE / "values.yaml"
STANDINS = HERE / "standins"
STANDIN_PREFIX = "localhost/chatplane-standin/"
RELEASE = NAMESPACE = NETWORK = "chatplane"
LABEL = "chatplane.dev/podman-up"  # on every pod, volume and network this tool makes: what `down` removes
STATE = REPO / "data" / "podman-up.json"  # what podman makes without our label (ConfigMap volumes), for `down`
MEMORY_VOLUMES = "chatplane.dev/podman-up-memory-volumes"
SPEC = "chatplane.dev/podman-up-spec"  # pod annotation: a digest of the manifest it was started from
WORKLOAD = "chatplane.dev/podman-up-workload"  # pod label: the Deployment, StatefulSet or Job it belongs to  # pod annotation: its tmpfs volumes and their sizes
CLUSTER_DOMAIN = "svc.cluster.local"
# Kinds the tool runs, and those it renders but cannot execute here.
RUNS = {"Deployment", "StatefulSet", "Job"}
DATA = {"Secret", "ConfigMap", "Service", "ServiceAccount", "PersistentVolumeClaim"}


class UpError(Exception):
    """What went wrong, in one message for the user."""


def log(message: str) -> None:
    print(f"podman-up: {message}", file=sys.stderr, flush=True)


def podman(*args: str, input: str | None = None, check: bool = True, timeout: float = 600) -> str:
    result = subprocess.run(
        ["podman", *args], input=input, capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise UpError(f"podman {' '.join(args[:3])} ...: {result.stderr.strip()[-2000:]}")
    return result.stdout


# --- rendering -------------------------------------------------------------------------------------------------------


def deep_merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{k: deep_merge(base.get(k), v) if k in base else v for k, v in over.items()}}
    return over


def render(values_files: Iterable[Path], overrides: dict[str, Any], upgrade: bool = False) -> list[dict[str, Any]]:
    """The chart's objects for an install (or an upgrade), in Helm's file order."""
    import helm_python

    values: dict[str, Any] = {}
    for path in values_files:
        values = deep_merge(values, yaml.safe_load(path.read_text()) or {})
    values = deep_merge(values, overrides)
    chart = helm_python.Chart.load(CHART)
    try:
        manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=not upgrade, is_upgrade=upgrade)
    finally:
        chart.close()
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith((".yaml", ".yml")):
            objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


# --- what Kubernetes would resolve: Secrets, ConfigMaps, $(VAR) ------------------------------------------------------

_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: a defined variable is replaced, an undefined one kept, `$$` is a `$`."""
    def one(m: re.Match) -> str:
        if m[0] == "$$":
            return "$"
        return env.get(m[1], m[0])

    return _VAR.sub(one, text)


@dataclass
class Objects:
    all: list[dict[str, Any]]
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)
    configmaps: dict[str, dict[str, Any]] = field(default_factory=dict)
    services: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def of(cls, objects: list[dict[str, Any]]) -> Objects:
        found = cls(objects)
        for obj in objects:
            kind, name = obj["kind"], obj["metadata"]["name"]
            if kind == "Secret":
                data = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
                data.update(obj.get("stringData") or {})
                found.secrets[name] = data
            elif kind == "ConfigMap":
                found.configmaps[name] = obj
            elif kind == "Service":
                found.services.append(obj)
        return found

    def secret(self, name: str, key: str, where: str) -> str:
        if name not in self.secrets:
            raise UpError(f"{where}: Secret {name} is not rendered by the chart (the values name an existing one; "
                          "podman-up has no cluster to read it from)")
        return self.secrets[name][key]

    def env_of(self, container: dict[str, Any], where: str) -> dict[str, str]:
        env: dict[str, str] = {}
        for item in container.get("env", []):
            source = item.get("valueFrom")
            if source is None:
                env[item["name"]] = expand(str(item.get("value", "")), env)
            elif "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                env[item["name"]] = self.secret(ref["name"], ref["key"], where)
            elif "configMapKeyRef" in source:
                ref = source["configMapKeyRef"]
                env[item["name"]] = self.configmaps[ref["name"]]["data"][ref["key"]]
            else:
                raise UpError(f"{where}: env {item['name']}: {list(source)} cannot be resolved without a cluster")
        return env

    def services_selecting(self, labels: dict[str, str]) -> list[str]:
        return [
            s["metadata"]["name"] for s in self.services
            if s["spec"].get("selector") and s["spec"]["selector"].items() <= labels.items()
        ]


# --- workloads ---------------------------------------------------------------------------------------------------------


@dataclass
class Workload:
    obj: dict[str, Any]
    services: list[str]
    needs: set[str] = field(default_factory=set)  # Services its environment names
    pods: list[str] = field(default_factory=list)  # its pods once started

    @property
    def kind(self) -> str:
        return self.obj["kind"]

    @property
    def name(self) -> str:
        return self.obj["metadata"]["name"]

    @property
    def template(self) -> dict[str, Any]:
        return self.obj["spec"]["template"]

    @property
    def replicas(self) -> int:
        if self.kind == "Job":
            return 1
        # An autoscaled Deployment has no replicas: its autoscaler's minimum, which podman has none of, is 1 here.
        return int(self.obj["spec"].get("replicas", 1))

    def pod_names(self, revision: str = "") -> list[str]:
        """A Job's pod, a StatefulSet's pods by ordinal, a Deployment's by revision (its pod template's digest,
        as a ReplicaSet's pod-template-hash) and index."""
        if self.kind == "Job":
            return [self.name]
        if self.kind == "StatefulSet":
            return [f"{self.name}-{i}" for i in range(self.replicas)]
        return [f"{self.name}-{revision}-{i}" for i in range(self.replicas)]

    @property
    def recreate(self) -> bool:
        return (self.obj["spec"].get("strategy") or {}).get("type") == "Recreate"

    @property
    def hook(self) -> tuple[list[str], int] | None:
        annotations = self.obj["metadata"].get("annotations") or {}
        if "helm.sh/hook" not in annotations:
            return None
        return annotations["helm.sh/hook"].split(","), int(annotations.get("helm.sh/hook-weight", "0"))


def service_names_in(text: str, services: list[str]) -> set[str]:
    return {s for s in services if re.search(rf"(?<![\w-]){re.escape(s)}(?![\w-])", text)}


def workloads_of(objects: Objects) -> list[Workload]:
    names = [s["metadata"]["name"] for s in objects.services]
    found = []
    for obj in objects.all:
        if obj["kind"] not in RUNS:
            continue
        labels = obj["spec"]["template"]["metadata"].get("labels", {})
        workload = Workload(obj, objects.services_selecting(labels))
        text = json.dumps([c.get("env", []) + c.get("args", []) + c.get("command", [])
                           for c in obj["spec"]["template"]["spec"]["containers"]])
        workload.needs = service_names_in(text, names) - set(workload.services)
        found.append(workload)
    return found


def tiers(workloads: list[Workload]) -> list[list[Workload]]:
    """Workloads in start order: each after the workloads behind the Services it names."""
    provider = {service: w.name for w in workloads for service in w.services}
    after = {w.name: {provider[s] for s in w.needs if s in provider} - {w.name} for w in workloads}
    left = {w.name: w for w in workloads}
    ordered = []
    while left:
        ready = [w for name, w in left.items() if not after[name] & left.keys()]
        if not ready:
            raise UpError(f"the workloads name each other's Services in a cycle: {sorted(left)}")
        ordered.append(sorted(ready, key=lambda w: w.name))
        for w in ready:
            del left[w.name]
    return ordered


# --- pods --------------------------------------------------------------------------------------------------------------

POD_FIELDS = {"securityContext", "restartPolicy", "volumes", "containers", "initContainers", "hostname"}
CONTAINER_FIELDS = {"name", "image", "imagePullPolicy", "command", "args", "ports", "resources", "securityContext",
                    "volumeMounts", "workingDir", "stdin", "tty"}


def claim_volume(claim: str) -> str:
    return f"{RELEASE}-pvc-{claim}"


def pod_manifest(workload: Workload, pod_name: str, objects: Objects, publish: dict[str, int]) -> dict[str, Any]:
    """The pod a kubelet would run for one replica, as `podman kube play` takes it: the references resolved, the
    fields that need a cluster (probes, lifecycle, scheduling, ServiceAccounts) left to this tool or left out."""
    template = workload.template
    spec = {k: v for k, v in template["spec"].items() if k in POD_FIELDS}
    spec["restartPolicy"] = "Never" if workload.kind == "Job" else "Always"
    containers = []
    for container in template["spec"]["containers"]:
        where = f"{workload.kind}/{workload.name}/{container['name']}"
        env = objects.env_of(container, where)
        out = {k: v for k, v in container.items() if k in CONTAINER_FIELDS}
        out["imagePullPolicy"] = "IfNotPresent"
        out["env"] = [{"name": k, "value": v} for k, v in env.items()]
        for key in ("command", "args"):
            if key in out:
                out[key] = [expand(str(a), env) for a in out[key]]
        # Only the published port is listed: `podman kube play` (4.3) publishes every containerPort on the host's
        # same port, which a pod network never needs (containers reach each other by address) and which would clash
        # with the host's own servers (PostgreSQL's 5432, ...).
        out.pop("ports", None)
        ports = [
            {**port, "hostPort": publish[port["name"]], "hostIP": "127.0.0.1"}
            for port in container.get("ports", []) if port.get("name") in publish
        ]
        if ports:
            out["ports"] = ports
        containers.append(out)
    spec["containers"] = containers
    volumes = list(spec.get("volumes", []))
    memory_volumes: dict[str, str] = {}  # tmpfs volumes to make before the pod starts: name -> size
    if workload.kind == "StatefulSet":
        ordinal = pod_name.rsplit("-", 1)[1]
        for claim in workload.obj["spec"].get("volumeClaimTemplates", []):
            name = claim["metadata"]["name"]
            volumes.append({"name": name, "persistentVolumeClaim": {
                "claimName": claim_volume(f"{name}-{workload.name}-{ordinal}")}})
    for i, volume in enumerate(volumes):
        if "secret" in volume:
            volumes[i] = secret_volume(volume, objects, f"{workload.kind}/{workload.name}")
        elif "persistentVolumeClaim" in volume and not volume["persistentVolumeClaim"]["claimName"].startswith(
            f"{RELEASE}-pvc-"
        ):
            volume["persistentVolumeClaim"] = {"claimName": claim_volume(volume["persistentVolumeClaim"]["claimName"])}
        elif (volume.get("emptyDir") or {}).get("medium") == "Memory":
            # The kubelet's memory emptyDir is a tmpfs anyone in the pod may write (/dev/shm for vLLM's workers);
            # `podman kube play` makes it root-only: a tmpfs volume of the size limit instead.
            size = volume["emptyDir"].get("sizeLimit", "64Mi")
            name = f"{RELEASE}-mem-{pod_name}-{volume['name']}"
            volumes[i] = {"name": volume["name"], "persistentVolumeClaim": {"claimName": name}}
            memory_volumes[name] = size
    spec["volumes"] = volumes
    labels = {**template["metadata"].get("labels", {}), LABEL: RELEASE, WORKLOAD: workload.name}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod_name, "labels": labels}, "spec": spec}
    if memory_volumes:
        pod[MEMORY_VOLUMES] = memory_volumes  # for play(), which makes them and takes the key out
    return pod


def secret_volume(volume: dict[str, Any], objects: Objects, where: str) -> dict[str, Any]:
    """A Secret volume as `podman kube play` (4.3) can mount it: a ConfigMap volume of the Secret's (resolved) data,
    the `items` applied. Its files are readable by the pod's user, as the kubelet's are through fsGroup."""
    source = volume["secret"]
    name = source["secretName"]
    if name not in objects.secrets:
        raise UpError(f"{where}: Secret {name} is not rendered by the chart (the values name an existing one; "
                      "podman-up has no cluster to read it from)")
    data = objects.secrets[name]
    if source.get("items"):
        data = {item["path"]: data[item["key"]] for item in source["items"]}
    configmap = f"{RELEASE}-secret-{name}-{hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]}"
    objects.configmaps[configmap] = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": configmap},
                                     "data": data}
    return {"name": volume["name"], "configMap": {"name": configmap}}


_QUANTITY = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
             "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity_bytes(text: str) -> int:
    """A Kubernetes memory quantity (`1Gi`, `512M`, `1000`) in bytes."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kMGT]i?|Ki)?", str(text).strip())
    if not m:
        raise UpError(f"cannot read the quantity {text!r}")
    return int(float(m[1]) * _QUANTITY[m[2] or ""])


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


def aliases(workload: Workload) -> list[str]:
    found = []
    for service in workload.services:
        found += [service, f"{service}.{NAMESPACE}", f"{service}.{NAMESPACE}.svc", f"{service}.{NAMESPACE}.{CLUSTER_DOMAIN}"]
    return found


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


# --- probes, as the kubelet runs them -------------------------------------------------------------------------------


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


# --- images --------------------------------------------------------------------------------------------------------------


def image_exists(image: str) -> bool:
    return subprocess.run(["podman", "image", "exists", image], capture_output=True).returncode == 0


def ensure_images(workloads: list[Workload]) -> None:
    """Our images must have been built (`make images`); stand-ins of third-party images are built here when missing."""
    for image in sorted({c["image"] for w in workloads for c in w.template["spec"]["containers"]}):
        if image_exists(image):
            continue
        if image.startswith(STANDIN_PREFIX):
            name = image[len(STANDIN_PREFIX):].split(":")[0]
            log(f"building the stand-in {image} (deploy/podman/standins/{name}.Containerfile)")
            podman("build", "-f", str(STANDINS / f"{name}.Containerfile"), "-t", image, str(STANDINS), timeout=1800)
        else:
            raise UpError(f"image {image} is missing: run `make images` first")


# --- up and down -----------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Platform:
    url: str
    pods: dict[str, list[str]]  # workload name -> pod names
    skipped: dict[str, int]  # kinds rendered but not executed -> count
    hooks: list[str] = field(default_factory=list)  # hook Jobs run, in order
    replaced: list[str] = field(default_factory=list)  # pods started (all of them on an install)
    seconds: float = 0.0


def load_state() -> dict[str, Any]:
    return json.loads(STATE.read_text()) if STATE.exists() else {}


def save_state(state: dict[str, Any]) -> None:
    STATE.parent.mkdir(parents=True, exist_ok=True)
    STATE.touch(mode=0o600)
    STATE.write_text(json.dumps(state))


def running_spec(pod: str, container: str) -> str:
    result = subprocess.run(
        ["podman", "inspect", f"{pod}-{container}", "--format", f'{{{{index .Config.Annotations "{SPEC}"}}}}'],
        capture_output=True, text=True,
    )
    return result.stdout.strip() if result.returncode == 0 else ""


def digest(pod: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(pod, sort_keys=True).encode()).hexdigest()[:8]


def pods_of(workload: Workload) -> list[str]:
    return podman("pod", "ps", "--format", "{{.Name}}", "--filter", f"label={WORKLOAD}={workload.name}").split()


def remove_pods(pods: list[str]) -> None:
    """Remove pods and their memory volumes (emptyDir medium Memory lives and dies with its pod)."""
    if not pods:
        return
    podman("pod", "rm", "-f", "-t", "10", *pods)
    volumes = podman("volume", "ls", "-q", "--filter", f"label={LABEL}={RELEASE}").split()
    remove_volumes = [v for v in volumes if any(v.startswith(f"{RELEASE}-mem-{pod}-") for pod in pods)]
    if remove_volumes:
        podman("volume", "rm", "-f", *remove_volumes)


def roll_out(workload: Workload, objects: Objects, scratch: Path, publish: dict[str, int], upgrade: bool,
             timeout: float) -> list[str]:
    """Start a workload's pods, or on an upgrade replace those whose manifest changed, as its controller would:
    a StatefulSet's in place, one ordinal at a time; a Deployment's under a new revision, each new pod ready before
    an old one goes (maxSurge 1, maxUnavailable 0), or all old ones first with `Recreate` (also for the published
    gateway: one host port cannot be held twice). Returns the pods started."""
    current = pods_of(workload)
    started = []
    if workload.kind == "StatefulSet":
        workload.pods = workload.pod_names()
        for name in workload.pods:
            pod = pod_manifest(workload, name, objects, publish)
            spec = digest(pod)
            if name in current and running_spec(name, pod["spec"]["containers"][0]["name"]) == spec:
                continue
            pod["metadata"].setdefault("annotations", {})[SPEC] = spec
            play(workload, pod, objects, scratch)
            started.append(name)
            if upgrade:
                wait_ready([workload], timeout, only=name)
        return started
    revision = digest(pod_manifest(workload, workload.name, objects, publish))
    workload.pods = workload.pod_names(revision)
    if set(workload.pods) == set(current):
        return started
    old = sorted(set(current) - set(workload.pods))
    if workload.recreate or publish:
        remove_pods(old)
        old = []
    for name in workload.pods:
        if name in current:
            continue
        play(workload, pod_manifest(workload, name, objects, publish), objects, scratch)
        started.append(name)
        if upgrade:
            wait_ready([workload], timeout, only=name)
            if old:
                remove_pods([old.pop(0)])
    remove_pods(old)
    return started


def up(values_files: list[Path], port: int = 0, overrides: dict[str, Any] | None = None,
       ready_timeout: float = 900) -> Platform:
    """Install the release, or upgrade it when it is up (`helm upgrade --install`): the hooks of the phase first, then
    each tier's pods whose manifest changed, one replica at a time, each ready before the next."""
    if subprocess.run(["podman", "info"], capture_output=True).returncode != 0:
        raise UpError("podman does not work here: run ../shared/tools/podman-setup.sh as root first")
    upgrade = bool(podman("pod", "ps", "-q", "--filter", f"label={LABEL}={RELEASE}").strip())
    state = load_state() if upgrade else {}
    if upgrade and "secrets" not in state:
        raise UpError(f"pods of {RELEASE} run but {STATE} is gone: `make podman-down` first")
    objects = Objects.of(render(values_files, overrides or {}, upgrade))
    # What the chart's `lookup` does in a cluster: a generated Secret keeps its first value.
    objects.secrets.update(state.get("secrets", {}))
    workloads = workloads_of(objects)
    skipped: dict[str, int] = {}
    for obj in objects.all:
        if obj["kind"] not in RUNS | DATA:
            skipped[obj["kind"]] = skipped.get(obj["kind"], 0) + 1
    ensure_images(workloads)
    port = state.get("port") or port or free_port()
    save_state({**state, "secrets": objects.secrets, "port": port})
    gateway = next((w for w in workloads if w.template["metadata"]["labels"].get(
        "app.kubernetes.io/component") == "gateway"), None)
    if gateway is None:
        raise UpError("the chart rendered no gateway")
    if subprocess.run(["podman", "network", "exists", NETWORK], capture_output=True).returncode != 0:
        podman("network", "create", "--label", f"{LABEL}={RELEASE}", NETWORK)
    started = time.monotonic()
    platform = Platform(f"http://127.0.0.1:{port}", {}, skipped)
    phase = "pre-upgrade" if upgrade else "pre-install"
    with tempfile.TemporaryDirectory(prefix="podman-up-") as tmp:
        scratch = Path(tmp)
        hooks = sorted((w for w in workloads if w.hook and phase in w.hook[0]), key=lambda w: w.hook[1])
        for job in hooks:
            if job.kind == "Job":
                run_job(job, objects, scratch, timeout=600)
                platform.hooks.append(job.name)
        running = [w for w in workloads if not w.hook and w.kind != "Job"]
        for number, tier in enumerate(tiers(running), 1):
            log(f"tier {number}: " + ", ".join(f"{w.name} x{w.replicas}" for w in tier))
            for workload in tier:
                publish = {"http": port} if workload is gateway else {}
                platform.replaced += roll_out(workload, objects, scratch, publish, upgrade, ready_timeout)
            wait_ready(tier, ready_timeout)
            log(f"tier {number} ready after {time.monotonic() - started:.0f} s")
    platform.pods = {w.name: w.pods for w in running}
    wanted = {p for pods in platform.pods.values() for p in pods}
    remove_pods([pod for pod in podman("pod", "ps", "--format", "{{.Name}}", "--filter", f"label={LABEL}={RELEASE}")
                 .split() if pod not in wanted])
    platform.seconds = time.monotonic() - started
    return platform


def down() -> list[str]:
    removed = []
    pods = podman("pod", "ps", "-q", "--filter", f"label={LABEL}={RELEASE}").split()
    if pods:
        podman("pod", "rm", "-f", "-t", "10", *pods)
        removed.append(f"{len(pods)} pods")
    volumes = podman("volume", "ls", "-q", "--filter", f"label={LABEL}={RELEASE}").split()
    if STATE.exists():
        volumes += [v for v in json.loads(STATE.read_text()).get("volumes", [])
                    if subprocess.run(["podman", "volume", "exists", v], capture_output=True).returncode == 0]
        STATE.unlink()
    if volumes:
        podman("volume", "rm", "-f", *volumes)
        removed.append(f"{len(volumes)} volumes")
    if subprocess.run(["podman", "network", "exists", NETWORK], capture_output=True).returncode == 0:
        labels = json.loads(podman("network", "inspect", NETWORK))[0].get("labels") or {}
        if labels.get(LABEL) == RELEASE:
            podman("network", "rm", "-f", NETWORK)
            removed.append(f"network {NETWORK}")
    return removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("up", help="run the chart's workloads from our images (an upgrade when they run)")
    start.add_argument("--port", type=int, default=0, help="the gateway's port on 127.0.0.1 (default: a free one)")
    start.add_argument("--values", type=Path, action="append", default=[], help="more values files")
    start.add_argument("--set-image-tag", default="", help="global.imageTag (make passes IMAGE_TAG)")
    start.add_argument("--keep-on-failure", action="store_true", help="leave what started for a look")
    commands.add_parser("down", help="remove every pod, volume and the network podman-up made")
    args = parser.parse_args(argv)
    if args.command == "down":
        removed = down()
        log("removed " + (", ".join(removed) if removed else "nothing (nothing was up)"))
        return 0
    overrides = {"global": {"imageTag": args.set_image_tag}} if args.set_image_tag else {}
    try:
        platform = up([LOCAL_VALUES, *args.values], args.port, overrides)
    except (UpError, subprocess.TimeoutExpired) as exc:
        log(f"failed: {exc}")
        if not args.keep_on_failure:
            down()
        return 1
    log("not executed here (rendered only): " + ", ".join(f"{k} x{n}" for k, n in sorted(platform.skipped.items())))
    if platform.hooks:
        log("hook Jobs run: " + ", ".join(platform.hooks))
    log(f"{len(platform.replaced)} pods started in {platform.seconds:.0f} s")
    print(f"chatplane is up from its images: {platform.url}  (make podman-down stops it)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
