"""The inference pools (issue 10's chart side) over every values file: one Deployment, headless Service and autoscaler
per pool; one setting, CHATPLANE_INFERENCE_POOLS, in every caller; EndpointSlice discovery with its RBAC; connection
aging on every gRPC server."""

from __future__ import annotations

import json

from chart_support import NAMESPACE, env_of, fullname, inference_pools, workloads

GATEWAY_STREAM_TIMEOUT_SECONDS = 900.0  # CHATPLANE_GATEWAY_STREAM_TIMEOUT_SECONDS' default


def callers(rendered) -> list[str]:
    return sorted(n for n, c in rendered.values["components"].items() if "inference" in c.get("upstreams", []))


def first_container(rendered, name):
    deployment = rendered.find("Deployment", fullname(name))
    return None if deployment is None else deployment["spec"]["template"]["spec"]["containers"][0]


def test_every_pool_is_a_deployment_a_headless_service_and_its_own_selector(renders):
    for rendered in renders.values():
        selectors = []
        for name, pool in inference_pools(rendered).items():
            deployment = rendered.get("Deployment", fullname(f"inference-{name}"))
            service = rendered.get("Service", fullname(f"inference-{name}"))
            assert service["spec"]["clusterIP"] == "None"
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            selector = deployment["spec"]["selector"]["matchLabels"]
            assert service["spec"]["selector"] == selector and selector.items() <= labels.items()
            assert selector["chatplane.dev/inference-pool"] == name
            assert selector["app.kubernetes.io/component"] == "inference"
            selectors.append(selector)
            env = env_of(deployment["spec"]["template"]["spec"]["containers"][0])
            served = pool["model"]["servedModelName"] or pool["model"]["path"].rstrip("/").rsplit("/", 1)[-1]
            assert env["CHATPLANE_INFERENCE_SERVED_MODEL_NAME"]["value"] == served
        assert len({json.dumps(s, sort_keys=True) for s in selectors}) == len(selectors), rendered.name


def test_callers_get_one_setting_naming_every_pool(renders):
    for rendered in renders.values():
        pools = inference_pools(rendered)
        discovery = rendered.values["inference"]["discovery"]
        for obj, spec in workloads(rendered):
            for c in spec["containers"]:
                stale = [n for n in env_of(c) if n.endswith("_INFERENCE_TARGET")]
                assert not stale, f"{rendered.name}: {obj['metadata']['name']} still gets {stale}"
        for name in callers(rendered):
            c = first_container(rendered, name)
            if c is None or not pools:
                continue
            env = env_of(c)
            listed = json.loads(env["CHATPLANE_INFERENCE_POOLS"]["value"])
            assert [p["name"] for p in listed] == list(pools), (rendered.name, name)
            for entry in listed:
                pool = pools[entry["name"]]
                service = fullname(f"inference-{entry['name']}")
                assert rendered.find("Service", service) is not None
                if discovery == "kubernetes":
                    assert entry["target"] == f"kubernetes:///{service}.{NAMESPACE}:{pool['port']}"
                else:
                    assert entry["target"] == f"dns:///{service}.{NAMESPACE}.svc.cluster.local:{pool['port']}"
                assert entry["policy"] == pool["policy"]
                assert entry["model"]
            assert float(env["CHATPLANE_INFERENCE_DISCOVERY_INTERVAL_SECONDS"]["value"]) > 0
    two = renders["ci/pools-values.yaml"]
    listed = json.loads(env_of(first_container(two, "gateway"))["CHATPLANE_INFERENCE_POOLS"]["value"])
    assert [(p["name"], p["model"], p["policy"]) for p in listed] == [
        ("qwen", "qwen2.5-7b-instruct", "affinity"), ("smollm2", "SmolLM2-135M-Instruct", "least_loaded")
    ]


