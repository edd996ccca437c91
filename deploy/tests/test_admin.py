"""The `chatplane` admin command's logic against the kubernetes client's model objects (no cluster)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from chatplane.admin import cli
from chatplane.admin.logic import (
    AdminError,
    Queue,
    autoscaler_for,
    check_scale,
    deployment_row,
    format_status,
    label_selector,
    parse_queue,
    pick_pods,
    pod_row,
)
from kubernetes import client as k

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)
RELEASE = "chatplane"

METRICS = """\
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="SmolLM2-135M-Instruct"} 7.0
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="SmolLM2-135M-Instruct"} 3.0
# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 12.5
"""


def labels(component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/instance": RELEASE,
        "app.kubernetes.io/part-of": "chatplane",
        "app.kubernetes.io/component": component,
    }


def pod(name, component, *, ready=True, restarts=0, waiting_reason=None, started=NOW - timedelta(minutes=5)):
    state = k.V1ContainerState(waiting=k.V1ContainerStateWaiting(reason=waiting_reason)) if waiting_reason else None
    return k.V1Pod(
        metadata=k.V1ObjectMeta(name=name, labels=labels(component)),
        spec=k.V1PodSpec(
            node_name="kind-worker",
            containers=[k.V1Container(name=component, ports=[k.V1ContainerPort(name="metrics", container_port=9090)])],
        ),
        status=k.V1PodStatus(
            phase="Running",
            pod_ip="10.0.0.7",
            start_time=started,
            container_statuses=[
                k.V1ContainerStatus(
                    name=component, ready=ready, restart_count=restarts, image="x:1", image_id="", state=state
                )
            ],
        ),
    )


def deployment(component, *, replicas=2, ready=2, pool=""):
    pool_labels = {"chatplane.dev/inference-pool": pool} if pool else {}
    return k.V1Deployment(
        metadata=k.V1ObjectMeta(
            name=f"{RELEASE}-{component}" + (f"-{pool}" if pool else ""), labels={**labels(component), **pool_labels}
        ),
        spec=k.V1DeploymentSpec(
            replicas=replicas,
            selector=k.V1LabelSelector(match_labels=labels(component)),
            template=k.V1PodTemplateSpec(),
        ),
        status=k.V1DeploymentStatus(replicas=replicas, ready_replicas=ready, updated_replicas=replicas),
    )


def hpa(target, *, name=None, managed_by="Helm"):
    return k.V2HorizontalPodAutoscaler(
        metadata=k.V1ObjectMeta(name=name or target, labels={"app.kubernetes.io/managed-by": managed_by}),
        spec=k.V2HorizontalPodAutoscalerSpec(
            min_replicas=1,
            max_replicas=4,
            scale_target_ref=k.V2CrossVersionObjectReference(api_version="apps/v1", kind="Deployment", name=target),
        ),
    )


def test_queue_is_read_from_the_engine_gauges():
    assert parse_queue(METRICS) == Queue(waiting=7.0, running=3.0)
    assert parse_queue("process_cpu_seconds_total 1\n") is None


def test_selector_matches_the_chart_labels():
    assert label_selector("cp", "inference") == (
        "app.kubernetes.io/instance=cp,app.kubernetes.io/part-of=chatplane,app.kubernetes.io/component=inference"
    )


def test_pod_rows_show_readiness_restarts_and_crash_loops():
    row = pod_row(pod("inf-1", "inference", restarts=2), Queue(1, 2), now=NOW)
    assert (row.component, row.ready, row.restarts, row.age, row.phase) == ("inference", True, 2, "5m", "Running")
    crashing = pod_row(pod("auth-1", "auth", ready=False, waiting_reason="CrashLoopBackOff"), now=NOW)
    assert crashing.phase == "CrashLoopBackOff" and not crashing.ready


def test_status_table_has_replicas_readiness_and_a_queue_per_inference_replica():
    deployments = [
        deployment_row(deployment("gateway")),
        deployment_row(deployment("inference", replicas=2, ready=1), "keda:x"),
    ]
    pods = [
        pod_row(pod("chatplane-inference-a", "inference"), Queue(7, 3), now=NOW),
        pod_row(pod("chatplane-inference-b", "inference", ready=False), None, now=NOW),
        pod_row(pod("chatplane-gateway-a", "gateway"), now=NOW),
    ]
    text = format_status(deployments, pods)
    lines = text.splitlines()
    assert lines[0].split() == ["SERVICE", "READY", "UP-TO-DATE", "AUTOSCALER"]
    assert lines[1].split()[:2] == ["gateway", "2/2"]
    assert lines[2].split() == ["inference", "1/2", "2", "keda:x"]
    inference_a = next(line for line in lines if line.startswith("chatplane-inference-a"))
    assert inference_a.endswith("7 waiting, 3 running")
    inference_b = next(line for line in lines if line.startswith("chatplane-inference-b"))
    assert " no " in inference_b and inference_b.endswith("n/a")


def test_autoscaler_is_found_for_keda_and_hpa():
    inference = deployment("inference")
    scaled = {"metadata": {"name": "so"}, "spec": {"scaleTargetRef": {"name": "chatplane-inference"}}}
    assert autoscaler_for(inference, [], [scaled]) == "keda:so"
    assert autoscaler_for(inference, [hpa("chatplane-inference")], []) == "hpa:chatplane-inference (1-4)"
    assert autoscaler_for(inference, [hpa("chatplane-gateway")], []) == ""


def test_scaling_refuses_what_an_autoscaler_would_undo():
    check_scale("inference", 3, "", force=False)
    check_scale("inference", 3, "keda:so", force=True)
    with pytest.raises(AdminError, match="autoscaled by keda:so"):
        check_scale("inference", 3, "keda:so", force=False)
    with pytest.raises(AdminError):
        check_scale("inference", -1, "", force=False)
    with pytest.raises(AdminError, match="only inference"):
        check_scale("gateway", 3, "", force=False)


def test_pick_pods_of_one_service():
    pods = [pod("b", "inference"), pod("a", "inference"), pod("g", "gateway")]
    assert [p.metadata.name for p in pick_pods(pods, "inference")] == ["a", "b"]
    with pytest.raises(AdminError, match="no auth pods"):
        pick_pods(pods, "auth")


class FakeCluster:
    """A stand-in for chatplane.admin.cluster.Cluster that returns model objects and records scale calls."""

    def __init__(self, namespace, release, context, *, hpas=()):
        self.namespace, self.release = namespace, release
        self._hpas = list(hpas)
        self.scaled: list[tuple[str, int]] = []

    def deployments(self):
        return [deployment("gateway"), deployment("inference", replicas=1, ready=1)]

    def pods(self, component=None):
        pods = [pod("chatplane-inference-a", "inference"), pod("chatplane-gateway-a", "gateway")]
        return [p for p in pods if component in (None, p.metadata.labels["app.kubernetes.io/component"])]

    def hpas(self):
        return self._hpas

    def scaled_objects(self):
        return []

    def queue(self, p):
        return parse_queue(METRICS)

    def scale(self, name, replicas):
        self.scaled.append((name, replicas))

    def logs(self, p, *, tail, follow):
        yield f"started {p.metadata.name}"
        yield "serving"


def run(argv, cluster):
    return cli.main(argv, cluster_factory=lambda *a: cluster)


def test_cli_status_scale_and_logs(capsys):
    cluster = FakeCluster("chatplane", RELEASE, None)
    assert run(["status"], cluster) == 0
    assert "7 waiting, 3 running" in capsys.readouterr().out
    assert run(["scale", "inference", "3"], cluster) == 0
    assert cluster.scaled == [("chatplane-inference", 3)]
    assert run(["logs", "inference", "--tail", "10"], cluster) == 0
    assert capsys.readouterr().out.splitlines()[-2:] == [
        "[chatplane-inference-a] started chatplane-inference-a",
        "[chatplane-inference-a] serving",
    ]


def test_cli_refuses_to_fight_the_autoscaler(capsys):
    cluster = FakeCluster("chatplane", RELEASE, None, hpas=[hpa("chatplane-inference")])
    assert run(["scale", "inference", "3"], cluster) == 1
    assert "autoscaled by hpa:chatplane-inference" in capsys.readouterr().err
    assert cluster.scaled == []


def test_cli_scales_the_pool_it_is_told_and_asks_when_there_are_several(capsys):
    cluster = FakeCluster("chatplane", RELEASE, None)
    cluster.deployments = lambda: [deployment("gateway"), deployment("inference", pool="qwen"),
                                   deployment("inference", pool="smollm2")]
    assert run(["scale", "inference", "3"], cluster) == 1
    assert "several pools (qwen, smollm2): name one with --pool" in capsys.readouterr().err
    assert run(["scale", "inference", "3", "--pool", "smollm2"], cluster) == 0
    assert cluster.scaled == [("chatplane-inference-smollm2", 3)]
    assert run(["scale", "inference", "3", "--pool", "llama"], cluster) == 1
    assert "no inference pool 'llama' Deployment" in capsys.readouterr().err
    assert run(["status"], cluster) == 0
    assert "inference/qwen" in capsys.readouterr().out
