"""Input size limits, one place for all services (the gateway checks them first, the services check them again)."""

MAX_REQUEST_BODY_BYTES = 1024 * 1024  # gateway: bigger bodies get 413
MAX_MESSAGE_CHARS = 64_000  # one chat message's content
MAX_MESSAGES = 512  # messages in one chat completion request
MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 256
MAX_TITLE_CHARS = 200
MAX_EMAIL_CHARS = 254
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 256
MAX_API_KEY_NAME_CHARS = 100
MAX_CREDENTIAL_CHARS = 4096
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20
MAX_TOOLS = 128  # functions offered in one request
MAX_TOOL_CALLS = 128  # calls in one assistant message of the history
MAX_TOOL_NAME_CHARS = 64  # OpenAI's: letters, digits, _ and -
MAX_SCHEMA_CHARS = 100_000  # one JSON schema (a function's parameters, a response_format)
MAX_LOGIT_BIAS = 300  # tokens in one logit_bias
MAX_TOP_LOGPROBS = 20
MAX_N = 16  # choices of one request (the gateway's configured maximum is at most this)
MAX_PROMPTS = 32  # prompts of one legacy completions request
DEFAULT_MESSAGE_PAGE = 100  # messages of a conversation in one answer
MAX_MESSAGE_PAGE = 500
