"""``chatplane status | scale inference N | logs SERVICE``: operate a chatplane release on Kubernetes."""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Callable

from chatplane.admin.logic import (
    SERVICES,
    AdminError,
    autoscaler_for,
    check_scale,
    component_of,
    deployment_row,
    format_status,
    pick_deployment,
    pick_pods,
    pod_row,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatplane", description="Operate a chatplane release on Kubernetes.")
    parser.add_argument("-n", "--namespace", default="chatplane", help="namespace of the release (default chatplane)")
    parser.add_argument("--release", default="chatplane", help="Helm release name (default chatplane)")
    parser.add_argument("--context", default=None, help="kubeconfig context (default: the current one)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("status", help="pods, replicas, readiness and the queue of every inference replica")
    scale = commands.add_parser("scale", help="set the number of inference replicas")
    scale.add_argument("service", choices=["inference"])
    scale.add_argument("replicas", type=int)
    scale.add_argument("--pool", default=None, help="the inference pool (needed when there are several)")
    scale.add_argument("--force", action="store_true", help="scale even when an autoscaler owns the replica count")
    logs = commands.add_parser("logs", help="logs of every pod of one service, prefixed with the pod name")
    logs.add_argument("service", choices=[*SERVICES, "postgresql", "redis", "kafka"])
    logs.add_argument("--tail", type=int, default=100, help="lines per pod from the end (default 100)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep streaming")
    return parser


def cmd_status(cluster, out: Callable[[str], None]) -> None:
    hpas, scaled_objects = cluster.hpas(), cluster.scaled_objects()
    deployments = [deployment_row(d, autoscaler_for(d, hpas, scaled_objects)) for d in cluster.deployments()]
    if not deployments:
        raise AdminError(f"no chatplane release {cluster.release!r} in namespace {cluster.namespace!r}")
    pods = [
        pod_row(p, cluster.queue(p) if component_of(p) == "inference" else None) for p in cluster.pods()
    ]
    out(format_status(deployments, pods))


def cmd_scale(
    cluster, service: str, replicas: int, force: bool, out: Callable[[str], None], pool: str | None = None
) -> None:
    deployment = pick_deployment(cluster.deployments(), service, pool)
    autoscaler = autoscaler_for(deployment, cluster.hpas(), cluster.scaled_objects())
    check_scale(service, replicas, autoscaler, force)
    cluster.scale(deployment.metadata.name, replicas)
    out(f"{deployment.metadata.name}: scaled to {replicas} replicas")


def cmd_logs(cluster, service: str, tail: int, follow: bool, out: Callable[[str], None]) -> None:
    pods = pick_pods(cluster.pods(service), service)
    lock = threading.Lock()

    def pump(pod) -> None:
        for line in cluster.logs(pod, tail=tail, follow=follow):
            with lock:
                out(f"[{pod.metadata.name}] {line}")

    if not follow:
        for pod in pods:
            pump(pod)
        return
    threads = [threading.Thread(target=pump, args=(pod,), daemon=True) for pod in pods]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def main(argv: list[str] | None = None, cluster_factory=None) -> int:
    args = build_parser().parse_args(argv)
    out = print
    try:
        if cluster_factory is None:
            from chatplane.admin.cluster import Cluster

            cluster_factory = Cluster
        cluster = cluster_factory(args.namespace, args.release, args.context)
        if args.command == "status":
            cmd_status(cluster, out)
        elif args.command == "scale":
            cmd_scale(cluster, args.service, args.replicas, args.force, out, args.pool)
        else:
            cmd_logs(cluster, args.service, args.tail, args.follow, out)
    except AdminError as exc:
        print(f"chatplane: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
