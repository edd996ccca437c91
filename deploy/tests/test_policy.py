"""Policy over every object the chart renders, for the default values and every values file: probes, resources,
security, pinned images, no plain-text secrets, GPU requests only with GPUs, the inference scaler, headless gRPC
Services, NetworkPolicies, migrations, drain times, dashboards and alert rules."""

from __future__ import annotations

import base64
import json
import re
import shutil

import pytest
import yaml
from chart_support import CHART, component_of, containers, env_of, fullname, inference_pools, render_chart, workloads
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

GRPC_COMPONENTS = {"auth", "conversation", "inference"}
# Third-party images whose start scripts write into their root filesystem (documented in the template).
WRITABLE_ROOT_OK = {"kafka"}
SECRET_NAME = re.compile(r"(PASSWORD|SECRET|TOKEN|PRIVATE_KEY|API_KEY)$")


def discovery_watchers(rendered) -> set[str]:
    """Components that watch the inference pools' EndpointSlices: the inference callers with discovery kubernetes."""
    inference = rendered.values["inference"]
    if not inference["enabled"] or inference["discovery"] != "kubernetes":
        return set()
    return {name for name, c in rendered.values["components"].items() if "inference" in c.get("upstreams", [])}


def test_every_long_running_container_has_readiness_and_liveness_probes(renders):
    for rendered in renders.values():
        for obj, spec in workloads(rendered):
            if obj["kind"] == "Job":
                continue
            for c in spec["containers"]:
                where = f"{rendered.name}: {obj['kind']}/{obj['metadata']['name']}/{c['name']}"
                assert "readinessProbe" in c and "livenessProbe" in c, where
                if component_of(obj) in GRPC_COMPONENTS:
                    # native gRPC probes against the standard grpc.health.v1 service
                    assert c["readinessProbe"]["grpc"]["port"] == c["livenessProbe"]["grpc"]["port"], where
                    assert c["startupProbe"]["grpc"], where


def test_every_container_has_cpu_and_memory_requests_and_limits(renders):
    for rendered in renders.values():
        for obj, spec in workloads(rendered):
            for c in containers(spec):
                where = f"{rendered.name}: {obj['metadata']['name']}/{c['name']}"
                for kind in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(c["resources"][kind]), where


def test_pods_run_as_non_root_without_privileges(renders):
    for rendered in renders.values():
        watchers = discovery_watchers(rendered)
        for obj, spec in workloads(rendered):
            assert spec["securityContext"]["runAsNonRoot"] is True, obj["metadata"]["name"]
            assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
            # the API token only in pods that watch EndpointSlices (inference.discovery: kubernetes)
            assert spec["automountServiceAccountToken"] is (component_of(obj) in watchers), obj["metadata"]["name"]
            for c in containers(spec):
                sc = c["securityContext"]
                where = f"{rendered.name}: {obj['metadata']['name']}/{c['name']}"
                assert sc["allowPrivilegeEscalation"] is False, where
                assert sc.get("privileged", False) is False, where
                assert sc["capabilities"]["drop"] == ["ALL"], where
                assert "add" not in sc["capabilities"], where
                assert sc.get("runAsUser", spec["securityContext"].get("runAsUser", 0)) != 0, where
                if component_of(obj) not in WRITABLE_ROOT_OK:
                    assert sc["readOnlyRootFilesystem"] is True, where


def test_images_are_pinned_never_latest(renders):
    for rendered in renders.values():
        for obj, spec in workloads(rendered):
            for c in containers(spec):
                image = c["image"]
                name, _, tag = image.rpartition(":")
                assert name and tag and "/" not in tag, f"{image} has no tag"
                assert tag != "latest", image
                assert c.get("imagePullPolicy") != "Always" or "@sha256:" in image


