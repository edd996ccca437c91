"""Helpers of the deployment tests: the chart rendered offline with Helm's own library (helm-python-sdk) for the
default values and every ci/*.yaml, parsed into Kubernetes objects. No cluster and no Docker are needed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "chatplane"
RELEASE = "cp"
NAMESPACE = "chat"
# The Kubernetes versions the chart supports (Chart.yaml kubeVersion >=1.30): oldest and newest are checked.
KUBE_VERSIONS = ("1.30.0", "1.35.0")


def values_files() -> list[Path]:
    """Every values file CI renders: the ci/ set plus the two documented profiles."""
    return sorted((CHART / "ci").glob("*.yaml")) + [CHART / "values-kind.yaml", CHART / "values-gpu.yaml"]


VALUE_SETS = {"default": None, **{f"{p.parent.name}/{p.name}": p for p in values_files()}}


@dataclass
class Rendered:
    """One render of the chart: its merged values and every object, in order."""

    name: str
    values: dict[str, Any]
    objects: list[dict[str, Any]] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        matches = [o for o in self.objects if o["kind"] == kind and o["metadata"]["name"] == name]
        assert len(matches) == 1, f"{kind}/{name}: {len(matches)} objects"
        return matches[0]

    def find(self, kind: str, name: str) -> dict[str, Any] | None:
        matches = [o for o in self.objects if o["kind"] == kind and o["metadata"]["name"] == name]
        return matches[0] if matches else None


def load_values(path: Path | None) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) if path else {}


def render_chart(chart_dir: Path, values: dict[str, Any], name: str = "default") -> Rendered:
    import helm_python

    chart = helm_python.Chart.load(chart_dir)
    try:
        manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE)
        merged = chart.merge_values(values)
    finally:
        chart.close()
    rendered = Rendered(name, merged)
    for path, text in sorted(manifests.items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                rendered.objects.append(doc)
    return rendered


def pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return obj["spec"]["template"]["spec"]
    return None


def workloads(rendered):
    for obj in rendered.objects:
        spec = pod_spec(obj)
        if spec is not None:
            yield obj, spec


def containers(spec):
    return spec.get("initContainers", []) + spec["containers"]


def env_of(container) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def component_of(obj) -> str:
    return obj["metadata"]["labels"]["app.kubernetes.io/component"]


def fullname(component: str) -> str:
    return f"{RELEASE}-chatplane-{component}"


def overlay(base: Any, over: Any) -> Any:
    """``over`` laid over ``base`` as the chart lays a pool over the `inference` block: maps merge, the rest (lists,
    false, 0) is replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{k: overlay(base.get(k), v) if k in base else v for k, v in over.items()}}
    return over


def inference_pools(rendered: Rendered) -> dict[str, dict[str, Any]]:
    """Each inference pool's values (the pool over the `inference` block's defaults), by pool name."""
    inference = rendered.values["inference"]
    if not inference["enabled"]:
        return {}
    defaults = {k: v for k, v in inference.items() if k not in ("pools", "enabled", "discovery", "discoveryIntervalSeconds")}
    return {p["name"]: overlay(defaults, p) for p in inference["pools"]}
