"""Gateway test fixtures: the real FastAPI app against in-process grpc.aio test doubles of auth and conversation
(``FakeAuthServicer``, ``FakeConversationServicer``) that implement the proto contracts, the real inference service
on the synthetic engine (:mod:`chatplane.dev.inference`: two of them, two models in two pools), plus a real uvicorn
server for SSE, disconnect and SDK tests.

The servers are shared by the whole session (they are cheap to reset); every test gets a fresh app, so the
gateway's caches (API keys, JWKS, models) start empty in each test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import httpx
import jwt
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.timestamp_pb2 import Timestamp
from jwt.algorithms import OKPAlgorithm

from chatplane.common.errors import abort
from chatplane.common.grpc_server import GrpcService
from chatplane.dev.inference import Inference, calls, inference_service
from chatplane.dev.procs import free_port
from chatplane.gateway.app import create_app
from chatplane.gateway.settings import GatewaySettings
from chatplane.protos.auth.v1 import auth_pb2, auth_pb2_grpc
from chatplane.protos.conversation.v1 import conversation_pb2, conversation_pb2_grpc
from chatplane.protos.events.v1 import events_pb2
from chatplane.protos.inference.v1 import inference_pb2, inference_pb2_grpc

ISSUER = "chatplane-auth-test"
AUDIENCE = "chatplane-test"
MODEL = "test-model"
SLASH_MODEL = "org/slash-model"
REPLY_PIECES = ("Hello", ", ", "world", "!")  # the synthetic engine's script: every reply, one token each
MAX_MODEL_LEN = 2048
SECRET_DETAIL = "db password is hunter2 at /srv/internal.py:42"


def now_ts() -> Timestamp:
    ts = Timestamp()
    ts.FromSeconds(int(time.time()))
    return ts


# --- auth ---------------------------------------------------------------------------------------------------------


@dataclass
class FakeKey:
    id: str
    user_id: str
    name: str
    secret: str
    created_at: Timestamp
    revoked_at: Timestamp | None = None

    def proto(self) -> auth_pb2.ApiKey:
        key = auth_pb2.ApiKey(id=self.id, name=self.name, prefix=self.secret[:8], created_at=self.created_at)
        if self.revoked_at is not None:
            key.revoked_at.CopyFrom(self.revoked_at)
        return key


@dataclass
class SigningKey:
    kid: str
    private: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)

    def jwk(self) -> dict:
        jwk = OKPAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {**jwk, "kid": self.kid, "use": "sig", "alg": "EdDSA"}


class FakeAuthServicer(auth_pb2_grpc.AuthServiceServicer):
    """Test double of the auth service: in-memory users and API keys, Ed25519 JWTs."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.users: dict[str, tuple[str, str, Timestamp]] = {}  # email -> (id, password, created)
        self.keys: dict[str, FakeKey] = {}  # id -> key
        self.signing = [SigningKey("key-1")]
        self.authenticate_calls = 0
        self.jwks_calls = 0
        self.cache_ttl_seconds = 60
        self.limits: dict[str, auth_pb2.Limits] = {}  # user id -> what GetLimits answers (default: nothing)

    def sign(self, user_id: str, *, expires_in: int = 600, key: SigningKey | None = None, **claims) -> str:
        key = key or self.signing[0]
        payload = {"sub": user_id, "iss": ISSUER, "aud": AUDIENCE, "iat": int(time.time()),
                   "exp": int(time.time()) + expires_in, **claims}
        return jwt.encode(payload, key.private, algorithm="EdDSA", headers={"kid": key.kid})

    def new_signing_key(self, kid: str, *, publish: bool) -> SigningKey:
        """A fresh Ed25519 key; published in the JWKS (a rotation) or not (a forger's key)."""
        key = SigningKey(kid)
        if publish:
            self.signing.append(key)
        return key

    def add_user(self, email: str, password: str = "correct horse") -> str:
        user_id = uuid.uuid4().hex
        self.users[email] = (user_id, password, now_ts())
        return user_id

    def add_key(self, user_id: str, name: str = "test") -> FakeKey:
        key = FakeKey(uuid.uuid4().hex, user_id, name, f"sk-test-{uuid.uuid4().hex}", now_ts())
        self.keys[key.id] = key
        return key

    async def SignUp(self, request, context):
        if "@" not in request.email:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "Invalid email address.", code="invalid_email",
                        param="email")
        if request.email in self.users:
            await abort(context, grpc.StatusCode.ALREADY_EXISTS, "A user with this email already exists.",
                        code="email_taken", param="email")
        user_id = self.add_user(request.email, request.password)
        return auth_pb2.User(id=user_id, email=request.email, created_at=self.users[request.email][2])

    async def Login(self, request, context):
        user = self.users.get(request.email)
        if user is None or user[1] != request.password:
            await abort(context, grpc.StatusCode.UNAUTHENTICATED, "Incorrect email or password.",
                        code="invalid_credentials")
        return auth_pb2.Token(access_token=self.sign(user[0], email=request.email), token_type="bearer",
                              expires_in=600)

    async def Authenticate(self, request, context):
        self.authenticate_calls += 1
        for key in self.keys.values():
            if key.secret == request.credential and key.revoked_at is None:
                return auth_pb2.Principal(
                    user_id=key.user_id, credential_type=auth_pb2.CREDENTIAL_TYPE_API_KEY, api_key_id=key.id,
                    cache_ttl_seconds=self.cache_ttl_seconds,
                )
        await abort(context, grpc.StatusCode.UNAUTHENTICATED, "Unknown or revoked API key.")

    async def GetJwks(self, request, context):
        self.jwks_calls += 1
        return auth_pb2.Jwks(json=json.dumps({"keys": [k.jwk() for k in self.signing]}), issuer=ISSUER,
                             audience=AUDIENCE)

    async def CreateApiKey(self, request, context):
        key = self.add_key(request.user_id, request.name)
        return auth_pb2.CreatedApiKey(api_key=key.proto(), key=key.secret)

    async def ListApiKeys(self, request, context):
        return auth_pb2.ListApiKeysResponse(
            api_keys=[k.proto() for k in self.keys.values() if k.user_id == request.user_id]
        )

    async def GetLimits(self, request, context):
        return self.limits.get(request.user_id, auth_pb2.Limits())

    async def RevokeApiKey(self, request, context):
        key = self.keys.get(request.api_key_id)
        if key is None or key.user_id != request.user_id:
            await abort(context, grpc.StatusCode.NOT_FOUND, "No such API key.", code="api_key_not_found")
        if key.revoked_at is None:
            key.revoked_at = now_ts()
        return key.proto()


