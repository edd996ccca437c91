"""The chart's side of service identity and least privilege: every gRPC server and client mounts its identity's
certificate (generated once, from cert-manager, or an existing Secret) and the chart's generated certificates really
complete a mutual TLS handshake; probes reach a plaintext health-only port; egress NetworkPolicies; one PostgreSQL
role per service; no secret in an environment variable that is not a secretKeyRef, none on a command line."""

from __future__ import annotations

import asyncio
import base64
import re

import grpc
import pytest
from chart_support import CHART, NAMESPACE, containers, env_of, fullname, render_chart, workloads
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

# What each workload is on the gRPC hops (the common name the servers' access lists name); None: no gRPC at all.
IDENTITIES = {"auth": "auth", "conversation": "conversation", "gateway": "gateway", "conversation-worker": "worker",
              "inference": "inference", "auth-usage-consumer": None, "auth-migrate": None,
              "conversation-migrate": None, "postgresql": None, "redis": None, "kafka": None}
GRPC_SERVERS = {"auth", "conversation", "inference"}


def identity_volume(spec, container):
    path = env_of(container).get("CHATPLANE_TLS_CERT_FILE", {}).get("value")
    if path is None:
        return None
    (mount,) = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert mount["readOnly"] is True
    return volume["secret"]["secretName"]


def certificate(rendered, secret_name: str) -> x509.Certificate:
    data = rendered.get("Secret", secret_name)["data"]
    assert sorted(data) == ["ca.crt", "tls.crt", "tls.key"]
    return x509.load_pem_x509_certificate(base64.b64decode(data["tls.crt"]))


def test_every_grpc_workload_mounts_its_identity_and_probes_a_health_port(renders):
    for rendered in renders.values():
        tls = rendered.values["tls"]
        for obj, spec in workloads(rendered):
            component = obj["metadata"]["labels"]["app.kubernetes.io/component"]
            identity = IDENTITIES[component]
            for c in containers(spec):
                where = f"{rendered.name}: {obj['metadata']['name']}"
                env = env_of(c)
                secret = identity_volume(spec, c)
                if not tls["enabled"]:
                    assert secret is None, where
                    if identity:  # a mesh provides mutual TLS: said explicitly, or production refuses to start
                        assert env["CHATPLANE_TLS_ALLOW_PLAINTEXT"]["value"] == "true", where
                    continue
                if identity is None:
                    assert secret is None and "CHATPLANE_TLS_ALLOW_PLAINTEXT" not in env, where
                    continue
                assert secret == tls["existingSecrets"].get(identity, fullname(f"tls-{identity}")), where
                assert {env[f"CHATPLANE_TLS_{k}_FILE"]["value"] for k in ("CERT", "KEY", "CA")} == {
                    f"{tls['mountPath']}/{f}" for f in ("tls.crt", "tls.key", "ca.crt")}, where
                if component in GRPC_SERVERS:
                    # the kubelet's gRPC probes cannot speak TLS: they use the plaintext health-only port
                    (health,) = [n for n in env if n.endswith("_HEALTH_PORT")]
                    assert env[health]["value"] == str(tls["healthPort"]), where
                    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                        assert c[probe]["grpc"]["port"] == tls["healthPort"], (where, probe)
                    assert tls["healthPort"] in [p["containerPort"] for p in c["ports"]], where


def test_generated_certificates_name_each_identity_and_its_service(default_render):
    ca = x509.load_pem_x509_certificate(base64.b64decode(
        default_render.get("Secret", fullname("tls-ca"))["data"]["tls.crt"]))
    for identity in ("auth", "conversation", "gateway", "inference", "worker"):
        cert = certificate(default_render, fullname(f"tls-{identity}"))
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == identity
        assert cert.issuer == ca.subject
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(usages)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName)
        assert identity in names
        if identity in ("auth", "conversation"):
            assert f"{fullname(identity)}.{NAMESPACE}.svc.cluster.local" in names
    inference = certificate(default_render, fullname("tls-inference"))
    names = inference.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert f"{fullname('inference-smollm2')}.{NAMESPACE}.svc.cluster.local" in names.get_values_for_type(x509.DNSName)
    # no pod mounts the CA's key
    for obj, spec in workloads(default_render):
        assert all(v.get("secret", {}).get("secretName") != fullname("tls-ca") for v in spec["volumes"])


