"""The Kubernetes API calls of the admin command (kept thin: the decisions live in :mod:`chatplane.admin.logic`)."""

from __future__ import annotations

from collections.abc import Iterator

from kubernetes import client, config
from kubernetes.client import ApiException, V1Deployment, V1Pod, V2HorizontalPodAutoscaler

from chatplane.admin.logic import AdminError, Queue, label_selector, parse_queue


class Cluster:
    def __init__(self, namespace: str, release: str, context: str | None = None) -> None:
        try:
            config.load_kube_config(context=context)
        except config.ConfigException:
            try:
                config.load_incluster_config()
            except config.ConfigException as exc:
                raise AdminError(f"no Kubernetes configuration found: {exc}") from exc
        self.namespace = namespace
        self.release = release
        self.core = client.CoreV1Api()
        self.apps = client.AppsV1Api()
        self.autoscaling = client.AutoscalingV2Api()
        self.custom = client.CustomObjectsApi()

    def deployments(self) -> list[V1Deployment]:
        return self.apps.list_namespaced_deployment(self.namespace, label_selector=label_selector(self.release)).items

    def pods(self, component: str | None = None) -> list[V1Pod]:
        selector = label_selector(self.release, component)
        return self.core.list_namespaced_pod(self.namespace, label_selector=selector).items

    def hpas(self) -> list[V2HorizontalPodAutoscaler]:
        return self.autoscaling.list_namespaced_horizontal_pod_autoscaler(self.namespace).items

    def scaled_objects(self) -> list[dict]:
        try:
            reply = self.custom.list_namespaced_custom_object("keda.sh", "v1alpha1", self.namespace, "scaledobjects")
        except ApiException as exc:
            if exc.status == 404:  # KEDA is not installed
                return []
            raise
        return reply.get("items", [])

    def queue(self, pod: V1Pod) -> Queue | None:
        """The engine queue of one inference pod, read from its metrics port through the API server's pod proxy."""
        port = next(
            (p.container_port for c in pod.spec.containers for p in (c.ports or []) if p.name == "metrics"), None
        )
        if port is None or not (pod.status and pod.status.pod_ip):
            return None
        try:
            text = self.core.connect_get_namespaced_pod_proxy_with_path(
                f"{pod.metadata.name}:{port}", self.namespace, "metrics", _request_timeout=3
            )
        except (ApiException, OSError):
            return None
        return parse_queue(text)

    def scale(self, deployment: str, replicas: int) -> None:
        self.apps.patch_namespaced_deployment_scale(deployment, self.namespace, {"spec": {"replicas": replicas}})

    def logs(self, pod: V1Pod, *, tail: int | None, follow: bool) -> Iterator[str]:
        container = pod.spec.containers[0].name
        if not follow:
            text = self.core.read_namespaced_pod_log(
                pod.metadata.name, self.namespace, container=container, tail_lines=tail
            )
            yield from text.splitlines()
            return
        response = self.core.read_namespaced_pod_log(
            pod.metadata.name, self.namespace, container=container, tail_lines=tail, follow=True, _preload_content=False
        )
        buffer = b""
        for chunk in response.stream():
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                yield line.decode(errors="replace")