def test_no_secret_in_plain_text(renders):
    for rendered in renders.values():
        generated = set()
        for secret in rendered.of_kind("Secret"):
            assert "stringData" not in secret, secret["metadata"]["name"]
            assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
            generated.update(base64.b64decode(v).decode() for v in secret["data"].values())
        text = yaml.safe_dump_all([o for o in rendered.objects if o["kind"] != "Secret"])
        for value in generated:
            assert value not in text, f"{rendered.name}: a generated secret appears outside its Secret"
        for obj, spec in workloads(rendered):
            for c in containers(spec):
                for name, e in env_of(c).items():
                    if SECRET_NAME.search(name):
                        assert "secretKeyRef" in e.get("valueFrom", {}), f"{name} must come from a Secret"
                    value = e.get("value", "")
                    # URLs carry the password only as a $(VAR) reference that the kubelet expands
                    m = re.match(r"^[a-z+]+://(?P<user>[^:/@]*):(?P<pw>[^@]*)@", value)
                    if m:
                        assert re.fullmatch(r"\$\([A-Z_]+\)", m["pw"]), f"{name} holds a literal password"
                        assert m["pw"][2:-1] in env_of(c), f"{name} refers to an undefined variable"
        for obj in rendered.of_kind("ConfigMap"):
            assert "PRIVATE KEY" not in json.dumps(obj)
    # the values never carry a secret: only names of Secrets and of keys inside them
    def keys(node, path=""):
        if isinstance(node, dict):
            for k, v in node.items():
                yield f"{path}.{k}", k, v
                yield from keys(v, f"{path}.{k}")
        elif isinstance(node, list):
            for item in node:
                yield from keys(item, path)

    for rendered in renders.values():
        for path, key, value in keys(rendered.values):
            if re.search(r"(password|privatekey|token|apikey)$", key, re.I):
                pytest.fail(f"{rendered.name}: values key {path} would hold a secret")


def test_the_generated_signing_key_is_an_ed25519_pkcs8_pem(default_render):
    secret = default_render.get("Secret", fullname("jwt"))
    pem = base64.b64decode(secret["data"]["private-key.pem"])
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert isinstance(load_pem_private_key(pem, password=None), Ed25519PrivateKey)


