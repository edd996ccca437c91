"""The channel's service config: auth's and conversation's idempotent reads are tried again after UNAVAILABLE,
writes never are."""

from __future__ import annotations

import grpc

from chatplane.common.errors import Unavailable, handled
from chatplane.common.grpc_client import channel
from chatplane.protos.auth.v1 import auth_pb2, auth_pb2_grpc


class FlakyAuth(auth_pb2_grpc.AuthServiceServicer):
    """Answers UNAVAILABLE to the first call of each method, then serves."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    def _flaky(self, method: str) -> None:
        self.calls[method] = self.calls.get(method, 0) + 1
        if self.calls[method] == 1:
            raise Unavailable("stopping (test)")

    @handled
    async def GetJwks(self, request, context):  # noqa: N802
        self._flaky("GetJwks")
        return auth_pb2.Jwks(json="{}")

    @handled
    async def SignUp(self, request, context):  # noqa: N802
        self._flaky("SignUp")
        return auth_pb2.User(id="u")


async def test_an_idempotent_read_is_retried_after_unavailable_and_a_write_is_not():
    server = grpc.aio.server()
    servicer = FlakyAuth()
    auth_pb2_grpc.add_AuthServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with channel(f"127.0.0.1:{port}") as chan:
            stub = auth_pb2_grpc.AuthServiceStub(chan)
            assert (await stub.GetJwks(auth_pb2.GetJwksRequest(), timeout=10)).json == "{}"
            assert servicer.calls["GetJwks"] == 2
            try:
                await stub.SignUp(auth_pb2.SignUpRequest(email="a@example.com", password="x" * 12), timeout=10)
                raise AssertionError("the write was retried")
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE
            assert servicer.calls["SignUp"] == 1
    finally:
        await server.stop(0)
