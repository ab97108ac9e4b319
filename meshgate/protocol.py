"""The OpenAI wire format as typed structs: the lingua franca inside meshgate.

Requests are decoded straight from bytes into these structs by msgspec, which validates types, ranges
and unknown fields in one pass and reports the exact path of a bad field. Responses and stream chunks
stay plain dicts in OpenAI's shape, so an OpenAI-compatible upstream's extra fields pass through.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from meshgate.errors import InvalidRequest

# -- message content ---------------------------------------------------------------------------


class TextPart(Struct, tag="text", tag_field="type", forbid_unknown_fields=True, omit_defaults=True):
    text: str


class ImageURL(Struct, forbid_unknown_fields=True, omit_defaults=True):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(Struct, tag="image_url", tag_field="type", forbid_unknown_fields=True, omit_defaults=True):
    image_url: ImageURL


class InputAudio(Struct, forbid_unknown_fields=True):
    data: str
    format: str


class AudioPart(Struct, tag="input_audio", tag_field="type", forbid_unknown_fields=True):
    input_audio: InputAudio


class FileRef(Struct, forbid_unknown_fields=True, omit_defaults=True):
    file_id: str | None = None
    file_data: str | None = None
    filename: str | None = None


class FilePart(Struct, tag="file", tag_field="type", forbid_unknown_fields=True):
    file: FileRef


class RefusalPart(Struct, tag="refusal", tag_field="type", forbid_unknown_fields=True):
    refusal: str


UserContentPart = TextPart | ImagePart | AudioPart | FilePart
AssistantContentPart = TextPart | RefusalPart


# -- messages ----------------------------------------------------------------------------------


class FunctionCall(Struct, forbid_unknown_fields=True):
    name: str
    arguments: str


class ToolCall(Struct, forbid_unknown_fields=True):
    id: str
    function: FunctionCall
    type: Literal["function"] = "function"


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


class ToolMessage(Struct, tag="tool", tag_field="role", forbid_unknown_fields=True, omit_defaults=True):
    content: str | list[TextPart]
    tool_call_id: str


Message = SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage


# -- chat completions request ------------------------------------------------------------------


class StreamOptions(Struct, forbid_unknown_fields=True, omit_defaults=True):
    include_usage: bool = False


class FunctionDef(Struct, forbid_unknown_fields=True, omit_defaults=True):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(Struct, forbid_unknown_fields=True, omit_defaults=True):
    function: FunctionDef
    type: Literal["function"] = "function"


class ResponseFormat(Struct, forbid_unknown_fields=True, omit_defaults=True):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


Temperature = Annotated[float, Meta(ge=0, le=2)]
Probability = Annotated[float, Meta(ge=0, le=1)]
Penalty = Annotated[float, Meta(ge=-2, le=2)]
PositiveInt = Annotated[int, Meta(ge=1)]
StopList = Annotated[list[str], Meta(max_length=16)]


class ChatCompletionRequest(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """POST /v1/chat/completions. Unknown fields are an error, never silently dropped."""

    model: Annotated[str, Meta(min_length=1)]
    messages: Annotated[list[Message], Meta(min_length=1)]
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    temperature: Temperature | None = None
    top_p: Probability | None = None
    stop: str | StopList | None = None
    seed: int | None = None
    user: str | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: Annotated[int, Meta(ge=1, le=128)] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, Annotated[float, Meta(ge=-100, le=100)]] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    reasoning_effort: str | None = None
    service_tier: str | None = None

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

TokenArray = Annotated[list[int], Meta(min_length=1)]
# msgspec allows one array type per union, so the list's items carry the variants and
# `EmbeddingRequest.inputs()` checks that they are all of one kind.
InputItem = str | int | TokenArray


class EmbeddingRequest(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """POST /v1/embeddings."""

    model: Annotated[str, Meta(min_length=1)]
    input: str | Annotated[list[InputItem], Meta(min_length=1, max_length=2048)]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: PositiveInt | None = None
    user: str | None = None

    def inputs(self) -> list[str] | list[list[int]]:
        """The inputs as texts, or as token arrays; a mixture is a 400."""
        given = self.input
        if isinstance(given, str):
            return [given]
        if all(isinstance(item, str) for item in given):
            return [str(item) for item in given]
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
    """A request struct as the plain dict that goes on the wire (defaults omitted)."""
    result: dict[str, Any] = msgspec.to_builtins(request)
    return result
