"""Request and response bodies of the public API.

Requests forbid unknown fields (answered like OpenAI: "Unrecognized request argument supplied: <name>"). Value
constraints (sizes, ranges, NUL characters) give 400 naming the field; wrong types and missing fields give 422.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from chatplane.common import limits

INT64_MAX = 2**63 - 1
UINT32_MAX = 2**32 - 1


def no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL (\\u0000) characters")
    return value


SafeStr = Annotated[str, AfterValidator(no_nul)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- auth ---------------------------------------------------------------------------------------------------------


class SignupRequest(_Request):
    email: Annotated[SafeStr, Field(min_length=3, max_length=limits.MAX_EMAIL_CHARS)]
    password: Annotated[SafeStr, Field(min_length=limits.MIN_PASSWORD_CHARS, max_length=limits.MAX_PASSWORD_CHARS)]


class LoginRequest(_Request):
    email: Annotated[SafeStr, Field(min_length=1, max_length=limits.MAX_EMAIL_CHARS)]
    password: Annotated[SafeStr, Field(min_length=1, max_length=limits.MAX_PASSWORD_CHARS)]


class UserOut(BaseModel):
    id: str
    object: Literal["user"] = "user"
    email: str
    created_at: int | None


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int


# --- API keys -----------------------------------------------------------------------------------------------------


class ApiKeyCreate(_Request):
    name: Annotated[SafeStr, Field(min_length=1, max_length=limits.MAX_API_KEY_NAME_CHARS)]


class ApiKeyOut(BaseModel):
    id: str
    object: Literal["api_key"] = "api_key"
    name: str
    prefix: str
    created_at: int | None
    last_used_at: int | None
    revoked_at: int | None


class CreatedApiKeyOut(ApiKeyOut):
    key: str = Field(description="The secret key. Shown only in this answer: store it now.")


class ApiKeyList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ApiKeyOut]


# --- models -------------------------------------------------------------------------------------------------------


class ModelOut(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelOut]


# --- chat completions ---------------------------------------------------------------------------------------------


class FunctionCallIn(_Request):
    name: Annotated[SafeStr, Field(min_length=1, max_length=limits.MAX_TOOL_NAME_CHARS)]
    arguments: Annotated[SafeStr, Field(max_length=limits.MAX_MESSAGE_CHARS)]


class ToolCallIn(_Request):
    id: Annotated[SafeStr, Field(max_length=256)]
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessageIn(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    # A string, or a list of {"type": "text", "text": ...} parts (checked in the route for precise error params).
    content: str | list[dict[str, Any]] | None = None
    name: Annotated[SafeStr, Field(max_length=256)] | None = None
    tool_calls: Annotated[list[ToolCallIn], Field(max_length=limits.MAX_TOOL_CALLS)] | None = None
    tool_call_id: Annotated[SafeStr, Field(max_length=256)] | None = None
    annotations: list[Any] | None = None  # in assistant messages sent back as they came (ignored)
    # Known to OpenAI but not supported here: rejected with a 400 naming them when set.
    function_call: Any = None
    audio: Any = None
    refusal: Any = None


class StreamOptions(_Request):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class FunctionDefinition(_Request):
    name: Annotated[SafeStr, Field(min_length=1, max_length=limits.MAX_TOOL_NAME_CHARS)]
    description: Annotated[SafeStr, Field(max_length=limits.MAX_MESSAGE_CHARS)] | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolIn(_Request):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Request):
    name: Annotated[SafeStr, Field(min_length=1, max_length=limits.MAX_TOOL_NAME_CHARS)]


class NamedToolChoice(_Request):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(_Request):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: Annotated[SafeStr, Field(min_length=1, max_length=64)]
    description: Annotated[SafeStr, Field(max_length=limits.MAX_MESSAGE_CHARS)] | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class ChatCompletionRequest(_Request):
    model: Annotated[SafeStr, Field(min_length=1, max_length=256)]
    messages: Annotated[list[ChatMessageIn], Field(min_length=1, max_length=limits.MAX_MESSAGES)]
    max_tokens: Annotated[int, Field(ge=1, le=UINT32_MAX)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1, le=UINT32_MAX)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    stop: str | list[str] | None = None
    seed: Annotated[int, Field(ge=-(2**63), le=INT64_MAX)] | None = None
    user: Annotated[SafeStr, Field(max_length=256)] | None = None
    safety_identifier: Annotated[SafeStr, Field(max_length=256)] | None = None
    prompt_cache_key: Annotated[SafeStr, Field(max_length=256)] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: Annotated[int, Field(ge=1)] | None = None  # the configured maximum is checked in the route
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    logit_bias: Annotated[dict[str, float], Field(max_length=limits.MAX_LOGIT_BIAS)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=limits.MAX_TOP_LOGPROBS)] | None = None
    response_format: ResponseFormat | None = None
    tools: Annotated[list[ToolIn], Field(max_length=limits.MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    store: bool | None = None
    service_tier: str | None = None
    # Known to OpenAI but not supported here (or only in their neutral value): checked in the route.
    functions: Any = None
    function_call: Any = None
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    metadata: Any = None
    reasoning_effort: Any = None
    verbosity: Any = None
    web_search_options: Any = None


# --- legacy completions -------------------------------------------------------------------------------------------


class CompletionRequest(_Request):
    model: Annotated[SafeStr, Field(min_length=1, max_length=256)]
    # A string or a list of strings (token-id arrays are answered with a 400 naming prompt, in the route).
    prompt: str | Annotated[list[Any], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1, le=UINT32_MAX)] | None = 16  # OpenAI's default for this API
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    n: Annotated[int, Field(ge=1)] | None = None
    best_of: Annotated[int, Field(ge=1)] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    logprobs: Annotated[int, Field(ge=0, le=limits.MAX_TOP_LOGPROBS)] | None = None
    echo: bool | None = None
    stop: str | list[str] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    logit_bias: Annotated[dict[str, float], Field(max_length=limits.MAX_LOGIT_BIAS)] | None = None
    seed: Annotated[int, Field(ge=-(2**63), le=INT64_MAX)] | None = None
    user: Annotated[SafeStr, Field(max_length=256)] | None = None
    suffix: Any = None  # not supported: 400 naming it when set


# --- responses ----------------------------------------------------------------------------------------------------


class ResponseTool(_Request):
    type: Literal["function"]
    name: Annotated[SafeStr, Field(min_length=1, max_length=limits.MAX_TOOL_NAME_CHARS)]
    description: Annotated[SafeStr, Field(max_length=limits.MAX_MESSAGE_CHARS)] | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ResponseToolChoiceFunction(_Request):
    type: Literal["function"]
    name: Annotated[SafeStr, Field(min_length=1, max_length=limits.MAX_TOOL_NAME_CHARS)]


class ResponseTextFormat(_Request):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    type: Literal["text", "json_object", "json_schema"]
    name: Annotated[SafeStr, Field(min_length=1, max_length=64)] | None = None
    description: Annotated[SafeStr, Field(max_length=limits.MAX_MESSAGE_CHARS)] | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseText(_Request):
    format: ResponseTextFormat | None = None
    verbosity: Any = None  # not supported: 400 naming it when set


class ResponsesRequest(_Request):
    model: Annotated[SafeStr, Field(min_length=1, max_length=256)]
    # Text, or a list of items: messages, function calls, function call outputs (checked in the route).
    input: Annotated[SafeStr, Field(max_length=limits.MAX_MESSAGE_CHARS)] | Annotated[
        list[dict[str, Any]], Field(min_length=1, max_length=limits.MAX_MESSAGES)]
    instructions: Annotated[SafeStr, Field(max_length=limits.MAX_MESSAGE_CHARS)] | None = None
    max_output_tokens: Annotated[int, Field(ge=1, le=UINT32_MAX)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    tools: Annotated[list[ResponseTool], Field(max_length=limits.MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | ResponseToolChoiceFunction | None = None
    parallel_tool_calls: bool | None = None
    previous_response_id: Annotated[SafeStr, Field(max_length=128)] | None = None
    store: bool | None = None
    text: ResponseText | None = None
    metadata: Annotated[dict[str, Annotated[str, Field(max_length=512)]], Field(max_length=16)] | None = None
    user: Annotated[SafeStr, Field(max_length=256)] | None = None
    safety_identifier: Annotated[SafeStr, Field(max_length=256)] | None = None
    prompt_cache_key: Annotated[SafeStr, Field(max_length=256)] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    service_tier: str | None = None
    # Known to OpenAI but not supported here: rejected with a 400 naming them when set.
    include: Any = None
    reasoning: Any = None
    background: Any = None
    top_logprobs: Any = None
    prompt: Any = None
    conversation: Any = None
    max_tool_calls: Any = None


# --- conversations ------------------------------------------------------------------------------------------------


Title = Annotated[SafeStr, Field(max_length=limits.MAX_TITLE_CHARS)]


class ConversationCreate(_Request):
    title: Title | None = None


class ConversationUpdate(_Request):
    title: Title | None = None
    archived: bool | None = None


class MessageCreate(_Request):
    # Required unless ``regenerate``, which takes none.
    content: Annotated[SafeStr, Field(min_length=1, max_length=limits.MAX_MESSAGE_CHARS)] | None = None
    regenerate: bool = False  # replace the last reply with a new one to the last user message
    stream: bool = False
    max_tokens: Annotated[int, Field(ge=1, le=UINT32_MAX)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    model: Annotated[SafeStr, Field(min_length=1, max_length=256)] | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ConversationOut(BaseModel):
    id: str
    object: Literal["conversation"] = "conversation"
    title: str
    archived: bool
    created_at: int | None
    updated_at: int | None


class MessageOut(BaseModel):
    id: str
    object: Literal["conversation.message"] = "conversation.message"
    role: str
    content: str
    status: Literal["complete", "incomplete"]
    model: str | None
    finish_reason: str | None
    usage: Usage | None
    created_at: int | None
    # Messages of the Responses API: an assistant's function calls, a function's result.
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class ConversationWithMessagesOut(ConversationOut):
    messages: list[MessageOut]  # one page, oldest first
    has_more: bool = False
    next_cursor: str | None = None  # the `after` of the next page


class ConversationList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ConversationOut]
    has_more: bool
    next_cursor: str | None


class ConversationDeleted(BaseModel):
    id: str
    object: Literal["conversation.deleted"] = "conversation.deleted"
    deleted: bool = True


class SentMessageOut(MessageOut):
    user_message_id: str
