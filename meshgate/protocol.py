"""The OpenAI wire format as typed structs: the lingua franca inside meshgate.

Requests are decoded straight from bytes into these structs by msgspec, which validates types, ranges
and unknown fields in one pass and reports the exact path of a bad field. Responses and stream chunks
stay plain dicts in OpenAI's shape, so an OpenAI-compatible upstream's extra fields pass through.

Every field of the official `openai` SDK's request types is a field here (tests/test_openai_sdk_fields.py
derives the list from the installed SDK), and every optional one takes JSON null. What a model cannot
honour is refused by the capability check (meshgate/gateway/capabilities.py), never silently dropped;
hints (caching keys, verbosity, ...) are ignored by local models and passed on to upstreams.
Nested objects meshgate never reads (`prediction`, `web_search_options`, JSON schemas, ...) stay
plain dicts, so their new fields pass through too.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from meshgate.errors import InvalidRequest

# -- bounds --------------------------------------------------------------------------------------
# Every number a request carries is bounded here, so that an oversize one is a 400 naming its field
# (never an OverflowError further in, nor a value passed upstream unchecked).

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
#: Largest token count or token id accepted: far above any model's context, and exact as a float.
MAX_TOKENS = 2**31 - 1
#: Largest number of entries in `logit_bias` (OpenAI's limit).
MAX_LOGIT_BIAS = 300
#: Longest `user` (end-user id) accepted: OpenAI's limit; it is stored in every usage row.
MAX_USER_LENGTH = 64
#: Largest `dimensions` of an embedding (the models' own sizes are checked against their profiles).
MAX_DIMENSIONS = 65536

Int64 = Annotated[int, Meta(ge=INT64_MIN, le=INT64_MAX)]
TokenCount = Annotated[int, Meta(ge=1, le=MAX_TOKENS)]
TokenId = Annotated[int, Meta(ge=0, le=MAX_TOKENS)]
UserId = Annotated[str, Meta(max_length=MAX_USER_LENGTH)]
#: OpenAI's limits on `metadata`: 16 pairs, keys of at most 64 characters, values of at most 512.
Metadata = Annotated[
    dict[Annotated[str, Meta(max_length=64)], Annotated[str, Meta(max_length=512)]], Meta(max_length=16)
]

# -- message content ---------------------------------------------------------------------------

#: `prompt_cache_breakpoint` of a content part: a caching hint ({"mode": "explicit", "ttl": ...}).
CacheBreakpoint = dict[str, Any]


class TextPart(Struct, tag="text", tag_field="type", forbid_unknown_fields=True, omit_defaults=True):
    text: str
    prompt_cache_breakpoint: CacheBreakpoint | None = None


class ImageURL(Struct, forbid_unknown_fields=True, omit_defaults=True):
    url: str
    detail: Literal["auto", "low", "high", "original"] | None = None


class ImagePart(Struct, tag="image_url", tag_field="type", forbid_unknown_fields=True, omit_defaults=True):
    image_url: ImageURL
    prompt_cache_breakpoint: CacheBreakpoint | None = None


class InputAudio(Struct, forbid_unknown_fields=True):
    data: str
    format: str


class AudioPart(Struct, tag="input_audio", tag_field="type", forbid_unknown_fields=True, omit_defaults=True):
    input_audio: InputAudio
    prompt_cache_breakpoint: CacheBreakpoint | None = None


class FileRef(Struct, forbid_unknown_fields=True, omit_defaults=True):
    file_id: str | None = None
    file_data: str | None = None
    filename: str | None = None


class FilePart(Struct, tag="file", tag_field="type", forbid_unknown_fields=True, omit_defaults=True):
    file: FileRef
    prompt_cache_breakpoint: CacheBreakpoint | None = None


class RefusalPart(Struct, tag="refusal", tag_field="type", forbid_unknown_fields=True):
    refusal: str


UserContentPart = TextPart | ImagePart | AudioPart | FilePart
AssistantContentPart = TextPart | RefusalPart


# -- messages ----------------------------------------------------------------------------------


class FunctionCall(Struct, forbid_unknown_fields=True):
    name: str
    arguments: str


def _typed_body(kind: str | None, **bodies: object) -> Literal["function", "custom"]:
    """Check that a `type`d object (tool or tool call) carries exactly the body its type names."""
    kind = kind or "function"
    if bodies.get(kind) is None:
        raise ValueError(f"type `{kind}` needs its `{kind}` object")
    for name, body in bodies.items():
        if name != kind and body is not None:
            raise ValueError(f"type `{kind}` takes its `{kind}` object, not `{name}`")
    return "custom" if kind == "custom" else "function"


class CustomCall(Struct, forbid_unknown_fields=True):
    """The call of a custom (free-form input) tool."""

    name: str
    input: str


class ToolCall(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A call the assistant made: of a function tool (`function`) or of a custom tool (`custom`)."""

    id: str
    #: Missing means "function", as meshgate always accepted.
    type: Literal["function", "custom"] | None = None
    function: FunctionCall | None = None
    custom: CustomCall | None = None

    def __post_init__(self) -> None:
        self.type = _typed_body(self.type, function=self.function, custom=self.custom)


