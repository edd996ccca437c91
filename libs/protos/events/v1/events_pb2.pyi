import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventEnvelope(_message.Message):
    __slots__ = ("event_id", "type", "occurred_at", "user_id", "key", "producer", "traceparent", "user_signed_up", "api_key_created", "api_key_revoked", "conversation_created", "conversation_deleted", "message_stored", "completion_finished")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    USER_SIGNED_UP_FIELD_NUMBER: _ClassVar[int]
    API_KEY_CREATED_FIELD_NUMBER: _ClassVar[int]
    API_KEY_REVOKED_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_CREATED_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_DELETED_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_STORED_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_FINISHED_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    type: str
    occurred_at: _timestamp_pb2.Timestamp
    user_id: str
    key: str
    producer: str
    traceparent: str
    user_signed_up: UserSignedUp
    api_key_created: ApiKeyCreated
    api_key_revoked: ApiKeyRevoked
    conversation_created: ConversationCreated
    conversation_deleted: ConversationDeleted
    message_stored: MessageStored
    completion_finished: CompletionFinished
    def __init__(self, event_id: _Optional[str] = ..., type: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., user_id: _Optional[str] = ..., key: _Optional[str] = ..., producer: _Optional[str] = ..., traceparent: _Optional[str] = ..., user_signed_up: _Optional[_Union[UserSignedUp, _Mapping]] = ..., api_key_created: _Optional[_Union[ApiKeyCreated, _Mapping]] = ..., api_key_revoked: _Optional[_Union[ApiKeyRevoked, _Mapping]] = ..., conversation_created: _Optional[_Union[ConversationCreated, _Mapping]] = ..., conversation_deleted: _Optional[_Union[ConversationDeleted, _Mapping]] = ..., message_stored: _Optional[_Union[MessageStored, _Mapping]] = ..., completion_finished: _Optional[_Union[CompletionFinished, _Mapping]] = ...) -> None: ...

class UserSignedUp(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class ApiKeyCreated(_message.Message):
    __slots__ = ("user_id", "api_key_id", "name")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    API_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    api_key_id: str
    name: str
    def __init__(self, user_id: _Optional[str] = ..., api_key_id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class ApiKeyRevoked(_message.Message):
    __slots__ = ("user_id", "api_key_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    API_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    api_key_id: str
    def __init__(self, user_id: _Optional[str] = ..., api_key_id: _Optional[str] = ...) -> None: ...

class ConversationCreated(_message.Message):
    __slots__ = ("conversation_id", "user_id")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    user_id: str
    def __init__(self, conversation_id: _Optional[str] = ..., user_id: _Optional[str] = ...) -> None: ...

class ConversationDeleted(_message.Message):
    __slots__ = ("conversation_id", "user_id", "reason")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    user_id: str
    reason: str
    def __init__(self, conversation_id: _Optional[str] = ..., user_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class MessageStored(_message.Message):
    __slots__ = ("conversation_id", "user_id", "message_id", "role", "status", "seq")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    user_id: str
    message_id: str
    role: str
    status: str
    seq: int
    def __init__(self, conversation_id: _Optional[str] = ..., user_id: _Optional[str] = ..., message_id: _Optional[str] = ..., role: _Optional[str] = ..., status: _Optional[str] = ..., seq: _Optional[int] = ...) -> None: ...

class CompletionFinished(_message.Message):
    __slots__ = ("request_id", "user_id", "api_key_id", "model", "prompt_tokens", "completion_tokens", "latency_ms", "ttft_ms", "finish_reason", "path", "conversation_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    API_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    TTFT_MS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    user_id: str
    api_key_id: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: int
    ttft_ms: int
    finish_reason: str
    path: str
    conversation_id: str
    def __init__(self, request_id: _Optional[str] = ..., user_id: _Optional[str] = ..., api_key_id: _Optional[str] = ..., model: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., latency_ms: _Optional[int] = ..., ttft_ms: _Optional[int] = ..., finish_reason: _Optional[str] = ..., path: _Optional[str] = ..., conversation_id: _Optional[str] = ...) -> None: ...
