"""The platform as the chart deploys it, run from our images with podman (`make test-podman`: the images, then this).

podman-up renders the chart, runs its workloads as pods (deploy/podman/podman_up.py) and gives the gateway's URL;
these tests go through the public API only, the way a user does: sign up, a chat completion answering Paris (the
official openai SDK), a streamed conversation message, usage (Kafka -> the usage consumer -> auth), an export (the
Celery worker); then the inference container is restarted under a running stream and what the user saw is written to
test-artifacts/podman/inference-restart.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import kubelet  # noqa: E402
import manifests  # noqa: E402
import podman_up  # noqa: E402

REPO = HERE.parents[2]
ARTIFACTS = REPO / "test-artifacts" / "podman"
MODEL = "SmolLM2-135M-Instruct"
PARIS = [{"role": "user", "content": "What is the capital of France?"}]

# The platform starts once for the module (a few minutes: the engine loads) and the restart waits for it again.
pytestmark = pytest.mark.timeout(1800)

if subprocess.run(["podman", "info"], capture_output=True).returncode != 0:  # pragma: no cover - machine check
    pytest.skip("podman does not work here (run ../shared/tools/podman-setup.sh as root)", allow_module_level=True)


# More values files over deploy/podman/values.yaml, e.g. PODMAN_UP_VALUES="my-values.yaml".
VALUES = [manifests.LOCAL_VALUES, *(Path(p) for p in os.environ.get("PODMAN_UP_VALUES", "").split())]


@pytest.fixture(scope="module")
def platform():
    podman_up.down()  # what an interrupted run may have left
    try:
        up = podman_up.up(VALUES)
    except manifests.UpError as exc:
        podman_up.down()
        pytest.fail(f"podman-up failed: {exc}")
    print(f"\nplatform up in {up.seconds:.0f} s: {up.url}")
    try:
        yield up
    finally:
        podman_up.down()


@pytest.fixture(scope="module")
def user(platform):
    with httpx.Client(base_url=platform.url, timeout=120) as http:
        email, password = f"podman-{uuid.uuid4().hex[:8]}@example.com", "a long password for podman"
        r = http.post("/v1/auth/signup", json={"email": email, "password": password})
        assert r.status_code == 201, r.text
        token = http.post("/v1/auth/login", json={"email": email, "password": password}).json()["access_token"]
        r = http.post("/v1/api-keys", json={"name": "podman"}, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 201, r.text
        return {"Authorization": f"Bearer {r.json()['key']}"}


def sse(lines) -> list:
    return [line[6:] if line[6:] == "[DONE]" else json.loads(line[6:]) for line in lines if line.startswith("data: ")]


def test_every_workload_runs_from_our_images_with_the_chart_settings(platform):
    pods = json.loads(kubelet.podman("pod", "ps", "--format", "json", "--filter",
                                      f"label={manifests.LABEL}={manifests.RELEASE}"))
    assert {p["Name"] for p in pods} == {pod for names in platform.pods.values() for pod in names}
    assert len(platform.pods["chatplane-auth"]) == 2 and platform.pods["chatplane-postgresql"] == ["chatplane-postgresql-0"]
    assert {"chatplane-gateway", "chatplane-inference-smollm2", "chatplane-conversation-worker", "chatplane-redis",
            "chatplane-kafka", "chatplane-auth-usage-consumer", "chatplane-conversation"} <= set(platform.pods)
    gateway = json.loads(kubelet.podman("inspect", f"{platform.pods['chatplane-gateway'][0]}-gateway"))[0]
    assert gateway["Config"]["User"] == "10001:10001" or gateway["Config"]["User"].startswith("10001")
    assert gateway["HostConfig"]["ReadonlyRootfs"] is True
    assert gateway["ImageName"].endswith("chatplane/gateway:0.1.0")
    assert {"NetworkPolicy", "PodDisruptionBudget"} <= set(platform.skipped), "rendered, not executable here"


def test_grpc_inside_is_mutual_tls_with_the_chart_certificates(platform):
    """The chart's generated certificates in use: auth's gRPC port refuses a plaintext caller, its health-only port
    (the probes') answers without TLS, the gateway's certificate gets auth's keys, another identity's is refused."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from chatplane.protos.auth.v1 import auth_pb2, auth_pb2_grpc

    secrets = kubelet.load_state()["secrets"]
    ip = kubelet.pod_ip(platform.pods["chatplane-auth"][0])

    def tls_channel(identity: str) -> grpc.Channel:
        files = secrets[f"chatplane-tls-{identity}"]
        credentials = grpc.ssl_channel_credentials(files["ca.crt"].encode(), files["tls.key"].encode(),
                                                   files["tls.crt"].encode())
        return grpc.secure_channel(f"{ip}:50051", credentials, options=[
            ("grpc.ssl_target_name_override", "chatplane-auth.chatplane.svc.cluster.local")])

    with grpc.insecure_channel(f"{ip}:50051") as plain, pytest.raises(grpc.RpcError):
        health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=5)
    with grpc.insecure_channel(f"{ip}:8081") as health:
        reply = health_pb2_grpc.HealthStub(health).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:  # the health port serves nothing else
            auth_pb2_grpc.AuthServiceStub(health).GetJwks(auth_pb2.GetJwksRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    with tls_channel("gateway") as chan:
        assert auth_pb2_grpc.AuthServiceStub(chan).GetJwks(auth_pb2.GetJwksRequest(), timeout=10).json
    with tls_channel("worker") as chan, pytest.raises(grpc.RpcError) as err:
        auth_pb2_grpc.AuthServiceStub(chan).GetJwks(auth_pb2.GetJwksRequest(), timeout=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_the_web_app_and_the_health_of_every_backend(platform):
    with httpx.Client(base_url=platform.url, timeout=30) as http:
        assert http.get("/readyz").status_code == 200
        page = http.get("/")
        assert page.status_code == 200 and "<html" in page.text.lower(), "the gateway image serves the web app"


def test_a_chat_completion_answers_paris(platform, user):
    import openai

    client = openai.OpenAI(base_url=f"{platform.url}/v1", api_key=user["Authorization"][7:], max_retries=0)
    reply = client.chat.completions.create(model=MODEL, messages=PARIS, temperature=0, max_tokens=30)
    assert "Paris" in reply.choices[0].message.content
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_a_streamed_conversation_message_usage_and_an_export(platform, user):
    with httpx.Client(base_url=platform.url, timeout=120) as http:
        conversation = http.post("/v1/conversations", json={"title": "Geography"}, headers=user).json()
        with http.stream("POST", f"/v1/conversations/{conversation['id']}/messages", headers=user,
                         json={"content": PARIS[0]["content"], "stream": True, "temperature": 0, "max_tokens": 30}) as r:
            assert r.status_code == 200, r.read()
            events = sse(r.iter_lines())
        assert events[-1] == "[DONE]" and events[0]["type"] == "message.started"
        text = "".join(e["delta"] for e in events if isinstance(e, dict) and e.get("type") == "message.delta")
        assert "Paris" in text
        done = events[-2]
        assert done["type"] == "message.done" and done["usage"]["completion_tokens"] > 0

        # usage: completion events through Kafka (the broker's pod) to the usage consumer's pod, into auth's database
        deadline = time.monotonic() + 120
        while True:
            totals = http.get("/v1/usage", headers=user).json()["totals"]
            if totals["requests"] >= 2 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert totals["requests"] >= 2 and totals["completion_tokens"] > 0, totals

        # an export: a job for the Celery worker's pod, through Redis
        job = http.post(f"/v1/conversations/{conversation['id']}/export", json={"format": "markdown"}, headers=user)
        assert job.status_code == 202, job.text
        url = f"/v1/conversations/{conversation['id']}/export/{job.json()['id']}"
        deadline = time.monotonic() + 120
        while (export := http.get(url, headers=user).json())["status"] == "pending" and time.monotonic() < deadline:
            time.sleep(1)
        assert export["status"] == "completed" and "Paris" in export["content"], export


STORY = {"model": MODEL, "stream": True, "temperature": 0, "max_tokens": 400,
         "messages": [{"role": "user", "content": "Tell a long story about a lighthouse keeper and the sea."}]}


def stream_through_a_restart(platform, user, pick_container) -> dict:
    """Stream STORY; after its 10th event restart the inference container `pick_container()` names (SIGTERM, 5 s,
    SIGKILL, started again, as the kubelet after a failed liveness probe) and record what the client saw."""
    seen: dict = {"events": 0, "text": "", "ended_with": None, "error": None, "finish_reason": None, "usage": None}
    restart: dict = {}

    def restart_inference() -> None:
        restart["container"] = pick_container()
        restart["at"] = time.monotonic()
        kubelet.restart_container(restart["container"], grace=5)

    started = time.monotonic()
    thread = None
    request = {**STORY, "stream_options": {"include_usage": True}}
    with httpx.Client(base_url=platform.url, timeout=httpx.Timeout(300, connect=10)) as http:
        try:
            with http.stream("POST", "/v1/chat/completions", json=request, headers=user) as r:
                assert r.status_code == 200, r.read()
                for line in r.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    if line[6:] == "[DONE]":
                        seen["ended_with"] = "[DONE]"
                        break
                    event = json.loads(line[6:])
                    if "error" in event:
                        seen["ended_with"], seen["error"] = "error event", event["error"]
                        continue
                    seen["usage"] = event.get("usage") or seen["usage"]
                    if not event.get("choices"):
                        continue
                    seen["events"] += 1
                    choice = event["choices"][0]
                    seen["text"] += (choice.get("delta") or {}).get("content") or ""
                    seen["finish_reason"] = choice.get("finish_reason") or seen["finish_reason"]
                    if seen["events"] == 10 and thread is None:
                        seen["characters_before_restart"] = len(seen["text"])
                        thread = threading.Thread(target=restart_inference)
                        thread.start()
        except httpx.HTTPError as exc:
            seen["ended_with"] = f"transport error: {type(exc).__name__}: {exc}"
        seen["stream_seconds"] = round(time.monotonic() - started, 1)
    thread.join(120)
    seen["restarted"] = restart["container"]
    seen["restart_seconds_after_start"] = round(restart["at"] - started, 1)
    return seen


def answers_again(platform, user, seen: dict) -> str | None:
    """The Paris answer once inference serves again (the restarted replica reloads its engine), waiting for it."""
    import openai

    back = time.monotonic()
    client = openai.OpenAI(base_url=f"{platform.url}/v1", api_key=user["Authorization"][7:], max_retries=0)
    answer = None
    errors = []
    while time.monotonic() - back < 420:
        try:
            answer = client.chat.completions.create(model=MODEL, messages=PARIS, temperature=0, max_tokens=20)
            break
        except openai.APIError as exc:
            errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
            time.sleep(2)
    seen["answers_again_after_seconds"] = round(time.monotonic() - back, 1)
    seen["errors_until_it_answers"] = sorted(set(errors))[:5]
    return answer.choices[0].message.content if answer else None


def record(name: str, seen: dict) -> None:
    seen["text"] = seen["text"][:300] + ("..." if len(seen["text"]) > 300 else "")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"{name}.json").write_text(json.dumps(seen, indent=2))
    print(f"\nwhat the user saw ({name}):", json.dumps(seen, indent=2))


def test_what_a_user_sees_when_the_only_inference_replica_restarts_under_a_stream(platform, user):
    """One replica: nothing can take the stream over. It must end visibly (an error event in OpenAI's shape, or
    completed), never cut off silently; then the platform answers again."""
    seen = stream_through_a_restart(
        platform, user, lambda: f"{platform.pods['chatplane-inference-smollm2'][0]}-inference")
    answer = answers_again(platform, user, seen)
    record("inference-restart-one-replica", seen)
    assert seen["ended_with"] in ("[DONE]", "error event"), f"the stream was cut off silently: {seen}"
    if seen["ended_with"] == "error event":
        assert seen["error"].get("message") and seen["error"].get("type"), seen
    assert answer is not None and "Paris" in answer, seen


def test_an_upgrade_runs_the_migration_jobs_and_keeps_the_secrets(platform, user):
    """`make podman-up` on a running release upgrades it, as `helm upgrade --install` would: the pre-upgrade hooks
    (the migrations Jobs, from the auth and conversation images, against the running database) run first, then the
    pods whose manifest changed are replaced one at a time. The generated secrets are kept (what `lookup` does in a
    cluster), so a token signed before the upgrade still works after it."""
    with httpx.Client(base_url=platform.url, timeout=60) as http:
        email, password = f"upgrade-{uuid.uuid4().hex[:8]}@example.com", "a long password for the upgrade"
        assert http.post("/v1/auth/signup", json={"email": email, "password": password}).status_code == 201
        token = http.post("/v1/auth/login", json={"email": email, "password": password}).json()["access_token"]
        upgraded = podman_up.up(VALUES)
        assert upgraded.url == platform.url
        assert upgraded.hooks == ["chatplane-auth-migrate", "chatplane-conversation-migrate"]
        # AUTO_MIGRATE turns off after the install (the Job migrates from now on): those Deployments roll out a new
        # revision; the rest, inference included, keep their pods
        rolled = {w for w, pods in upgraded.pods.items() if pods != platform.pods[w]}
        assert rolled == {"chatplane-auth", "chatplane-conversation"}, upgraded.pods
        assert set(upgraded.replaced) == set(upgraded.pods["chatplane-auth"] + upgraded.pods["chatplane-conversation"])
        # the gateway reaches the new pods (its channels re-resolve the Services' names) with the old token
        deadline = time.monotonic() + 60
        while (r := http.get("/v1/conversations", headers={"Authorization": f"Bearer {token}"})).status_code != 200:
            assert time.monotonic() < deadline, r.text
            time.sleep(1)
        assert http.get("/v1/models", headers=user).status_code == 200


def serving_replica(pods: list[str]) -> str:
    """The inference pod running a generation now (its engine's running-requests gauge, read from its metrics port
    at the pod's address, as Prometheus would)."""
    for _ in range(40):
        for pod in pods:
            text = httpx.get(f"http://{kubelet.pod_ip(pod)}:9090/metrics", timeout=5).text
            running = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                       if line.startswith("chatplane_inference_requests_running")]
            if running and max(running) > 0:
                return pod
        time.sleep(0.25)
    raise AssertionError(f"no inference replica of {pods} runs the stream")


def test_with_two_replicas_a_stream_survives_the_restart_of_its_replica(platform, user):
    """The pool scaled to two replicas (an upgrade with `inference.replicas: 2`: one pod added, the rest kept); the
    replica serving the stream is restarted under it and the callers' inference client continues the reply on the
    other one: the user sees one uninterrupted stream, to its length, with [DONE]."""
    scaled = podman_up.up(VALUES, overrides={"inference": {"replicas": 2}})
    pods = scaled.pods["chatplane-inference-smollm2"]
    assert len(pods) == 2 and pods[0] == platform.pods["chatplane-inference-smollm2"][0]
    assert scaled.replaced == [pods[1]], "only the new replica starts"
    seen = stream_through_a_restart(platform, user, lambda: f"{serving_replica(pods)}-inference")
    answer = answers_again(platform, user, seen)
    record("inference-restart-two-replicas", seen)
    assert seen["ended_with"] == "[DONE]" and seen["error"] is None, seen
    assert seen["finish_reason"] in ("length", "stop"), seen
    assert seen["usage"] and seen["usage"]["completion_tokens"] > 10, seen
    assert answer is not None and "Paris" in answer, seen