# --- conversation -------------------------------------------------------------------------------------------------


@dataclass
class FakeConversation:
    proto: conversation_pb2.Conversation
    user_id: str
    messages: list[conversation_pb2.Message] = field(default_factory=list)


class FakeConversationServicer(conversation_pb2_grpc.ConversationServiceServicer):
    """Test double of the conversation service: in-memory, per user; another user's conversation is NOT_FOUND.
    A message ``slow`` streams one delta and then waits to be cancelled."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.conversations: dict[str, FakeConversation] = {}
        self.replies: dict[str, conversation_pb2.Message] = {}  # Respond's stored replies by id
        self.requests: list = []
        self.cancelled = asyncio.Event()

    async def _get(self, context, user_id: str, conversation_id: str) -> FakeConversation:
        conv = self.conversations.get(conversation_id)
        if conv is None or conv.user_id != user_id:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"No conversation with id '{conversation_id}'.",
                        code="conversation_not_found")
        return conv

    async def CreateConversation(self, request, context):
        self.requests.append(request)
        conv = conversation_pb2.Conversation(id=uuid.uuid4().hex, title=request.title, created_at=now_ts(),
                                             updated_at=now_ts())
        self.conversations[conv.id] = FakeConversation(conv, request.user_id)
        return conv

    async def ListConversations(self, request, context):
        self.requests.append(request)
        mine = [c.proto for c in reversed(self.conversations.values()) if c.user_id == request.user_id
                and (request.include_archived or not c.proto.archived)]
        start = int(request.cursor or 0)
        limit = request.limit or 20
        page = mine[start:start + limit]
        more = start + limit < len(mine)
        return conversation_pb2.ListConversationsResponse(conversations=page,
                                                          next_cursor=str(start + limit) if more else "")

    async def GetConversation(self, request, context):
        conv = await self._get(context, request.user_id, request.conversation_id)
        return conversation_pb2.ConversationWithMessages(conversation=conv.proto, messages=conv.messages)

    async def UpdateConversation(self, request, context):
        self.requests.append(request)
        conv = await self._get(context, request.user_id, request.conversation_id)
        if request.HasField("title"):
            conv.proto.title = request.title
        if request.HasField("archived"):
            conv.proto.archived = request.archived
        return conv.proto

    async def DeleteConversation(self, request, context):
        await self._get(context, request.user_id, request.conversation_id)
        del self.conversations[request.conversation_id]
        return conversation_pb2.DeleteConversationResponse()

    async def SendMessage(self, request, context):
        self.requests.append(request)
        conv = await self._get(context, request.user_id, request.conversation_id)
        model = request.model or MODEL
        if request.regenerate:  # the last user message answered again; a question without reply is "streaming"
            users = [i for i, m in enumerate(conv.messages) if m.role == "user"]
            if not users:
                await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "no user message to answer",
                            code="no_user_message", param="regenerate")
            if users[-1] == len(conv.messages) - 1:
                await abort(context, grpc.StatusCode.ABORTED, "a reply is still streaming",
                            code="reply_in_progress", param="regenerate")
            user_msg = conv.messages[users[-1]]
            del conv.messages[users[-1] + 1:]
        else:
            user_msg = conversation_pb2.Message(id=uuid.uuid4().hex, role="user", content=request.content,
                                                status=conversation_pb2.MESSAGE_STATUS_COMPLETE, created_at=now_ts())
            conv.messages.append(user_msg)
        yield conversation_pb2.SendMessageEvent(
            started=conversation_pb2.SendMessageStarted(user_message_id=user_msg.id, model=model))
        try:
            if request.content == "slow":
                yield conversation_pb2.SendMessageEvent(delta=conversation_pb2.SendMessageDelta(text="Thinking"))
                await asyncio.sleep(30)
            pieces = ["Hi", " there"]
            for piece in pieces:
                yield conversation_pb2.SendMessageEvent(delta=conversation_pb2.SendMessageDelta(text=piece))
            reply = conversation_pb2.Message(
                id=uuid.uuid4().hex, role="assistant", content="".join(pieces),
                status=conversation_pb2.MESSAGE_STATUS_COMPLETE, model=model, prompt_tokens=5, completion_tokens=2,
                finish_reason="stop", created_at=now_ts(),
            )
            conv.messages.append(reply)
            yield conversation_pb2.SendMessageEvent(done=conversation_pb2.SendMessageDone(
                user_message_id=user_msg.id, assistant_message_id=reply.id, prompt_tokens=5, completion_tokens=2,
                finish_reason="stop", assistant_message=reply,
            ))
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


    async def Respond(self, request, context):
        """The Responses API double: ``tool`` in the last input's text gives a function call (the first tool, its
        arguments in two pieces), ``slow`` one delta and a wait; anything else "Hi there". Stored replies are kept
        for GetResponse."""
        self.requests.append(request)
        if request.previous_response_id and request.previous_response_id not in self.replies:
            await abort(context, grpc.StatusCode.NOT_FOUND, "previous response not found",
                        code="previous_response_not_found", param="previous_response_id")
        reply_id = uuid.uuid4().hex
        model = request.model or MODEL
        yield conversation_pb2.SendMessageEvent(started=conversation_pb2.SendMessageStarted(
            model=model, reply_id=reply_id, conversation_id=uuid.uuid4().hex if request.store else ""))
        last = request.input[-1].content
        try:
            reply = conversation_pb2.Message(
                id=reply_id, role="assistant", status=conversation_pb2.MESSAGE_STATUS_COMPLETE, model=model,
                prompt_tokens=5, completion_tokens=2, finish_reason="stop", created_at=now_ts())
            if last == "slow":
                yield conversation_pb2.SendMessageEvent(delta=conversation_pb2.SendMessageDelta(text="Thinking"))
                await asyncio.sleep(30)
            if "tool" in last and request.tools:
                name = request.tools[0].name
                pieces = [inference_pb2.ToolCallDelta(index=0, id="call_1", name=name, arguments='{"city":'),
                          inference_pb2.ToolCallDelta(index=0, arguments=' "Oslo"}')]
                for piece in pieces:
                    yield conversation_pb2.SendMessageEvent(delta=conversation_pb2.SendMessageDelta(tool_calls=[piece]))
                reply.tool_calls.add(id="call_1", name=name, arguments='{"city": "Oslo"}')
                reply.finish_reason = "tool_calls"
            else:
                pieces = ["Hi", " there"]
                for piece in pieces:
                    yield conversation_pb2.SendMessageEvent(delta=conversation_pb2.SendMessageDelta(text=piece))
                reply.content = "".join(pieces)
                if request.HasField("max_tokens") and request.max_tokens < 2:
                    reply.finish_reason = "length"
            if request.store:
                self.replies[reply_id] = reply
            yield conversation_pb2.SendMessageEvent(done=conversation_pb2.SendMessageDone(
                assistant_message_id=reply.id, prompt_tokens=5, completion_tokens=2,
                finish_reason=reply.finish_reason, assistant_message=reply,
            ))
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def GetResponse(self, request, context):
        reply = self.replies.get(request.response_id)
        if reply is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, "response not found")
        return conversation_pb2.StoredResponse(conversation_id="c", message=reply)


# --- servers and fixtures -----------------------------------------------------------------------------------------


@dataclass
class Backends:
    auth: FakeAuthServicer
    conversation: FakeConversationServicer
    inference: Inference  # serves MODEL
    slash: Inference  # serves SLASH_MODEL
    services: dict[str, GrpcService]
    targets: dict[str, str]
    # What the doubles and the synthetic engine answer, for assertions.
    model: str = MODEL
    slash_model: str = SLASH_MODEL
    reply_text: str = "".join(REPLY_PIECES)
    reply_pieces: tuple[str, ...] = REPLY_PIECES
    secret_detail: str = SECRET_DETAIL
    call_base: dict[str, float] = field(default_factory=dict)  # the inference calls before the test

    def count(self, content: str = "Hi", *, prompt: str | None = None) -> int:
        """The prompt tokens inference counts for one user message ``content`` (or a text ``prompt``)."""
        return self.inference.count(prompt=prompt) if prompt is not None else self.inference.count([("user", content)])

    def inference_calls(self, method: str) -> float:
        """Calls of ``method`` the inference servers got since the test started (their own metrics)."""
        return calls(method) - self.call_base.get(method, 0.0)


@pytest.fixture(scope="session")
async def fakes() -> AsyncIterator[Backends]:
    auth, conv = FakeAuthServicer(), FakeConversationServicer()
    services: dict[str, GrpcService] = {}
    targets: dict[str, str] = {}
    for name, servicer, add, full_name in (
        ("auth", auth, auth_pb2_grpc.add_AuthServiceServicer_to_server, "chatplane.auth.v1.AuthService"),
        ("conversation", conv, conversation_pb2_grpc.add_ConversationServiceServicer_to_server,
         "chatplane.conversation.v1.ConversationService"),
    ):
        service = GrpcService([full_name])
        add(servicer, service.server)
        port = await service.start("127.0.0.1:0")
        await service.set_serving(True)
        services[name] = service
        targets[name] = f"127.0.0.1:{port}"
    async with contextlib.AsyncExitStack() as stack:
        replicas = [
            await stack.enter_async_context(inference_service(
                served_model_name=model, max_model_len=MAX_MODEL_LEN, synthetic_script=list(REPLY_PIECES)))
            for model in (MODEL, SLASH_MODEL)
        ]
        targets["inference"] = json.dumps([
            {"name": "test", "model": MODEL, "target": replicas[0].target},
            {"name": "slash", "model": SLASH_MODEL, "target": replicas[1].target},
        ])
        yield Backends(auth, conv, replicas[0], replicas[1], services, targets)
    for service in services.values():
        await service.stop(0)


@pytest.fixture(autouse=True)
async def _reset(fakes: Backends) -> None:
    fakes.auth.reset()
    fakes.conversation.reset()
    fakes.call_base = {method: calls(method) for method in ("Generate", "ListModels", "CountTokens")}
    for inference in (fakes.inference, fakes.slash):
        inference.engine.reset()
        await inference.set_serving(True)
    for service in fakes.services.values():
        await service.set_serving(True)


@pytest.fixture
async def full_replica(settings: GatewaySettings) -> AsyncIterator[GatewaySettings]:
    """Gateway settings whose MODEL has one replica, and that one full: one request runs (held by this fixture, one
    token and then nothing for a minute), none may wait (``max_waiting`` 0)."""
    async with inference_service(served_model_name=MODEL, max_model_len=MAX_MODEL_LEN, max_num_seqs=1,
                                 max_waiting=0) as full:
        full.pace(60)
        async with grpc.aio.insecure_channel(full.target) as channel:
            held = inference_pb2_grpc.InferenceServiceStub(channel).Generate(inference_pb2.GenerateRequest(
                model=MODEL, prompt="hold the only slot", sampling=inference_pb2.SamplingParams(max_tokens=8)))
            await held.read()  # running: the first token came
            pools = json.dumps([{"name": "test", "model": MODEL, "target": full.target}])
            yield settings.model_copy(update={"inference_pools": pools})
            held.cancel()


def read_spool(path) -> list[events_pb2.EventEnvelope]:
    """The events in a gateway spool file (its local outbox), oldest first."""
    import sqlite3

    if not path.exists():
        return []
    with contextlib.closing(sqlite3.connect(path)) as conn:
        rows = conn.execute("SELECT payload FROM outbox ORDER BY id").fetchall()
    return [events_pb2.EventEnvelope.FromString(payload) for (payload,) in rows]


@pytest.fixture
def spooled(settings):
    """``spooled()``: the completions in the test gateway's spool, oldest first."""
    return lambda: [env.completion_finished for env in read_spool(settings.spool_path)]


