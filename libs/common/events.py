"""Domain events: the one place where topics, keys and event types are named.

Every Kafka message value is a serialized :class:`EventEnvelope` (``proto/chatplane/events/v1/events.proto``);
the message key keeps one user's or one conversation's events in order (Kafka orders per partition, and a key
always maps to the same partition).

| topic | key | events |
|---|---|---|
| ``chatplane.auth.v1`` | user id | user.signed_up, api_key.created, api_key.revoked |
| ``chatplane.conversation.v1`` | conversation id | conversation.created, conversation.deleted, message.stored, message.deleted |
| ``chatplane.usage.v1`` | user id | completion.finished |
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from chatplane.common import tracing
from chatplane.common.db import utcnow
from chatplane.protos.events.v1 import events_pb2
from chatplane.protos.events.v1.events_pb2 import EventEnvelope

__all__ = ["EventEnvelope", "TOPICS", "Route", "ROUTES", "envelope", "decode", "topic_of"]

AUTH_TOPIC = "chatplane.auth.v1"
CONVERSATION_TOPIC = "chatplane.conversation.v1"
USAGE_TOPIC = "chatplane.usage.v1"
TOPICS = (AUTH_TOPIC, CONVERSATION_TOPIC, USAGE_TOPIC)


@dataclass(frozen=True)
class Route:
    """Where one event type goes: its envelope ``type``, topic, and the payload field that is the message key."""

    type: str
    topic: str
    key_field: str


# Envelope oneof field name -> route.
ROUTES: dict[str, Route] = {
    "user_signed_up": Route("user.signed_up", AUTH_TOPIC, "user_id"),
    "api_key_created": Route("api_key.created", AUTH_TOPIC, "user_id"),
    "api_key_revoked": Route("api_key.revoked", AUTH_TOPIC, "user_id"),
    "conversation_created": Route("conversation.created", CONVERSATION_TOPIC, "conversation_id"),
    "conversation_deleted": Route("conversation.deleted", CONVERSATION_TOPIC, "conversation_id"),
    "message_stored": Route("message.stored", CONVERSATION_TOPIC, "conversation_id"),
    "message_deleted": Route("message.deleted", CONVERSATION_TOPIC, "conversation_id"),
    "completion_finished": Route("completion.finished", USAGE_TOPIC, "user_id"),
}

Payload = (
    events_pb2.UserSignedUp
    | events_pb2.ApiKeyCreated
    | events_pb2.ApiKeyRevoked
    | events_pb2.ConversationCreated
    | events_pb2.ConversationDeleted
    | events_pb2.MessageStored
    | events_pb2.MessageDeleted
    | events_pb2.CompletionFinished
)

_FIELD_OF = {
    field.message_type.full_name: field.name
    for field in EventEnvelope.DESCRIPTOR.oneofs_by_name["payload"].fields
}


def envelope(
    payload: Payload,
    *,
    producer: str,
    event_id: str | None = None,
    occurred_at: datetime | None = None,
    traceparent: str = "",
) -> EventEnvelope:
    """Wrap a payload: a new event id, its type, the key (from the payload, see :data:`ROUTES`) and the time."""
    field = _FIELD_OF[payload.DESCRIPTOR.full_name]
    route = ROUTES[field]
    ts = Timestamp()
    ts.FromDatetime(occurred_at or utcnow())
    env = EventEnvelope(
        event_id=event_id or uuid.uuid4().hex,
        type=route.type,
        occurred_at=ts,
        user_id=getattr(payload, "user_id", ""),
        key=getattr(payload, route.key_field),
        producer=producer,
        # The current request's trace continues in the consumers of this event.
        traceparent=traceparent or tracing.current_traceparent(),
    )
    getattr(env, field).CopyFrom(payload)
    return env


def topic_of(env: EventEnvelope) -> str:
    field = env.WhichOneof("payload")
    if field is None:
        raise ValueError("event envelope without a payload")
    return ROUTES[field].topic


def decode(value: bytes) -> EventEnvelope:
    env = EventEnvelope()
    env.ParseFromString(value)
    return env