def test_the_generated_certificates_complete_mutual_tls_with_the_services_code(default_render, tmp_path, monkeypatch):
    """auth's certificate on a real GrpcService, the gateway's on a real channel, dialled by the Service's DNS name
    as the gateway dials it: the handshake and the health call succeed, and a plaintext caller is refused."""
    from chatplane.common.grpc_client import channel
    from chatplane.common.grpc_server import GrpcService

    def use(identity: str) -> None:
        data = default_render.get("Secret", fullname(f"tls-{identity}"))["data"]
        for key, setting in (("tls.crt", "CERT"), ("tls.key", "KEY"), ("ca.crt", "CA")):
            path = tmp_path / f"{identity}-{key}"
            path.write_bytes(base64.b64decode(data[key]))
            monkeypatch.setenv(f"CHATPLANE_TLS_{setting}_FILE", str(path))

    async def main() -> None:
        use("auth")
        service = GrpcService(["chatplane.auth.v1.AuthService"])
        port = await service.start("127.0.0.1:0")
        await service.set_serving()
        try:
            use("gateway")
            chan = channel(f"127.0.0.1:{port}", server_name=f"{fullname('auth')}.{NAMESPACE}.svc.cluster.local")
            async with chan:
                reply = await health_pb2_grpc.HealthStub(chan).Check(health_pb2.HealthCheckRequest(), timeout=10)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as plain:
                with pytest.raises(grpc.aio.AioRpcError):
                    await health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=3)
        finally:
            await service.stop(0)

    asyncio.run(main())


def test_cert_manager_issues_one_certificate_per_identity():
    rendered = render_chart(CHART, {"tls": {"certManager": {"enabled": True}, "existingSecrets": {"gateway": "gw"}}})
    assert not [s for s in rendered.of_kind("Secret") if "-tls-" in s["metadata"]["name"]], "no generated certificate"
    certificates = {c["spec"]["commonName"]: c["spec"] for c in rendered.of_kind("Certificate")
                    if not c["spec"].get("isCA")}
    assert sorted(certificates) == ["auth", "conversation", "inference", "worker"], "the gateway's Secret is given"
    for identity, spec in certificates.items():
        assert spec["secretName"] == fullname(f"tls-{identity}")
        assert {"server auth", "client auth"} <= set(spec["usages"])
        assert spec["issuerRef"] == {"name": fullname("ca"), "kind": "Issuer", "group": "cert-manager.io"}
    assert certificates["auth"]["dnsNames"][1] == fullname("auth")
    (ca,) = [c for c in rendered.of_kind("Certificate") if c["spec"].get("isCA")]
    assert {i["metadata"]["name"] for i in rendered.of_kind("Issuer")} == {fullname("selfsigned"), fullname("ca")}
    assert ca["spec"]["secretName"] == fullname("tls-ca")
    gateway = rendered.get("Deployment", fullname("gateway"))["spec"]["template"]["spec"]
    assert identity_volume(gateway, gateway["containers"][0]) == "gw"
    # an organisation's issuer: no CA of the release's own
    corp = render_chart(CHART, {"tls": {"certManager": {"enabled": True, "issuerRef": {
        "name": "corp", "kind": "ClusterIssuer", "group": "cert-manager.io"}}}})
    assert not corp.of_kind("Issuer")
    assert {c["spec"]["issuerRef"]["name"] for c in corp.of_kind("Certificate")} == {"corp"}


def dns_rule(rule) -> bool:
    return sorted((p["port"], p["protocol"]) for p in rule["ports"]) == [(53, "TCP"), (53, "UDP")]


