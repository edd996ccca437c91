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
import hashlib
import json
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from manifests import (
    DATA, LABEL, LOCAL_VALUES, NETWORK, Objects, RELEASE, RUNS, SPEC, STANDINS, STANDIN_PREFIX, UpError,
    WORKLOAD, Workload, pod_manifest, render, tiers, workloads_of,
)
from kubelet import STATE, load_state, log, play, podman, run_job, save_state, wait_ready

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