def test_each_pool_has_its_own_scheduling_scaling_and_rollout(renders):
    rendered = renders["ci/pools-values.yaml"]
    qwen = rendered.get("Deployment", fullname("inference-qwen"))
    small = rendered.get("Deployment", fullname("inference-smollm2"))
    qwen_pod, small_pod = qwen["spec"]["template"]["spec"], small["spec"]["template"]["spec"]
    assert qwen_pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert small_pod["nodeSelector"] == {"workload": "cpu-inference"}
    assert {"key": "dedicated", "operator": "Equal", "value": "cpu-inference", "effect": "NoSchedule"} in (
        small_pod["tolerations"])
    assert "nvidia.com/gpu" in qwen_pod["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in small_pod["containers"][0]["resources"]["limits"]
    assert rendered.find("ScaledObject", fullname("inference-qwen")) is not None
    assert rendered.find("HorizontalPodAutoscaler", fullname("inference-smollm2")) is not None
    assert qwen["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    assert small["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    # the shared defaults still apply where a pool says nothing
    assert env_of(small_pod["containers"][0])["CHATPLANE_INFERENCE_MAX_NUM_SEQS"]["value"] == "32"
    assert env_of(small_pod["containers"][0])["CHATPLANE_INFERENCE_MAX_WAITING"]["value"] == "128"
    assert env_of(qwen_pod["containers"][0])["CHATPLANE_INFERENCE_ENFORCE_EAGER"]["value"] == "false"
    assert env_of(small_pod["containers"][0])["CHATPLANE_INFERENCE_ENFORCE_EAGER"]["value"] == "true"


def test_each_pool_hears_only_the_inference_callers(renders):
    rendered = renders["ci/pools-values.yaml"]
    for name in ("qwen", "smollm2"):
        policy = rendered.get("NetworkPolicy", fullname(f"inference-{name}"))
        assert policy["spec"]["podSelector"]["matchLabels"]["chatplane.dev/inference-pool"] == name
        sources = sorted(
            peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
            for rule in policy["spec"]["ingress"] for peer in rule["from"] if "podSelector" in peer
        )
        assert sources == callers(rendered)


def test_endpointslice_discovery_gets_a_role_for_the_callers_only(renders):
    for rendered in renders.values():
        kubernetes = rendered.values["inference"]["discovery"] == "kubernetes"
        account = fullname("inference-client")
        role = rendered.find("Role", account)
        assert (role is not None) == kubernetes, rendered.name
        if not kubernetes:
            assert not rendered.of_kind("RoleBinding")
            continue
        assert role["rules"] == [
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]}
        ]
        binding = rendered.get("RoleBinding", account)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]
        assert rendered.get("ServiceAccount", account)
        for obj, spec in workloads(rendered):
            component = obj["metadata"]["labels"]["app.kubernetes.io/component"]
            uses = spec["serviceAccountName"] == account
            assert uses == (component in callers(rendered)), (rendered.name, obj["metadata"]["name"])


def test_every_grpc_server_ages_its_connections_and_streams_outlive_the_grace(renders):
    for rendered in renders.values():
        servers = [(n, f"CHATPLANE_{n.upper()}_") for n, c in rendered.values["components"].items()
                   if c.get("protocol") == "grpc" and c["enabled"]]
        servers += [(f"inference-{p}", "CHATPLANE_INFERENCE_") for p in inference_pools(rendered)]
        for name, prefix in servers:
            c = first_container(rendered, name)
            assert c is not None, (rendered.name, name)
            env = env_of(c)
            age = float(env[f"{prefix}MAX_CONNECTION_AGE_SECONDS"]["value"])
            grace = float(env[f"{prefix}MAX_CONNECTION_AGE_GRACE_SECONDS"]["value"])
            assert age > 0, (rendered.name, name)
            if name.startswith(("inference", "conversation")):
                # streams (a chat completion, a conversation reply) last up to the gateway's stream deadline
                assert grace >= GATEWAY_STREAM_TIMEOUT_SECONDS, (rendered.name, name)
            else:
                assert 10 <= grace < age, (rendered.name, name)