@pytest.fixture
def settings(fakes: Backends, tmp_path) -> GatewaySettings:
    return GatewaySettings(
        data_dir=tmp_path,  # the completion spool
        auth_target=fakes.targets["auth"],
        conversation_target=fakes.targets["conversation"],
        inference_pools=fakes.targets["inference"],
        jwks_refresh_seconds=0.5,
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
        readiness_timeout_seconds=0.5,
        upstream_timeout_seconds=5,
    )


@contextlib.asynccontextmanager
async def asgi_client(settings: GatewaySettings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
            yield client


@pytest.fixture
async def client(settings: GatewaySettings) -> AsyncIterator[httpx.AsyncClient]:
    """The real app in-process (ASGI), against the doubles."""
    async with asgi_client(settings) as c:
        yield c


@pytest.fixture
def make_client():
    """Build an ASGI client with other settings (e.g. a backend that is down)."""
    return asgi_client


@contextlib.asynccontextmanager
async def live_server(settings: GatewaySettings) -> AsyncIterator[str]:
    """The real app behind a real uvicorn server on 127.0.0.1; its base URL."""
    port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(200):
        if server.started:
            break
        await asyncio.sleep(0.02)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


@pytest.fixture
async def live_url(settings: GatewaySettings) -> AsyncIterator[str]:
    """The real app behind a real uvicorn server (for SSE, disconnects and the openai SDK)."""
    async with live_server(settings) as url:
        yield url


@pytest.fixture
def make_live():
    """Start a real server with other settings: ``async with make_live(settings) as url``."""
    return live_server


@pytest.fixture
def user_key(fakes: Backends) -> FakeKey:
    """A user with a valid API key."""
    return fakes.auth.add_key(fakes.auth.add_user(f"{uuid.uuid4().hex[:8]}@example.com"))


@pytest.fixture
def auth_headers(user_key: FakeKey) -> dict[str, str]:
    return {"Authorization": f"Bearer {user_key.secret}"}