def test_auth_gets_its_key_and_database_from_secrets(default_render):
    auth = default_render.get("Deployment", fullname("auth"))["spec"]["template"]["spec"]["containers"][0]
    env = env_of(auth)
    assert env["CHATPLANE_ENVIRONMENT"]["value"] == "production"
    # the signing key is a mounted file, never an environment variable
    assert "CHATPLANE_AUTH_JWT_PRIVATE_KEY" not in env
    path = env["CHATPLANE_AUTH_JWT_PRIVATE_KEY_FILE"]["value"]
    spec = default_render.get("Deployment", fullname("auth"))["spec"]["template"]["spec"]
    (mount,) = [m for m in auth["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert mount["readOnly"] and volume["secret"]["secretName"] == fullname("jwt")
    assert volume["secret"]["defaultMode"] == 0o440
    assert env["CHATPLANE_AUTH_DATABASE_URL"]["value"].startswith("postgresql+asyncpg://auth:$(")
    assert env["CHATPLANE_AUTH_HOST"]["value"] == "0.0.0.0"


def test_only_event_producers_get_kafka(default_render):
    bootstrap = f"{fullname('kafka')}.chat.svc.cluster.local:9092"
    for name, expected in (
        # the gateway publishes its spool of finished completions
        ("auth", bootstrap), ("conversation", bootstrap), ("gateway", bootstrap), ("inference-smollm2", ""),
        ("auth-usage-consumer", bootstrap), ("conversation-worker", ""),  # the worker only fills the outbox
    ):
        c = default_render.get("Deployment", fullname(name))["spec"]["template"]["spec"]["containers"][0]
        assert env_of(c)["CHATPLANE_KAFKA_BOOTSTRAP_SERVERS"]["value"] == expected, name
    conversation = default_render.get("Deployment", fullname("conversation"))["spec"]["template"]["spec"]
    conversation = conversation["containers"][0]
    broker = env_of(conversation)["CHATPLANE_CONVERSATION_CELERY_BROKER_URL"]["value"]
    assert broker == f"redis://:$(CHATPLANE_REDIS_PASSWORD)@{fullname('redis')}.chat.svc.cluster.local:6379/0"


def pool_deployments(rendered):
    """(pool values, Deployment, its container) of every inference pool."""
    for name, pool in inference_pools(rendered).items():
        deployment = rendered.get("Deployment", fullname(f"inference-{name}"))
        yield pool, deployment, deployment["spec"]["template"]["spec"]["containers"][0]


def test_gpu_requests_only_when_gpu_is_on(renders):
    for rendered in renders.values():
        pools = list(pool_deployments(rendered))
        gpu_pods = {id(d) for _, d, _ in pools}
        for obj, pod in workloads(rendered):
            if id(obj) in gpu_pods:
                continue
            for other in containers(pod):
                assert "nvidia.com/gpu" not in json.dumps(other["resources"]), obj["metadata"]["name"]
        for pool, deployment, c in pools:
            where = f"{rendered.name}: pool {pool['name']}"
            spec = deployment["spec"]["template"]["spec"]
            if pool["gpu"]["enabled"]:
                gpus = pool["engine"]["tensorParallelSize"]
                assert c["resources"]["limits"]["nvidia.com/gpu"] == gpus, where
                assert c["resources"]["requests"]["nvidia.com/gpu"] == gpus, where
                assert "/inference-gpu:" in c["image"]
                assert env_of(c)["CHATPLANE_INFERENCE_TENSOR_PARALLEL_SIZE"]["value"] == str(gpus)
                preset = pool["gpu"]["presets"].get(pool["gpu"]["nodePool"], {})
                for key, value in {**preset.get("nodeSelector", {}), **pool["nodeSelector"]}.items():
                    assert spec["nodeSelector"][key] == value, where
                for toleration in preset.get("tolerations", []) + pool["tolerations"]:
                    assert toleration in spec["tolerations"], where
            else:
                assert "nvidia.com/gpu" not in json.dumps(c["resources"]), where
                assert "/inference-cpu:" in c["image"] or c["image"].startswith("chatplane/inference-cpu:")
                assert "CHATPLANE_INFERENCE_KV_CACHE_GIB" in env_of(c)


def test_gpu_presets_of_each_cloud_are_rendered(renders):
    pools = {
        pool["gpu"]["nodePool"] for r in renders.values() for pool in inference_pools(r).values() if pool["gpu"]["enabled"]
    }
    assert {"gke", "eks", "aks"} <= pools


def test_each_pool_has_its_scaler(renders):
    modes = set()
    for rendered in renders.values():
        for pool, deployment, _ in pool_deployments(rendered):
            scaling = pool["autoscaling"]
            name = deployment["metadata"]["name"]
            scaled = rendered.find("ScaledObject", name)
            hpa = rendered.find("HorizontalPodAutoscaler", name)
            if not scaling["enabled"]:
                assert scaled is None and hpa is None, rendered.name
                assert deployment["spec"]["replicas"] == pool["replicas"] >= 1
                continue
            modes.add(scaling["mode"])
            assert "replicas" not in deployment["spec"], "an autoscaled Deployment must not pin replicas"
            if scaling["mode"] == "keda":
                assert hpa is None, "KEDA owns the HPA of a ScaledObject"
                spec = scaled["spec"]
                assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
                assert spec["minReplicaCount"] == scaling["minReplicas"] >= 1
                assert spec["maxReplicaCount"] == scaling["maxReplicas"] > spec["minReplicaCount"]
                trigger = spec["triggers"][0]
                assert trigger["type"] == "prometheus"
                query = trigger["metadata"]["query"]
                assert "vllm:num_requests_waiting" in query and 'namespace="chat"' in query
                # this pool's pods only: another pool whose name starts with this one's does not match
                pods = re.search(r'pod=~"([^"]+)"', query)[1]
                assert re.fullmatch(pods, f"{name}-7d9f8c6b5-x2x9z")
                assert not re.fullmatch(pods, f"{name}-b-7d9f8c6b5-x2x9z")
                behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
            else:
                assert scaled is None
                spec = hpa["spec"]
                assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
                assert spec["metrics"][0]["pods"]["metric"]["name"] == scaling["adapterMetricName"]
                assert 1 <= spec["minReplicas"] < spec["maxReplicas"]
                behavior = spec["behavior"]
            assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 300, "scale-down must be slow"
    assert modes == {"keda", "prometheus-adapter"}, "ci/*.yaml must cover both scalers"


def test_gateway_and_conversation_scale_on_cpu(default_render):
    for name in ("gateway", "conversation"):
        hpa = default_render.get("HorizontalPodAutoscaler", fullname(name))
        assert hpa["spec"]["scaleTargetRef"]["name"] == fullname(name)
        assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def test_grpc_services_are_headless(renders):
    for rendered in renders.values():
        names = [fullname(n) for n in ("auth", "conversation")] + [fullname(f"inference-{p}") for p in inference_pools(rendered)]
        for name in names:
            service = rendered.find("Service", name)
            if service is not None:
                assert service["spec"]["clusterIP"] == "None", f"{name} must be headless"


def test_pod_disruption_budgets_cover_replicated_services(default_render):
    pdbs = {p["metadata"]["name"] for p in default_render.of_kind("PodDisruptionBudget")}
    assert {fullname("auth"), fullname("conversation"), fullname("gateway")} <= pdbs


def test_termination_grace_outlasts_the_drain(renders):
    for rendered in renders.values():
        for obj, spec in workloads(rendered):
            for c in spec["containers"]:
                grace = next((e["value"] for n, e in env_of(c).items() if n.endswith("_SHUTDOWN_GRACE_SECONDS")), None)
                if grace is not None:
                    assert spec["terminationGracePeriodSeconds"] > float(grace), obj["metadata"]["name"]
    gateway = renders["default"].get("Deployment", fullname("gateway"))["spec"]["template"]["spec"]
    assert gateway["terminationGracePeriodSeconds"] >= 120, "streams need minutes to drain"


def ingress_sources(policy) -> list[str]:
    sources = []
    for rule in policy["spec"].get("ingress", []):
        for peer in rule.get("from", [{"everyone": True}]):
            if "podSelector" in peer:
                sources.append(peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"])
            elif "everyone" in peer:
                sources.append("*")
    return sources


def test_network_policies_let_each_service_hear_only_its_callers(default_render):
    policies = {p["metadata"]["name"]: p for p in default_render.of_kind("NetworkPolicy")}
    assert policies["cp-chatplane-default-deny"]["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert ingress_sources(policies[fullname("gateway")]) == ["*"], "only the gateway is open"
    assert sorted(ingress_sources(policies[fullname("auth")])) == ["gateway"]
    assert sorted(ingress_sources(policies[fullname("inference-smollm2")])) == [
        "conversation", "conversation-worker", "gateway"
    ]
    assert sorted(ingress_sources(policies[fullname("conversation")])) == ["gateway"]
    assert sorted(ingress_sources(policies[fullname("postgresql")])) == [
        "auth", "auth-migrate", "auth-usage-consumer", "conversation", "conversation-migrate", "conversation-worker"
    ]
    assert sorted(ingress_sources(policies[fullname("redis")])) == ["conversation", "conversation-worker", "gateway"]
    assert sorted(ingress_sources(policies[fullname("kafka")])) == [
        "auth", "auth-usage-consumer", "conversation", "gateway"
    ]
    for name in ("auth", "conversation", "inference-smollm2", "postgresql", "redis", "kafka"):
        assert "*" not in ingress_sources(policies[fullname(name)]), name
    # the side processes are called by nobody: only Prometheus' namespace reaches their metrics port
    for name, port in (("conversation-worker", 9104), ("auth-usage-consumer", 9105)):
        (rule,) = policies[fullname(name)]["spec"]["ingress"]
        assert rule["ports"] == [{"port": port, "protocol": "TCP"}], name
        assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]


def test_migrations_run_as_a_hook_before_the_services(renders):
    for rendered in renders.values():
        jobs = rendered.of_kind("Job")
        if not rendered.values["migrations"]["enabled"]:
            assert not jobs
            continue
        assert {j["metadata"]["name"] for j in jobs} == {fullname("auth-migrate"), fullname("conversation-migrate")}
        for job in jobs:
            hooks = job["metadata"]["annotations"]["helm.sh/hook"].split(",")
            assert "pre-upgrade" in hooks
            # pre-install only where the database exists before the release (an external one)
            assert ("pre-install" in hooks) == (not rendered.values["postgresql"]["enabled"]), rendered.name
            args = job["spec"]["template"]["spec"]["containers"][0]["args"]
            assert args[-1] == "migrate" and args[:2] == ["python", "-m"]
        if not rendered.values["postgresql"]["enabled"]:
            for name in ("auth", "conversation"):
                c = rendered.get("Deployment", fullname(name))["spec"]["template"]["spec"]["containers"][0]
                assert env_of(c)[f"CHATPLANE_{name.upper()}_AUTO_MIGRATE"]["value"] == "false"


def test_ingress_keeps_sse_unbuffered_with_tls(renders):
    ingress = renders["ci/tls-ingress-values.yaml"].get("Ingress", fullname("gateway"))
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 900
    assert ingress["spec"]["tls"][0]["secretName"] == "chat-example-com-tls"
    route = renders["ci/external-values.yaml"].get("HTTPRoute", fullname("gateway"))
    assert route["spec"]["rules"][0]["timeouts"]["request"] == "3600s"


def test_in_chart_dependencies_use_official_images(default_render):
    images = {
        s["metadata"]["name"]: s["spec"]["template"]["spec"]["containers"][0]["image"]
        for s in default_render.of_kind("StatefulSet")
    }
    assert images[fullname("postgresql")].startswith("postgres:")
    assert images[fullname("redis")].startswith("redis:")
    assert images[fullname("kafka")].startswith("apache/kafka:")
    kafka = default_render.get("StatefulSet", fullname("kafka"))["spec"]["template"]["spec"]["containers"][0]
    assert env_of(kafka)["KAFKA_PROCESS_ROLES"]["value"] == "broker,controller", "KRaft mode"


def test_external_dependencies_replace_the_in_chart_ones(renders):
    rendered = renders["ci/external-values.yaml"]
    assert not rendered.of_kind("StatefulSet") and not rendered.of_kind("Secret")
    conversation = rendered.get("Deployment", fullname("conversation"))["spec"]["template"]["spec"]["containers"][0]
    env = env_of(conversation)
    assert env["CHATPLANE_CONVERSATION_DATABASE_URL"]["value"].endswith("@db.example.com:5432/conversation?ssl=require")
    assert env["CHATPLANE_KAFKA_BOOTSTRAP_SERVERS"]["value"].startswith("kafka-1.example.com:9092")
    assert env["CHATPLANE_CONVERSATION_CELERY_BROKER_URL"]["value"].startswith("rediss://:$(CHATPLANE_REDIS_PASSWORD)@")
    gateway = env_of(rendered.get("Deployment", fullname("gateway"))["spec"]["template"]["spec"]["containers"][0])
    assert gateway["CHATPLANE_GATEWAY_REDIS_URL"]["value"].startswith("rediss://:$(CHATPLANE_REDIS_PASSWORD)@redis.")


@pytest.fixture(scope="module")
def observed_chart(tmp_path_factory):
    """A copy of the chart with dashboards and an alert rule file, as the observability work adds them."""
    chart = tmp_path_factory.mktemp("chart") / "chatplane"
    shutil.copytree(CHART, chart)
    for name in ("Platform Overview.json", "inference.json"):
        (chart / "dashboards" / name).write_text(json.dumps({"title": name, "panels": []}))
    rule = {"alert": "InferenceQueueHigh", "expr": "vllm:num_requests_waiting > 10"}
    rules = {"groups": [{"name": "chatplane", "rules": [rule]}]}
    (chart / "rules" / "chatplane.yaml").write_text(yaml.safe_dump(rules))
    return chart


def dashboard_configmaps(rendered):
    return [c for c in rendered.of_kind("ConfigMap") if c["metadata"]["labels"].get("grafana_dashboard") == "1"]


@pytest.mark.parametrize("chart_source", ["the chart", "a chart with dashboards"])
def test_every_dashboard_becomes_exactly_one_configmap(chart_source, observed_chart):
    chart = CHART if chart_source == "the chart" else observed_chart
    rendered = render_chart(chart, {"observability": {"dashboards": {"enabled": True}}})
    files = sorted(p.name for p in (chart / "dashboards").glob("*.json"))
    maps = dashboard_configmaps(rendered)
    carried = sorted(key for cm in maps for key in cm["data"])
    assert carried == files, "one ConfigMap per JSON file, no copies"
    for cm in maps:
        (key, text), = cm["data"].items()
        assert json.loads(text) == json.loads((chart / "dashboards" / key).read_text())
    off = render_chart(chart, {"observability": {"dashboards": {"enabled": False}}})
    assert not dashboard_configmaps(off)


def test_alert_rules_become_one_prometheus_rule(observed_chart):
    rendered = render_chart(observed_chart, {"observability": {"prometheusRule": {"enabled": True}}})
    (rule,) = rendered.of_kind("PrometheusRule")
    assert rule["spec"]["groups"][0]["rules"][0]["alert"] == "InferenceQueueHigh"
    assert not render_chart(observed_chart, {}).of_kind("PrometheusRule")


def test_service_monitors_scrape_every_service(renders):
    rendered = renders["ci/gpu-adapter-eks-values.yaml"]
    monitors = {m["metadata"]["name"]: m for m in rendered.of_kind("ServiceMonitor")}
    assert set(monitors) == {
        fullname(n)
        for n in ("auth", "conversation", "gateway", "inference-smollm2", "conversation-worker", "auth-usage-consumer")
    }
    assert monitors[fullname("conversation-worker")]["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitors[fullname("gateway")]["spec"]["endpoints"][0]["port"] == "metrics"  # never the public port
    assert monitors[fullname("inference-smollm2")]["spec"]["endpoints"][0]["port"] == "metrics"
    for monitor in monitors.values():
        service = rendered.get("Service", monitor["metadata"]["name"])
        port_names = {p["name"] for p in service["spec"]["ports"]}
        assert monitor["spec"]["endpoints"][0]["port"] in port_names
    assert not renders["default"].of_kind("ServiceMonitor")


def test_otlp_endpoint_is_one_value(renders):
    rendered = renders["ci/gpu-adapter-eks-values.yaml"]
    for obj, spec in workloads(rendered):
        if obj["kind"] == "Deployment":
            env = env_of(spec["containers"][0])
            assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == "http://otel-collector.monitoring:4317"


# The side processes: the conversation jobs' Celery worker and the auth usage consumer -------------------------------
SIDE_PROCESSES = {
    "conversation-worker": (
        ["python", "-m", "chatplane.conversation", "worker"], "CHATPLANE_CONVERSATION_WORKER_METRICS_PORT", 9104
    ),
    "auth-usage-consumer": (
        ["python", "-m", "chatplane.auth", "consume-usage"], "CHATPLANE_AUTH_CONSUMER_METRICS_PORT", 9105
    ),
}


def test_side_processes_are_rendered_by_default_without_a_serving_port(default_render):
    for name, (args, metrics_env, port) in SIDE_PROCESSES.items():
        deployment = default_render.get("Deployment", fullname(name))
        (c,) = deployment["spec"]["template"]["spec"]["containers"]
        assert c["args"] == args, name
        assert c["ports"] == [{"name": "metrics", "containerPort": port, "protocol": "TCP"}], name
        env = env_of(c)
        assert env[metrics_env]["value"] == str(port), name
        assert not any(n.endswith("_PORT") and n != metrics_env for n in env), f"{name} serves no other port"
        assert not any(n.endswith("_AUTO_MIGRATE") for n in env), f"{name} never migrates: its service does"
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}, (name, probe)
        assert "lifecycle" not in c, f"{name}: no endpoints to drain"
        service = default_render.get("Service", fullname(name))
        assert service["spec"]["clusterIP"] == "None"
        assert [p["name"] for p in service["spec"]["ports"]] == ["metrics"], "the Service exists for scraping only"


def test_side_processes_get_secrets_only_through_secret_key_refs(renders):
    for rendered in renders.values():
        for name in SIDE_PROCESSES:
            deployment = rendered.find("Deployment", fullname(name))
            if deployment is None:
                continue
            env = env_of(deployment["spec"]["template"]["spec"]["containers"][0])
            for var, e in env.items():
                if "valueFrom" in e:
                    assert set(e["valueFrom"]) == {"secretKeyRef"}, (rendered.name, name, var)
            service = name.split("-")[0]
            url = env[f"CHATPLANE_{service.upper()}_DATABASE_URL"]["value"]
            role = service if rendered.values["postgresql"]["enabled"] else "chatplane"  # in-chart: its own role
            assert url.startswith(f"postgresql+asyncpg://{role}:$(CHATPLANE_DB_PASSWORD)@"), rendered.name
            assert "secretKeyRef" in env["CHATPLANE_DB_PASSWORD"]["valueFrom"]
    def main_env(name):
        return env_of(renders["default"].get("Deployment", fullname(name))["spec"]["template"]["spec"]["containers"][0])

    worker = main_env("conversation-worker")
    broker = worker["CHATPLANE_CONVERSATION_CELERY_BROKER_URL"]["value"]
    assert broker.startswith("redis://:$(CHATPLANE_REDIS_PASSWORD)@")
    assert json.loads(worker["CHATPLANE_INFERENCE_POOLS"]["value"])[0]["target"].startswith(f"dns:///{fullname('inference')}-")
    assert not any(v.startswith("CHATPLANE_AUTH_JWT_PRIVATE_KEY") for v in worker)
    consumer = main_env("auth-usage-consumer")
    # only the auth server signs tokens: the consumer never holds the private key
    assert not any(v.startswith("CHATPLANE_AUTH_JWT_PRIVATE_KEY") for v in consumer)
    assert consumer["CHATPLANE_ENVIRONMENT"]["value"] == "production"


def test_the_worker_is_a_single_replica_that_never_overlaps(renders):
    for rendered in renders.values():
        name = fullname("conversation-worker")
        spec = rendered.get("Deployment", name)["spec"]
        assert spec["replicas"] == 1, f"{rendered.name}: beat runs inside the worker"
        assert spec["strategy"] == {"type": "Recreate"}, f"{rendered.name}: a rollout must not run two schedulers"
        assert rendered.find("HorizontalPodAutoscaler", name) is None
        assert rendered.find("PodDisruptionBudget", name) is None


def test_a_second_worker_replica_is_refused():
    import helm_python

    for broken in ({"replicas": 2}, {"autoscaling": {"enabled": True}}):
        chart = helm_python.Chart.load(CHART)
        try:
            with pytest.raises(helm_python.HelmValuesError) as exc:
                chart.render({"components": {"conversation-worker": broken}}, name="cp", namespace="chat")
        finally:
            chart.close()
        assert "conversation-worker" in str(exc.value)


def test_the_usage_consumer_scales_and_needs_kafka(renders):
    scaled = [r for r in renders.values() if r.find("HorizontalPodAutoscaler", fullname("auth-usage-consumer"))]
    assert scaled, "some ci/*.yaml must autoscale the usage consumer"
    for rendered in scaled:
        assert rendered.get("PodDisruptionBudget", fullname("auth-usage-consumer"))
        assert "replicas" not in rendered.get("Deployment", fullname("auth-usage-consumer"))["spec"]
    no_kafka = render_chart(CHART, {"kafka": {"enabled": False, "external": {"bootstrapServers": ""}}})
    names = {o["metadata"]["name"] for o in no_kafka.objects}
    assert not {n for n in names if "usage-consumer" in n}, "consume-usage exits without Kafka: not rendered"
    assert fullname("conversation-worker") in names
    policies = {p["metadata"]["name"]: p for p in no_kafka.of_kind("NetworkPolicy")}
    assert "auth-usage-consumer" not in ingress_sources(policies[fullname("postgresql")])
