"""Anthropic's Messages API wire format, and its translation to and from OpenAI's (protocol.py).

Requests are decoded into the structs below (unknown fields are a 400 naming them, as on the OpenAI
side), turned into a ChatCompletionRequest, and answered by the same pipeline as every call. Answers
and stream chunks come back in OpenAI's shape and are translated here: one Message, or Anthropic's
event sequence (`message_start`, `ping`, `content_block_*`, `message_delta`, `message_stop`).

Stop sequences are matched here, not by the model: OpenAI's `finish_reason` is "stop" both for a
natural end and for a stop sequence (the local model's too), so only the gateway can tell which
sequence matched. The model is asked without them and runs until its end of turn or `max_tokens`;
its text is cut at the first match, and `output_tokens` counts what the model generated.
"""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from meshgate.errors import (
    InvalidRequest,
    MeshError,
    Overloaded,
    PayloadTooLarge,
    UnsupportedParameter,
)
from meshgate.protocol import MAX_TOKENS, ChatCompletionRequest, KnowledgeOptions

# -- request structs ------------------------------------------------------------------------------

TokenCount = Annotated[int, Meta(ge=1, le=MAX_TOKENS)]
#: A caching hint ({"type": "ephemeral", "ttl": ...}): accepted, not acted on.
CacheControl = dict[str, Any]


class TextBlock(Struct, tag="text", tag_field="type", forbid_unknown_fields=True, omit_defaults=True):
    text: str
    cache_control: CacheControl | None = None
    citations: list[dict[str, Any]] | None = None


class ImageSource(Struct, forbid_unknown_fields=True, omit_defaults=True):
    type: Literal["base64", "url"]
    media_type: str | None = None
    data: str | None = None
    url: str | None = None


class ImageBlock(Struct, tag="image", tag_field="type", forbid_unknown_fields=True, omit_defaults=True):
    source: ImageSource
    cache_control: CacheControl | None = None


class ToolUseBlock(Struct, tag="tool_use", tag_field="type", forbid_unknown_fields=True, omit_defaults=True):
    id: Annotated[str, Meta(min_length=1)]
    name: str
    input: dict[str, Any]
    cache_control: CacheControl | None = None


class ToolResultBlock(Struct, tag="tool_result", tag_field="type", forbid_unknown_fields=True, omit_defaults=True):
    tool_use_id: Annotated[str, Meta(min_length=1)]
    content: str | list[TextBlock | ImageBlock] | None = None
    is_error: bool | None = None
    cache_control: CacheControl | None = None


ContentBlock = TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock


class MessageParam(Struct, forbid_unknown_fields=True):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]


class ToolParam(Struct, forbid_unknown_fields=True, omit_defaults=True):
    name: Annotated[str, Meta(min_length=1)]
    input_schema: dict[str, Any]
    description: str | None = None
    type: Literal["custom"] | None = None
    cache_control: CacheControl | None = None


class ToolChoice(Struct, forbid_unknown_fields=True, omit_defaults=True):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class Metadata(Struct, forbid_unknown_fields=True, omit_defaults=True):
    user_id: Annotated[str, Meta(max_length=64)] | None = None


