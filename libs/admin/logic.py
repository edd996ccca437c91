"""What the admin command shows and decides, computed from the ``kubernetes`` client's model objects (no API calls)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from kubernetes.client import V1Deployment, V1Pod, V2HorizontalPodAutoscaler
from prometheus_client.parser import text_string_to_metric_families

# The chart's labels (deploy/helm/chatplane/templates/_helpers.tpl).
INSTANCE = "app.kubernetes.io/instance"
PART_OF = "app.kubernetes.io/part-of"
COMPONENT = "app.kubernetes.io/component"
POOL = "chatplane.dev/inference-pool"  # an inference pool's Deployment and pods
SERVICES = ("gateway", "auth", "conversation", "inference")
WAITING = "vllm:num_requests_waiting"
RUNNING = "vllm:num_requests_running"


class AdminError(Exception):
    """A refusal or failure to show the user as one clear line."""


def label_selector(release: str, component: str | None = None) -> str:
    parts = [f"{INSTANCE}={release}", f"{PART_OF}=chatplane"]
    if component:
        parts.append(f"{COMPONENT}={component}")
    return ",".join(parts)


def component_of(obj: V1Deployment | V1Pod) -> str:
    return (obj.metadata.labels or {}).get(COMPONENT, "?")


def pool_of(obj: V1Deployment | V1Pod) -> str:
    """The inference pool of a Deployment or pod ("" for the other components)."""
    return (obj.metadata.labels or {}).get(POOL, "")


def pick_deployment(deployments: list[V1Deployment], service: str, pool: str | None) -> V1Deployment:
    """The one Deployment of ``service`` to scale: of ``pool`` when given, which must be named when there are
    several inference pools."""
    found = [d for d in deployments if component_of(d) == service and (pool is None or pool_of(d) == pool)]
    if not found:
        where = f" pool {pool!r}" if pool else ""
        raise AdminError(f"no {service}{where} Deployment found (is the release name and namespace right?)")
    if len(found) > 1:
        pools = ", ".join(sorted(pool_of(d) for d in found))
        raise AdminError(f"{service} has several pools ({pools}): name one with --pool")
    return found[0]


@dataclass(frozen=True)
class Queue:
    """One inference replica's engine queue, from its ``vllm:*`` gauges."""

    waiting: float
    running: float


def parse_queue(metrics_text: str) -> Queue | None:
    """The queue figures in a Prometheus text exposition, or None when the engine gauges are absent."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name in (WAITING, RUNNING):
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    if WAITING not in totals:
        return None
    return Queue(waiting=totals[WAITING], running=totals.get(RUNNING, 0.0))


@dataclass(frozen=True)
class PodRow:
    name: str
    component: str
    phase: str
    ready: bool
    restarts: int
    node: str
    age: str
    queue: Queue | None = None


def _age(start: datetime | None, now: datetime) -> str:
    if start is None:
        return "-"
    seconds = int((now - start).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def pod_row(pod: V1Pod, queue: Queue | None = None, now: datetime | None = None) -> PodRow:
    now = now or datetime.now(timezone.utc)
    statuses = (pod.status.container_statuses if pod.status else None) or []
    phase = (pod.status.phase if pod.status else None) or "Unknown"
    if pod.metadata.deletion_timestamp is not None:
        phase = "Terminating"
    else:
        for status in statuses:  # a crash loop says more than "Running"
            if status.state and status.state.waiting and status.state.waiting.reason:
                phase = status.state.waiting.reason
    return PodRow(
        name=pod.metadata.name,
        component=component_of(pod),
        phase=phase,
        ready=bool(statuses) and all(s.ready for s in statuses),
        restarts=sum(s.restart_count or 0 for s in statuses),
        node=(pod.spec.node_name if pod.spec else None) or "-",
        age=_age(pod.status.start_time if pod.status else None, now),
        queue=queue,
    )


@dataclass(frozen=True)
class DeploymentRow:
    component: str
    name: str
    desired: int
    ready: int
    updated: int
    autoscaler: str
    pool: str = ""


def deployment_row(deployment: V1Deployment, autoscaler: str = "") -> DeploymentRow:
    status = deployment.status
    return DeploymentRow(
        component=component_of(deployment),
        name=deployment.metadata.name,
        desired=(deployment.spec.replicas if deployment.spec and deployment.spec.replicas is not None else 1),
        ready=(status.ready_replicas or 0) if status else 0,
        updated=(status.updated_replicas or 0) if status else 0,
        autoscaler=autoscaler,
        pool=pool_of(deployment),
    )


def autoscaler_for(
    deployment: V1Deployment, hpas: list[V2HorizontalPodAutoscaler], scaled_objects: list[dict]
) -> str:
    """Who owns the Deployment's replica count: "" (nobody), "keda:<name>" or "hpa:<name> (min-max)"."""
    name = deployment.metadata.name
    for obj in scaled_objects:
        if obj.get("spec", {}).get("scaleTargetRef", {}).get("name") == name:
            return f"keda:{obj['metadata']['name']}"
    for hpa in hpas:
        ref = hpa.spec.scale_target_ref
        if ref.kind == "Deployment" and ref.name == name:
            managed_by = (hpa.metadata.labels or {}).get("app.kubernetes.io/managed-by", "")
            owner = "keda" if managed_by == "keda-operator" else "hpa"
            return f"{owner}:{hpa.metadata.name} ({hpa.spec.min_replicas or 1}-{hpa.spec.max_replicas})"
    return ""


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def format_status(deployments: list[DeploymentRow], pods: list[PodRow]) -> str:
    order = {name: i for i, name in enumerate(SERVICES)}
    deployments = sorted(deployments, key=lambda d: (order.get(d.component, 99), d.component))
    pods = sorted(pods, key=lambda p: (order.get(p.component, 99), p.component, p.name))
    services = _table(
        ["SERVICE", "READY", "UP-TO-DATE", "AUTOSCALER"],
        [[d.component + (f"/{d.pool}" if d.pool else ""), f"{d.ready}/{d.desired}", str(d.updated), d.autoscaler or "-"]
         for d in deployments],
    )
    pod_rows = []
    for p in pods:
        queue = "-"
        if p.component == "inference":
            queue = f"{_fmt(p.queue.waiting)} waiting, {_fmt(p.queue.running)} running" if p.queue else "n/a"
        pod_rows.append([p.name, p.component, p.phase, "yes" if p.ready else "no", str(p.restarts), p.age, queue])
    pods_table = _table(["POD", "SERVICE", "STATUS", "READY", "RESTARTS", "AGE", "QUEUE"], pod_rows)
    return f"{services}\n\n{pods_table}"


def check_scale(service: str, replicas: int, autoscaler: str, force: bool) -> None:
    """Refuse a scale that cannot work or would be undone at once by an autoscaler."""
    if service != "inference":
        raise AdminError(f"only inference is scaled by hand ({service} scales on CPU through its HPA or values)")
    if replicas < 0:
        raise AdminError("replicas must be 0 or more")
    if autoscaler and not force:
        raise AdminError(
            f"inference is autoscaled by {autoscaler}: a manual scale would be undone. Change the pool's "
            "autoscaling in the chart values (inference.pools[].autoscaling), or pass --force to scale anyway."
        )


def pick_pods(pods: list[V1Pod], service: str) -> list[V1Pod]:
    chosen = sorted((p for p in pods if component_of(p) == service), key=lambda p: p.metadata.name)
    if not chosen:
        raise AdminError(f"no {service} pods found (is the release name and namespace right?)")
    return chosen
