import datetime

from chatplane.protos.events.v1 import events_pb2 as _events_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CredentialType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CREDENTIAL_TYPE_UNSPECIFIED: _ClassVar[CredentialType]
    CREDENTIAL_TYPE_API_KEY: _ClassVar[CredentialType]
    CREDENTIAL_TYPE_JWT: _ClassVar[CredentialType]

class QuotaPeriod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    QUOTA_PERIOD_UNSPECIFIED: _ClassVar[QuotaPeriod]
    QUOTA_PERIOD_DAY: _ClassVar[QuotaPeriod]
    QUOTA_PERIOD_MONTH: _ClassVar[QuotaPeriod]
CREDENTIAL_TYPE_UNSPECIFIED: CredentialType
CREDENTIAL_TYPE_API_KEY: CredentialType
CREDENTIAL_TYPE_JWT: CredentialType
QUOTA_PERIOD_UNSPECIFIED: QuotaPeriod
QUOTA_PERIOD_DAY: QuotaPeriod
QUOTA_PERIOD_MONTH: QuotaPeriod

class User(_message.Message):
    __slots__ = ("id", "email", "created_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    email: str
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., email: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SignUpRequest(_message.Message):
    __slots__ = ("email", "password")
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    email: str
    password: str
    def __init__(self, email: _Optional[str] = ..., password: _Optional[str] = ...) -> None: ...

class LoginRequest(_message.Message):
    __slots__ = ("email", "password")
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    email: str
    password: str
    def __init__(self, email: _Optional[str] = ..., password: _Optional[str] = ...) -> None: ...

class Token(_message.Message):
    __slots__ = ("access_token", "token_type", "expires_in")
    ACCESS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOKEN_TYPE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_FIELD_NUMBER: _ClassVar[int]
    access_token: str
    token_type: str
    expires_in: int
    def __init__(self, access_token: _Optional[str] = ..., token_type: _Optional[str] = ..., expires_in: _Optional[int] = ...) -> None: ...

class AuthenticateRequest(_message.Message):
    __slots__ = ("credential",)
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    credential: str
    def __init__(self, credential: _Optional[str] = ...) -> None: ...

class Principal(_message.Message):
    __slots__ = ("user_id", "email", "credential_type", "api_key_id", "cache_ttl_seconds", "limits")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_TYPE_FIELD_NUMBER: _ClassVar[int]
    API_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    CACHE_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    email: str
    credential_type: CredentialType
    api_key_id: str
    cache_ttl_seconds: int
    limits: Limits
    def __init__(self, user_id: _Optional[str] = ..., email: _Optional[str] = ..., credential_type: _Optional[_Union[CredentialType, str]] = ..., api_key_id: _Optional[str] = ..., cache_ttl_seconds: _Optional[int] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ...) -> None: ...

class GetJwksRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Jwks(_message.Message):
    __slots__ = ("json", "issuer", "audience")
    JSON_FIELD_NUMBER: _ClassVar[int]
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    json: str
    issuer: str
    audience: str
    def __init__(self, json: _Optional[str] = ..., issuer: _Optional[str] = ..., audience: _Optional[str] = ...) -> None: ...

class CreateApiKeyRequest(_message.Message):
    __slots__ = ("user_id", "name")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    name: str
    def __init__(self, user_id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class ApiKey(_message.Message):
    __slots__ = ("id", "name", "prefix", "created_at", "last_used_at", "revoked_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    prefix: str
    created_at: _timestamp_pb2.Timestamp
    last_used_at: _timestamp_pb2.Timestamp
    revoked_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., prefix: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_used_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoked_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreatedApiKey(_message.Message):
    __slots__ = ("api_key", "key")
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    api_key: ApiKey
    key: str
    def __init__(self, api_key: _Optional[_Union[ApiKey, _Mapping]] = ..., key: _Optional[str] = ...) -> None: ...

class ListApiKeysRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class ListApiKeysResponse(_message.Message):
    __slots__ = ("api_keys",)
    API_KEYS_FIELD_NUMBER: _ClassVar[int]
    api_keys: _containers.RepeatedCompositeFieldContainer[ApiKey]
    def __init__(self, api_keys: _Optional[_Iterable[_Union[ApiKey, _Mapping]]] = ...) -> None: ...

class RevokeApiKeyRequest(_message.Message):
    __slots__ = ("user_id", "api_key_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    API_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    api_key_id: str
    def __init__(self, user_id: _Optional[str] = ..., api_key_id: _Optional[str] = ...) -> None: ...

class CompletionRecord(_message.Message):
    __slots__ = ("event_id", "completion", "traceparent")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    completion: _events_pb2.CompletionFinished
    traceparent: str
    def __init__(self, event_id: _Optional[str] = ..., completion: _Optional[_Union[_events_pb2.CompletionFinished, _Mapping]] = ..., traceparent: _Optional[str] = ...) -> None: ...

class RecordCompletionsRequest(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[CompletionRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[CompletionRecord, _Mapping]]] = ...) -> None: ...

class RecordCompletionsResponse(_message.Message):
    __slots__ = ("recorded", "rejected_event_ids")
    RECORDED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_EVENT_IDS_FIELD_NUMBER: _ClassVar[int]
    recorded: int
    rejected_event_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, recorded: _Optional[int] = ..., rejected_event_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class Quota(_message.Message):
    __slots__ = ("user_id", "api_key_id", "period", "token_limit", "used_tokens", "period_start", "period_end")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    API_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    TOKEN_LIMIT_FIELD_NUMBER: _ClassVar[int]
    USED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    api_key_id: str
    period: QuotaPeriod
    token_limit: int
    used_tokens: int
    period_start: _timestamp_pb2.Timestamp
    period_end: _timestamp_pb2.Timestamp
    def __init__(self, user_id: _Optional[str] = ..., api_key_id: _Optional[str] = ..., period: _Optional[_Union[QuotaPeriod, str]] = ..., token_limit: _Optional[int] = ..., used_tokens: _Optional[int] = ..., period_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., period_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RateLimits(_message.Message):
    __slots__ = ("requests_per_minute", "tokens_per_minute")
    REQUESTS_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    requests_per_minute: int
    tokens_per_minute: int
    def __init__(self, requests_per_minute: _Optional[int] = ..., tokens_per_minute: _Optional[int] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("is_admin", "rate_limits", "quotas")
    IS_ADMIN_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMITS_FIELD_NUMBER: _ClassVar[int]
    QUOTAS_FIELD_NUMBER: _ClassVar[int]
    is_admin: bool
    rate_limits: RateLimits
    quotas: _containers.RepeatedCompositeFieldContainer[Quota]
    def __init__(self, is_admin: _Optional[bool] = ..., rate_limits: _Optional[_Union[RateLimits, _Mapping]] = ..., quotas: _Optional[_Iterable[_Union[Quota, _Mapping]]] = ...) -> None: ...

class GetLimitsRequest(_message.Message):
    __slots__ = ("user_id", "api_key_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    API_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    api_key_id: str
    def __init__(self, user_id: _Optional[str] = ..., api_key_id: _Optional[str] = ...) -> None: ...

class GetUsageRequest(_message.Message):
    __slots__ = ("user_id", "all_users", "start_date", "end_date")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ALL_USERS_FIELD_NUMBER: _ClassVar[int]
    START_DATE_FIELD_NUMBER: _ClassVar[int]
    END_DATE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    all_users: bool
    start_date: str
    end_date: str
    def __init__(self, user_id: _Optional[str] = ..., all_users: _Optional[bool] = ..., start_date: _Optional[str] = ..., end_date: _Optional[str] = ...) -> None: ...

class UsageRow(_message.Message):
    __slots__ = ("date", "user_id", "api_key_id", "model", "requests", "prompt_tokens", "completion_tokens")
    DATE_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    API_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    date: str
    user_id: str
    api_key_id: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    def __init__(self, date: _Optional[str] = ..., user_id: _Optional[str] = ..., api_key_id: _Optional[str] = ..., model: _Optional[str] = ..., requests: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ...) -> None: ...

class GetUsageResponse(_message.Message):
    __slots__ = ("rows",)
    ROWS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[UsageRow]
    def __init__(self, rows: _Optional[_Iterable[_Union[UsageRow, _Mapping]]] = ...) -> None: ...

class SetQuotaRequest(_message.Message):
    __slots__ = ("user_id", "api_key_id", "period", "token_limit")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    API_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    TOKEN_LIMIT_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    api_key_id: str
    period: QuotaPeriod
    token_limit: int
    def __init__(self, user_id: _Optional[str] = ..., api_key_id: _Optional[str] = ..., period: _Optional[_Union[QuotaPeriod, str]] = ..., token_limit: _Optional[int] = ...) -> None: ...

class DeleteQuotaRequest(_message.Message):
    __slots__ = ("user_id", "api_key_id", "period")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    API_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    api_key_id: str
    period: QuotaPeriod
    def __init__(self, user_id: _Optional[str] = ..., api_key_id: _Optional[str] = ..., period: _Optional[_Union[QuotaPeriod, str]] = ...) -> None: ...

class DeleteQuotaResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListQuotasRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class ListQuotasResponse(_message.Message):
    __slots__ = ("quotas",)
    QUOTAS_FIELD_NUMBER: _ClassVar[int]
    quotas: _containers.RepeatedCompositeFieldContainer[Quota]
    def __init__(self, quotas: _Optional[_Iterable[_Union[Quota, _Mapping]]] = ...) -> None: ...

class SetRateLimitsRequest(_message.Message):
    __slots__ = ("api_key_id", "rate_limits")
    API_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMITS_FIELD_NUMBER: _ClassVar[int]
    api_key_id: str
    rate_limits: RateLimits
    def __init__(self, api_key_id: _Optional[str] = ..., rate_limits: _Optional[_Union[RateLimits, _Mapping]] = ...) -> None: ...