class CountTokensRequest(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """POST /v1/messages/count_tokens."""

    model: Annotated[str, Meta(min_length=1)]
    messages: Annotated[list[MessageParam], Meta(min_length=1)]
    system: str | list[TextBlock] | None = None
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoice | None = None


class MessagesRequest(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """POST /v1/messages. `max_tokens` is required, as at Anthropic."""

    model: Annotated[str, Meta(min_length=1)]
    messages: Annotated[list[MessageParam], Meta(min_length=1)]
    max_tokens: TokenCount
    system: str | list[TextBlock] | None = None
    stop_sequences: list[str] | None = None
    stream: bool | None = None
    temperature: Annotated[float, Meta(ge=0, le=1)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    top_k: Annotated[int, Meta(ge=0)] | None = None
    metadata: Metadata | None = None
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoice | None = None
    #: meshgate's grounded answers (docs/knowledge.md), as on /v1/chat/completions.
    knowledge: KnowledgeOptions | None = None


# -- errors ---------------------------------------------------------------------------------------

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def error_status_and_type(error: MeshError) -> tuple[int, str]:
    """Anthropic's status and error type for a typed error: its own table where the status is one
    of Anthropic's; a queue that is full is 529 overloaded_error; other client errors keep their
    status as invalid_request_error, other server errors theirs as api_error."""
    if isinstance(error, Overloaded):
        return 529, "overloaded_error"
    if isinstance(error, PayloadTooLarge):
        return 413, "request_too_large"
    status = error.status
    if status in _ERROR_TYPES:
        return status, _ERROR_TYPES[status]
    return status, "invalid_request_error" if status < 500 else "api_error"


def error_body(error: MeshError) -> tuple[int, dict[str, Any]]:
    if error.verbatim:
        return error.status, error.body()
    status, kind = error_status_and_type(error)
    fields = {"type": kind, "message": error.message}
    if error.code == "guard_blocked":
        # Anthropic's schema has no code; a guard's refusal carries ours so clients can tell it apart.
        fields["code"] = error.code
    return status, {"type": "error", "error": fields}


# -- request translation --------------------------------------------------------------------------


def _text_of(blocks: str | list[TextBlock] | None) -> str:
    if blocks is None:
        return ""
    if isinstance(blocks, str):
        return blocks
    return "\n".join(block.text for block in blocks)


def _image_part(block: ImageBlock, where: str) -> dict[str, Any]:
    source = block.source
    if source.type == "base64":
        if not source.data or not source.media_type:
            raise InvalidRequest(f"{where}.source: a base64 image needs `media_type` and `data`.", param=where)
        url = f"data:{source.media_type};base64,{source.data}"
    else:
        if not source.url:
            raise InvalidRequest(f"{where}.source: a url image needs `url`.", param=where)
        url = source.url
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_result(block: ToolResultBlock, where: str) -> dict[str, Any]:
    """A tool result as an OpenAI tool message (text only: OpenAI's tool messages take no images).
    An error result says so in its text, OpenAI's tool messages having no error flag."""
    content = block.content
    if isinstance(content, list):
        texts = []
        for index, part in enumerate(content):
            if not isinstance(part, TextBlock):
                raise UnsupportedParameter(
                    f"{where}.content[{index}]: images in tool results cannot be translated (OpenAI tool "
                    "messages take text only).",
                    param=f"{where}.content[{index}]",
                )
            texts.append(part.text)
        text = "\n".join(texts)
    else:
        text = content or ""
    if block.is_error:
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": block.tool_use_id, "content": text}


def _user_messages(message: MessageParam, where: str) -> list[dict[str, Any]]:
    if isinstance(message.content, str):
        return [{"role": "user", "content": message.content}]
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for index, block in enumerate(message.content):
        at = f"{where}.content[{index}]"
        if isinstance(block, ToolResultBlock):
            out.append(_tool_result(block, at))  # tool messages right after the assistant's calls
        elif isinstance(block, TextBlock):
            parts.append({"type": "text", "text": block.text})
        elif isinstance(block, ImageBlock):
            parts.append(_image_part(block, at))
        else:
            raise InvalidRequest(f"{at}: a user message cannot hold a `tool_use` block.", param=at)
    if parts:
        out.append({"role": "user", "content": parts})
    return out


def _assistant_message(message: MessageParam, where: str) -> dict[str, Any]:
    if isinstance(message.content, str):
        return {"role": "assistant", "content": message.content}
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for index, block in enumerate(message.content):
        at = f"{where}.content[{index}]"
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ToolUseBlock):
            calls.append(
                {
                    "id": block.id,
                    "type": "function",
                    "function": {"name": block.name, "arguments": json.dumps(block.input, separators=(",", ":"))},
                }
            )
        else:
            raise InvalidRequest(f"{at}: an assistant message holds only `text` and `tool_use` blocks.", param=at)
    result: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        result["tool_calls"] = calls
    return result


def openai_messages(request: MessagesRequest | CountTokensRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": _text_of(request.system)})
    for index, message in enumerate(request.messages):
        where = f"messages[{index}]"
        if message.role == "user":
            messages.extend(_user_messages(message, where))
        else:
            messages.append(_assistant_message(message, where))
    return messages


def openai_tools(tools: list[ToolParam] | None) -> list[dict[str, Any]] | None:
    if tools is None:
        return None
    result = []
    for tool in tools:
        function: dict[str, Any] = {"name": tool.name, "parameters": tool.input_schema}
        if tool.description is not None:
            function["description"] = tool.description
        result.append({"type": "function", "function": function})
    return result


def openai_tool_choice(choice: ToolChoice | None) -> tuple[str | dict[str, Any] | None, bool | None]:
    """OpenAI's `tool_choice` and `parallel_tool_calls` for Anthropic's `tool_choice`."""
    if choice is None:
        return None, None
    parallel = False if choice.disable_parallel_tool_use else None
    if choice.type == "tool":
        if not choice.name:
            raise InvalidRequest("tool_choice: type `tool` needs `name`.", param="tool_choice.name")
        return {"type": "function", "function": {"name": choice.name}}, parallel
    return {"auto": "auto", "any": "required", "none": "none"}[choice.type], parallel


def to_openai(request: MessagesRequest | CountTokensRequest, *, stream: bool = False) -> ChatCompletionRequest:
    """The ChatCompletionRequest the pipeline runs for an Anthropic request. Stop sequences are not
    in it: they are matched on the answer (see the module's docstring)."""
    body: dict[str, Any] = {"model": request.model, "messages": openai_messages(request)}
    tools = openai_tools(request.tools)
    if tools is not None:
        body["tools"] = tools
    tool_choice, parallel = openai_tool_choice(request.tool_choice)
    if tool_choice is not None:
        body["tool_choice"] = tool_choice
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    if isinstance(request, MessagesRequest):
        if request.top_k is not None:
            raise UnsupportedParameter(
                f"The model `{request.model}` cannot take `top_k` through this gateway (its OpenAI-compatible "
                "calls have no such parameter); leave it out or use `top_p`.",
                param="top_k",
            )
        body["max_tokens"] = request.max_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.metadata is not None and request.metadata.user_id is not None:
            body["user"] = request.metadata.user_id
        if stream:
            body["stream"] = True
        if request.knowledge is not None:
            body["knowledge"] = msgspec.to_builtins(request.knowledge)
    try:
        return msgspec.convert(body, ChatCompletionRequest)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"The request cannot be translated: {exc}") from None


# -- answer translation ---------------------------------------------------------------------------

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def stop_reason(finish_reason: str | None) -> str:
    return STOP_REASONS.get(finish_reason or "stop", "end_turn")


def first_stop(text: str, stops: list[str], start: int = 0) -> tuple[int, str] | None:
    """Where the earliest stop sequence in `text` begins (searching from `start`), and which one."""
    best: tuple[int, str] | None = None
    for stop in stops:
        at = text.find(stop, start)
        if at >= 0 and (best is None or at < best[0]):
            best = (at, stop)
    return best


def stop_holdback(text: str, stops: list[str]) -> int:
    """How many trailing characters could begin a stop sequence (not yet safe to send)."""
    hold = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), hold, -1):
            if text.endswith(stop[:size]):
                hold = size
                break
    return hold