def egress_targets(policy) -> set[tuple[str, int]]:
    """(the component a rule reaches, or "*" for any address, port) of every non-DNS egress rule."""
    found = set()
    for rule in policy["spec"]["egress"]:
        if dns_rule(rule):
            continue
        peers = [t["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for t in rule.get("to", [])
                 if "podSelector" in t] or ["*"]
        found |= {(peer, p["port"]) for peer in peers for p in rule["ports"]}
    return found


def test_each_workload_reaches_out_only_to_what_it_uses(renders):
    default = {p["metadata"]["name"]: p for p in renders["default"].of_kind("NetworkPolicy")}
    assert default[fullname("default-deny")]["spec"]["policyTypes"] == ["Ingress", "Egress"]
    expected = {
        "gateway": {("auth", 50051), ("conversation", 50052), ("inference", 50053), ("redis", 6379), ("kafka", 9092)},
        "auth": {("postgresql", 5432), ("kafka", 9092)},
        "auth-usage-consumer": {("postgresql", 5432), ("kafka", 9092)},
        "conversation": {("inference", 50053), ("postgresql", 5432), ("redis", 6379), ("kafka", 9092)},
        "conversation-worker": {("inference", 50053), ("postgresql", 5432), ("redis", 6379)},
        "inference-smollm2": set(), "postgresql": set(), "redis": set(), "kafka": set(),
        "auth-migrate": {("postgresql", 5432)}, "conversation-migrate": {("postgresql", 5432)},
    }
    for name, targets in expected.items():
        policy = default[fullname(name)]
        assert "Egress" in policy["spec"]["policyTypes"], name
        assert any(dns_rule(r) for r in policy["spec"]["egress"]), f"{name}: DNS"
        assert egress_targets(policy) == targets, name
    # every pod the chart runs is selected by a policy with egress rules of its own
    for rendered in renders.values():
        if not rendered.values["networkPolicy"]["enabled"]:
            continue
        policies = [p for p in rendered.of_kind("NetworkPolicy") if p["metadata"]["name"] != fullname("default-deny")]
        for obj, spec in workloads(rendered):
            labels = obj["spec"]["template"]["metadata"]["labels"]
            assert any(p["spec"]["podSelector"]["matchLabels"].items() <= labels.items() and "egress" in p["spec"]
                       for p in policies), f"{rendered.name}: {obj['metadata']['name']}"
    # external stores: any address, on their ports only
    external = {p["metadata"]["name"]: p for p in renders["ci/external-values.yaml"].of_kind("NetworkPolicy")}
    assert egress_targets(external[fullname("auth")]) == {("*", 5432), ("*", 9092)}


def test_each_service_connects_as_its_own_database_role(default_render):
    script = default_render.get("ConfigMap", fullname("postgresql-init"))["data"]["create-databases.sh"]
    secret = default_render.get("Secret", fullname("postgresql"))
    for db in ("auth", "conversation"):
        assert f'CREATE ROLE "{db}" LOGIN' in script and f'CREATE DATABASE "{db}" OWNER "{db}"' in script
        assert f'REVOKE ALL ON DATABASE "{db}" FROM PUBLIC' in script
        assert f"{db}-password" in secret["data"]
    assert "PASSWORD '${CHATPLANE_ROLE_PASSWORD_AUTH}'" in script and "<<EOSQL" in script, "passwords on stdin"
    for obj, spec in workloads(default_render):
        for c in containers(spec):
            env = env_of(c)
            for name, e in env.items():
                m = re.match(r"postgresql\+asyncpg://(\w+):\$\(CHATPLANE_DB_PASSWORD\)@[^/]+/(\w+)$", e.get("value", ""))
                if m:
                    assert m[1] == m[2], f"{obj['metadata']['name']} connects to {m[2]} as {m[1]}"
                    assert env["CHATPLANE_DB_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == f"{m[2]}-password"


def test_no_secret_on_a_command_line_or_in_a_plain_variable(renders):
    for rendered in renders.values():
        for obj, spec in workloads(rendered):
            for c in containers(spec):
                where = f"{rendered.name}: {obj['metadata']['name']}/{c['name']}"
                secret_vars = {n for n, e in env_of(c).items() if "secretKeyRef" in e.get("valueFrom", {})}
                line = " ".join(c.get("command", []) + c.get("args", []))
                for var in secret_vars:
                    # Kubernetes expands $(VAR) into the process's arguments, which any local user can read
                    assert f"$({var})" not in line, where
                assert "--requirepass" not in line, where
                assert not any("PRIVATE_KEY" in n and not n.endswith("_FILE") for n in env_of(c)), where