class AssistantAudio(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A reference to an earlier audio reply. `data`, `expires_at` and `transcript` come from the SDK's
    response type (`message.model_dump()`); only `id` goes upstream."""

    id: str
    data: str | None = None
    expires_at: Int64 | None = None
    transcript: str | None = None


class SystemMessage(Struct, tag="system", tag_field="role", forbid_unknown_fields=True, omit_defaults=True):
    content: str | list[TextPart]
    name: str | None = None


class DeveloperMessage(Struct, tag="developer", tag_field="role", forbid_unknown_fields=True, omit_defaults=True):
    content: str | list[TextPart]
    name: str | None = None


class UserMessage(Struct, tag="user", tag_field="role", forbid_unknown_fields=True, omit_defaults=True):
    content: str | list[UserContentPart]
    name: str | None = None


class AssistantMessage(Struct, tag="assistant", tag_field="role", forbid_unknown_fields=True, omit_defaults=True):
    content: str | list[AssistantContentPart] | None = None
    name: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None
    #: The deprecated single function call (before `tool_calls`).
    function_call: FunctionCall | None = None
    audio: AssistantAudio | None = None
    #: URL citations of a web-search answer: in the SDK's response type, so a reply sent back as
    #: `message.model_dump()` carries them. Read by no model and not sent upstream.
    annotations: list[dict[str, Any]] | None = None


class ToolMessage(Struct, tag="tool", tag_field="role", forbid_unknown_fields=True, omit_defaults=True):
    content: str | list[TextPart]
    tool_call_id: str


class FunctionMessage(Struct, tag="function", tag_field="role", forbid_unknown_fields=True, omit_defaults=True):
    """The deprecated result of a `function_call` (before tool messages)."""

    name: str
    content: str | None = None


Message = SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage | FunctionMessage


# -- chat completions request ------------------------------------------------------------------


class StreamOptions(Struct, forbid_unknown_fields=True, omit_defaults=True):
    include_usage: bool | None = None
    #: OpenAI pads stream events against length side channels; a hint, passed on to upstreams.
    include_obfuscation: bool | None = None


class FunctionDef(Struct, forbid_unknown_fields=True, omit_defaults=True):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A function tool (`function`) or a custom tool (`custom`: name, description, input format)."""

    #: Missing means "function", as meshgate always accepted.
    type: Literal["function", "custom"] | None = None
    function: FunctionDef | None = None
    custom: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.type = _typed_body(self.type, function=self.function, custom=self.custom)


class ResponseFormat(Struct, forbid_unknown_fields=True, omit_defaults=True):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


Temperature = Annotated[float, Meta(ge=0, le=2)]
Probability = Annotated[float, Meta(ge=0, le=1)]
Penalty = Annotated[float, Meta(ge=-2, le=2)]
StopList = Annotated[list[str], Meta(max_length=16)]
#: Token id (a decimal string, as in JSON object keys) -> bias. Keys and values are checked by
#: `check_logit_bias` so that any bad entry is a 400 naming `logit_bias`; the schema documents them.
LogitBias = Annotated[
    dict[
        Annotated[str, Meta(extra_json_schema={"pattern": "^[0-9]{1,10}$"})],
        Annotated[float, Meta(extra_json_schema={"minimum": -100, "maximum": 100})],
    ],
    Meta(max_length=MAX_LOGIT_BIAS),
]
_TOKEN_ID = re.compile(r"[0-9]{1,10}")


def check_logit_bias(bias: dict[str, float]) -> None:
    """Keys must be token ids (decimal, >= 0) and values within -100..100: a 400 before any call."""
    for key, value in bias.items():
        if not (_TOKEN_ID.fullmatch(key) and int(key) <= MAX_TOKENS):
            raise InvalidRequest(
                f"Invalid value for 'logit_bias': the key {key[:40]!r} is not a token id "
                "(a decimal integer >= 0, as a string).",
                param="logit_bias",
                code="invalid_value",
            )
        if not (math.isfinite(value) and -100 <= value <= 100):
            raise InvalidRequest(
                f"Invalid value for 'logit_bias': the bias of token {key} is {value:g}; it must be within -100..100.",
                param="logit_bias",
                code="invalid_value",
            )


class RerankOptions(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """`"rerank": {"top_n": 20}`: how many fused candidates the reranker reorders (knowledge/rerank.py)."""

    top_n: Annotated[int, Meta(ge=1, le=50)] = 20


class KnowledgeOptions(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """`"knowledge": {"banks": ["docs"], "top_k": 5}` on a chat request (meshgate/knowledge/step.py)."""

    banks: Annotated[list[Annotated[str, Meta(min_length=1, max_length=64)]], Meta(min_length=1, max_length=8)]
    top_k: Annotated[int, Meta(ge=1, le=20)] | None = None
    filters: dict[str, Any] | None = None
    #: Abstain under this evidence score (0..1); default: the server's `knowledge.min_evidence`.
    min_evidence: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    #: False: answer without abstaining even on weak evidence (the sources are still cited).
    abstain: bool = True
    #: Rerank the retrieved chunks: true (top 20 candidates), {"top_n": n}, false; default: the
    #: server's `knowledge.rerank`.
    rerank: bool | RerankOptions | None = None


class ChatCompletionRequest(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """POST /v1/chat/completions. Unknown fields are an error, never silently dropped."""

    model: Annotated[str, Meta(min_length=1)]
    messages: Annotated[list[Message], Meta(min_length=1)]
    max_tokens: TokenCount | None = None
    max_completion_tokens: TokenCount | None = None
    temperature: Temperature | None = None
    top_p: Probability | None = None
    stop: str | StopList | None = None
    seed: Int64 | None = None
    user: UserId | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: Annotated[int, Meta(ge=1, le=128)] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: LogitBias | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    metadata: Metadata | None = None
    store: bool | None = None
    reasoning_effort: str | None = None
    service_tier: str | None = None
    # Hints: local models ignore them, upstreams get them as sent.
    verbosity: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: dict[str, Any] | None = None
    safety_identifier: UserId | None = None
    #: Predicted Outputs: a latency hint, the answer is the same without it.
    prediction: dict[str, Any] | None = None
    #: Output modalities; anything but text needs a model with audio output.
    modalities: list[Literal["text", "audio"]] | None = None
    # Capabilities: refused (400) unless the model's profile has them.
    audio: dict[str, Any] | None = None
    functions: list[FunctionDef] | None = None
    function_call: str | dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    moderation: dict[str, Any] | None = None
    #: meshgate's grounded answers: retrieve from knowledge banks and answer with citations. Taken
    #: off the request by the knowledge step; never sent upstream.
    knowledge: KnowledgeOptions | None = None

    def __post_init__(self) -> None:
        if self.logit_bias:
            check_logit_bias(self.logit_bias)

    @property
    def output_limit(self) -> int | None:
        """The caller's cap on generated tokens (max_completion_tokens wins, as in OpenAI's API)."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def wants_usage_chunk(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


# -- embeddings request ------------------------------------------------------------------------

TokenArray = Annotated[list[TokenId], Meta(min_length=1)]
# msgspec allows one array type per union, so the list's items carry the variants and
# `EmbeddingRequest.inputs()` checks that they are all of one kind.
InputItem = str | TokenId | TokenArray


class EmbeddingRequest(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """POST /v1/embeddings."""

    model: Annotated[str, Meta(min_length=1)]
    input: str | Annotated[list[InputItem], Meta(min_length=1, max_length=2048)]
    #: None (or missing) means "float".
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Annotated[int, Meta(ge=1, le=MAX_DIMENSIONS)] | None = None
    user: UserId | None = None

    def inputs(self) -> list[str] | list[list[int]]:
        """The inputs as texts, or as token arrays; a mixture or an empty text is a 400."""
        given = self.input
        if isinstance(given, str) or all(isinstance(item, str) for item in given):
            texts = [given] if isinstance(given, str) else [str(item) for item in given]
            if "" in texts:
                where = "" if isinstance(given, str) else f" (input[{texts.index('')}])"
                raise InvalidRequest(
                    f"Invalid value for 'input': an empty string cannot be embedded{where}.",
                    param="input",
                    code="invalid_value",
                )
            return texts
        if all(isinstance(item, int) for item in given):
            return [[int(item) for item in given if isinstance(item, int)]]
        if all(isinstance(item, list) for item in given):
            return [[int(token) for token in item] for item in given if isinstance(item, list)]
        raise InvalidRequest(
            "Invalid value for 'input': give a string, a list of strings, a token array or a list of token "
            "arrays, not a mixture.",
            param="input",
            code="invalid_value",
        )

    @property
    def is_token_input(self) -> bool:
        return not isinstance(self.input, str) and not isinstance(self.input[0], str)


# -- helpers -----------------------------------------------------------------------------------


def message_text(content: str | list[Any] | None) -> str:
    """The text of a message's content, joining text parts. Non-text parts are rejected earlier."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text for part in content if isinstance(part, TextPart))


def to_wire(request: Struct) -> dict[str, Any]:
    """A request struct as the plain dict that goes on the wire (defaults omitted).

    The parts of the SDK's *response* type that a client sends back in an assistant message
    (annotations, the audio's data and transcript) are left out: no request schema has them.
    """
    result: dict[str, Any] = msgspec.to_builtins(request)
    if isinstance(request, ChatCompletionRequest):
        for message in result["messages"]:
            if message["role"] == "assistant":
                message.pop("annotations", None)
                if "audio" in message:
                    message["audio"] = {"id": message["audio"]["id"]}
    return result
