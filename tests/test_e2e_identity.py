"""Service identity through the real stack: every gRPC hop is mutual TLS, each server allows each method only to the
identities listed for it; a plaintext caller, a caller with another CA's certificate and a caller with the wrong
identity are refused, while the platform itself works (every other end-to-end test runs over these hops)."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chatplane.dev import devcerts
from chatplane.protos.auth.v1 import auth_pb2, auth_pb2_grpc
from chatplane.protos.conversation.v1 import conversation_pb2, conversation_pb2_grpc
from chatplane.protos.inference.v1 import inference_pb2, inference_pb2_grpc

pytestmark = pytest.mark.engine


def _auth(stack) -> str:
    return f"127.0.0.1:{stack.ports.auth}"


def _conversation(stack) -> str:
    return f"127.0.0.1:{stack.ports.conversation}"


async def test_a_plaintext_caller_is_refused(stack, account):
    for target in (_auth(stack), _conversation(stack), stack.inference):
        async with grpc.aio.insecure_channel(target) as chan:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await health_pb2_grpc.HealthStub(chan).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # no TLS handshake, no call
        async with grpc.aio.insecure_channel(_auth(stack)) as chan:
            with pytest.raises(grpc.aio.AioRpcError):
                await auth_pb2_grpc.AuthServiceStub(chan).CreateApiKey(
                    auth_pb2.CreateApiKeyRequest(user_id="0" * 32, name="stolen"), timeout=5)


async def test_a_certificate_of_another_ca_is_refused(stack, tmp_path):
    rogue = devcerts.ensure(tmp_path / "rogue-ca", ["gateway"])  # right name, wrong CA
    creds = grpc.ssl_channel_credentials(
        root_certificates=(rogue / "ca.pem").read_bytes(),
        private_key=(rogue / "gateway-key.pem").read_bytes(),
        certificate_chain=(rogue / "gateway.pem").read_bytes(),
    )
    async with grpc.aio.secure_channel(_auth(stack), creds) as chan:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await auth_pb2_grpc.AuthServiceStub(chan).GetJwks(auth_pb2.GetJwksRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def _denied(call) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, err.value


async def test_the_wrong_identity_is_refused_per_method(stack, tls_channel):
    # The jobs worker (and anything but the gateway) cannot make API keys, read limits or usage at auth...
    for identity in ("worker", "conversation", "inference", "usage", "probe"):
        async with tls_channel(_auth(stack), identity) as chan:
            auth = auth_pb2_grpc.AuthServiceStub(chan)
            await _denied(auth.CreateApiKey(auth_pb2.CreateApiKeyRequest(user_id="0" * 32, name="x"), timeout=5))
            await _denied(auth.GetLimits(auth_pb2.GetLimitsRequest(user_id="0" * 32), timeout=5))
            await _denied(auth.GetUsage(auth_pb2.GetUsageRequest(all_users=True), timeout=5))
            # ... though any identity of the platform may ask its health.
            reply = await health_pb2_grpc.HealthStub(chan).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    # ...nor read anyone's conversations.
    async with tls_channel(_conversation(stack), "worker") as chan:
        conv = conversation_pb2_grpc.ConversationServiceStub(chan)
        await _denied(conv.ListConversations(conversation_pb2.ListConversationsRequest(user_id="0" * 32), timeout=5))
    # Auth never calls the model.
    async with tls_channel(stack.inference, "auth") as chan:
        await _denied(inference_pb2_grpc.InferenceServiceStub(chan).ListModels(
            inference_pb2.ListModelsRequest(), timeout=5))
    # Auth records no completions any more (they go through the gateway's spool to Kafka): the method is gone.
    async with tls_channel(_auth(stack), "gateway") as chan:
        record = chan.unary_unary("/chatplane.auth.v1.AuthService/RecordCompletions",
                                  request_serializer=lambda _: b"", response_deserializer=lambda b: b)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await record(None, timeout=5)
        assert err.value.code() in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.PERMISSION_DENIED)


async def test_the_right_identities_are_served(stack, tls_channel):
    async with tls_channel(_auth(stack), "gateway") as chan:
        jwks = await auth_pb2_grpc.AuthServiceStub(chan).GetJwks(auth_pb2.GetJwksRequest(), timeout=5)
        assert jwks.json
    for identity in ("gateway", "conversation", "worker"):
        async with tls_channel(stack.inference, identity) as chan:
            models = await inference_pb2_grpc.InferenceServiceStub(chan).ListModels(
                inference_pb2.ListModelsRequest(), timeout=5)
            assert models.models
