"""What the chart asks for, resolved as Kubernetes would, for ``podman_up``: the chart rendered offline with the
local values, Secrets, ConfigMaps and $(VAR) references resolved, the workloads and the order of their tiers, and
each replica's pod manifest for ``podman kube play``. Nothing here runs podman.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
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
MEMORY_VOLUMES = "chatplane.dev/podman-up-memory-volumes"  # pod annotation: its tmpfs volumes and their sizes
SPEC = "chatplane.dev/podman-up-spec"  # pod annotation: a digest of the manifest it was started from
WORKLOAD = "chatplane.dev/podman-up-workload"  # pod label: the Deployment, StatefulSet or Job it belongs to
CLUSTER_DOMAIN = "svc.cluster.local"


# Kinds the tool runs, and those it renders but cannot execute here.
RUNS = {"Deployment", "StatefulSet", "Job"}


DATA = {"Secret", "ConfigMap", "Service", "ServiceAccount", "PersistentVolumeClaim"}


class UpError(Exception):
    """What went wrong, in one message for the user."""


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


def aliases(workload: Workload) -> list[str]:
    found = []
    for service in workload.services:
        found += [service, f"{service}.{NAMESPACE}", f"{service}.{NAMESPACE}.svc", f"{service}.{NAMESPACE}.{CLUSTER_DOMAIN}"]
    return found