def new_message_id() -> str:
    return "msg_" + uuid.uuid4().hex


def _tool_input(arguments: str) -> dict[str, Any]:
    try:
        value = json.loads(arguments) if arguments else {}
    except json.JSONDecodeError:
        return {"_arguments": arguments}  # not JSON: kept whole rather than lost
    return value if isinstance(value, dict) else {"_arguments": value}


def usage_of(usage: dict[str, Any] | None) -> dict[str, int]:
    usage = usage or {}
    return {
        "input_tokens": int(usage.get("prompt_tokens") or 0),
        "output_tokens": int(usage.get("completion_tokens") or 0),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def to_anthropic_message(result: dict[str, Any], model: str, stops: list[str]) -> dict[str, Any]:
    """An OpenAI chat completion as an Anthropic Message."""
    choices = result.get("choices") or [{}]
    choice = choices[0]
    message = choice.get("message") or {}
    text = str(message.get("content") or "")
    reason = stop_reason(choice.get("finish_reason"))
    matched: str | None = None
    found = first_stop(text, [s for s in stops if s])
    content: list[dict[str, Any]] = []
    if found is not None:
        text, matched, reason = text[: found[0]], found[1], "stop_sequence"
    if text:
        content.append({"type": "text", "text": text})
    if matched is None:
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            content.append(
                {
                    "type": "tool_use",
                    "id": call.get("id") or "toolu_" + uuid.uuid4().hex,
                    "name": function.get("name") or "",
                    "input": _tool_input(function.get("arguments") or ""),
                }
            )
    return {
        "id": new_message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": matched,
        "usage": usage_of(result.get("usage")),
        **grounding_fields(result),
    }


def grounding_fields(source: dict[str, Any]) -> dict[str, Any]:
    """A grounded answer's `citations` and `abstained` (meshgate/knowledge/step.py), when present."""
    return {key: source[key] for key in ("citations", "abstained") if key in source}


def sse_event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


class StreamTranslator:
    """OpenAI chunks in, Anthropic's events out (as SSE bytes), for one streamed message."""

    def __init__(self, model: str, stops: list[str], input_tokens: Any = None) -> None:
        self.model = model
        self.stops = [s for s in stops if s]
        #: Read when the stream starts: the prompt's tokens, if the model counted them by then.
        self.input_tokens = input_tokens
        self.started = False
        self.index = -1
        self.open: str | None = None  # "text" or "tool_use"
        self.tool_blocks: dict[int, int] = {}
        self.pending = ""  # text held back: it may begin a stop sequence
        self.matched: str | None = None
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.grounding: dict[str, Any] = {}

    def _start(self, out: list[bytes]) -> None:
        if self.started:
            return
        self.started = True
        prompt = int(self.input_tokens() if callable(self.input_tokens) else self.input_tokens or 0)
        message: dict[str, Any] = {
            "id": new_message_id(),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": prompt, "output_tokens": 0},
        }
        out.append(sse_event("message_start", {"type": "message_start", "message": message}))
        out.append(sse_event("ping", {"type": "ping"}))

    def _close(self, out: list[bytes]) -> None:
        if self.open is not None:
            out.append(sse_event("content_block_stop", {"type": "content_block_stop", "index": self.index}))
            self.open = None

    def _open(self, out: list[bytes], block: dict[str, Any]) -> None:
        self._close(out)
        self.index += 1
        self.open = block["type"]
        start = {"type": "content_block_start", "index": self.index, "content_block": block}
        out.append(sse_event("content_block_start", start))

    def _emit_text(self, out: list[bytes], text: str) -> None:
        if not text:
            return
        if self.open != "text":
            self._open(out, {"type": "text", "text": ""})
        delta = {"type": "content_block_delta", "index": self.index, "delta": {"type": "text_delta", "text": text}}
        out.append(sse_event("content_block_delta", delta))

    def _text(self, out: list[bytes], text: str) -> None:
        if not self.stops:
            self._emit_text(out, text)
            return
        searched = max(len(self.pending) - max(len(s) for s in self.stops), 0)
        self.pending += text
        found = first_stop(self.pending, self.stops, searched)
        if found is not None:
            self._emit_text(out, self.pending[: found[0]])
            self.pending, self.matched = "", found[1]
            return
        safe = len(self.pending) - stop_holdback(self.pending, self.stops)
        self._emit_text(out, self.pending[:safe])
        self.pending = self.pending[safe:]

    def _tool_call(self, out: list[bytes], call: dict[str, Any]) -> None:
        position = int(call.get("index") or 0)
        function = call.get("function") or {}
        if position not in self.tool_blocks:
            self._emit_text(out, self.pending)
            self.pending = ""
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": call.get("id") or "toolu_" + uuid.uuid4().hex,
                "name": function.get("name") or "",
                "input": {},
            }
            self._open(out, block)
            self.tool_blocks[position] = self.index
        elif self.tool_blocks[position] != self.index:
            return  # fragments of an earlier call after a later one began: not in Anthropic's order
        arguments = function.get("arguments")
        if arguments:
            delta = {"type": "input_json_delta", "partial_json": arguments}
            out.append(
                sse_event("content_block_delta", {"type": "content_block_delta", "index": self.index, "delta": delta})
            )

    def encode(self, chunk: dict[str, Any]) -> bytes | None:
        out: list[bytes] = []
        self._start(out)
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        self.grounding.update(grounding_fields(chunk))
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if self.matched is None:
                if delta.get("content"):
                    self._text(out, str(delta["content"]))
                for call in delta.get("tool_calls") or ():
                    self._tool_call(out, call)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return b"".join(out) or None

    def finish(self) -> bytes:
        """The closing events, once the model's stream ended."""
        out: list[bytes] = []
        self._start(out)
        if self.matched is None:
            self._emit_text(out, self.pending)
            self.pending = ""
        self._close(out)
        usage = usage_of(self.usage)
        reason = "stop_sequence" if self.matched is not None else stop_reason(self.finish_reason)
        out.append(
            sse_event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": reason, "stop_sequence": self.matched},
                    "usage": {"input_tokens": usage["input_tokens"], "output_tokens": usage["output_tokens"]},
                    **self.grounding,
                },
            )
        )
        out.append(sse_event("message_stop", {"type": "message_stop"}))
        return b"".join(out)

    @staticmethod
    def failure(error: MeshError) -> bytes:
        return sse_event("error", error_body(error)[1])
