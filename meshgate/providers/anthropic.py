"""Anthropic's Messages API (`POST /v1/messages`) behind meshgate's OpenAI shapes.

Requests are translated from OpenAI's chat completion shape to Anthropic's (system prompt apart,
tool calls as `tool_use` blocks, tool results as `tool_result` blocks in a user turn, images as
base64 or url sources); answers and stream events are translated back to `chat.completion` and
`chat.completion.chunk` dicts. Upstream failures map to typed errors by HTTP status and Anthropic's
error `type`, never by message text: 400/413 pass through as 400, 429 is a 429 with its
Retry-After, 529 (overloaded) is a 503 with Retry-After, credentials and other failures are 502,
a timeout is 504. An `error` event mid-stream ends the stream with the same typed error.
"""

from __future__ import annotations

import binascii
import json
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any, Literal

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from meshgate.errors import (
    InvalidRequest,
    MeshError,
    Overloaded,
    RateLimited,
    UnsupportedParameter,
    UpstreamError,
    UpstreamTimeout,
)
from meshgate.protocol import (
    AssistantMessage,
    AudioPart,
    ChatCompletionRequest,
    DeveloperMessage,
    FilePart,
    FunctionMessage,
    ImagePart,
    RefusalPart,
    SystemMessage,
    TextPart,
    ToolMessage,
    UserMessage,
    message_text,
)
from meshgate.providers.base import (
    CallContext,
    CapabilityProfile,
    ChatModel,
    Model,
    ProviderContext,
    ProviderType,
    new_completion_id,
    usage_dict,
)
from meshgate.providers.http_json import ChunkTranslator, HttpUpstreamConfig, JsonUpstream, retry_after

API_VERSION = "2023-06-01"

#: Anthropic's stop_reason -> OpenAI's finish_reason.
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


class AnthropicCapabilities(BaseModel):
    """What the upstream model can do; the pipeline refuses what it cannot (400)."""

    model_config = ConfigDict(extra="forbid")
    streaming: bool = True
    tools: bool = True
    vision: bool = True
    context_window: int | None = Field(200000, ge=1)
    max_output_tokens: int | None = Field(None, ge=1)


class AnthropicConfig(HttpUpstreamConfig):
    provider: Literal["anthropic"]
    model: str = Field(min_length=1, description="Anthropic's name for the model, e.g. claude-sonnet-4-5.")
    api_key: SecretStr = Field(description="An environment variable reference, e.g. ${ANTHROPIC_API_KEY}.")
    base_url: str = Field("https://api.anthropic.com", description="Without /v1.")
    timeout: float | None = Field(None, gt=0, description="Seconds for a whole call; default request_timeout.")
    connect_timeout: float = Field(10.0, gt=0)
    read_timeout: float = Field(120.0, gt=0, description="Longest silence between two stream events.")
    max_tokens_default: int = Field(
        4096, ge=1, description="max_tokens sent when the request sets none (Anthropic requires one)."
    )
    max_connections: int = Field(1024, ge=1, description="Most connections open to the upstream at once.")
    capabilities: AnthropicCapabilities = AnthropicCapabilities()


def _profile(config: AnthropicConfig) -> CapabilityProfile:
    caps = config.capabilities
    return CapabilityProfile(
        chat=True,
        streaming=caps.streaming,
        tools=caps.tools,
        vision=caps.vision,
        json_mode=False,
        logprobs=False,
        logit_bias=False,
        penalties=False,
        seed=False,
        max_stop_sequences=16,
        max_choices=1,
        context_window=caps.context_window,
        max_output_tokens=caps.max_output_tokens,
    )


# -- request: OpenAI -> Anthropic ------------------------------------------------------------------


def _image_block(url: str, index: int) -> dict[str, Any]:
    if url.startswith("data:"):
        header, sep, data = url[5:].partition(",")
        media_type, _, encoding = header.partition(";")
        if not sep or encoding != "base64" or not media_type.startswith("image/"):
            raise InvalidRequest(
                f"messages[{index}]: an image data URL must be data:image/<type>;base64,<data>",
                param=f"messages[{index}].content",
            )
        try:
            binascii.a2b_base64(data[:4096].encode("ascii") + b"===")
        except (binascii.Error, UnicodeEncodeError):
            raise InvalidRequest(
                f"messages[{index}]: an image data URL is not valid base64", param=f"messages[{index}].content"
            ) from None
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise InvalidRequest(
        f"messages[{index}]: an image URL must be http(s) or a base64 data URL", param=f"messages[{index}].content"
    )


def _user_blocks(message: UserMessage, index: int) -> list[dict[str, Any]]:
    if isinstance(message.content, str):
        return [{"type": "text", "text": message.content}]
    blocks: list[dict[str, Any]] = []
    for part in message.content:
        if isinstance(part, TextPart):
            blocks.append({"type": "text", "text": part.text})
        elif isinstance(part, ImagePart):
            blocks.append(_image_block(part.image_url.url, index))
        elif isinstance(part, AudioPart | FilePart):
            kind = "audio" if isinstance(part, AudioPart) else "file"
            raise UnsupportedParameter(
                f"The anthropic provider does not take {kind} content parts (messages[{index}]).",
                param=f"messages[{index}].content",
            )
    return blocks


def _assistant_blocks(message: AssistantMessage, index: int) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if isinstance(message.content, str):
        text = message.content
    else:
        text = "".join(
            part.text if isinstance(part, TextPart) else part.refusal
            for part in message.content or ()
            if isinstance(part, TextPart | RefusalPart)
        )
    if text:
        blocks.append({"type": "text", "text": text})
    for call_index, call in enumerate(message.tool_calls or ()):
        if call.function is None:  # custom tools are refused by the capability check
            raise UnsupportedParameter(
                f"messages[{index}].tool_calls[{call_index}]: only function tool calls are supported",
                param=f"messages[{index}].tool_calls",
            )
        arguments = call.function.arguments
        try:
            parsed = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            raise InvalidRequest(
                f"messages[{index}].tool_calls[{call_index}].function.arguments must be a JSON object",
                param=f"messages[{index}].tool_calls",
            )
        blocks.append({"type": "tool_use", "id": call.id, "name": call.function.name, "input": parsed})
    return blocks


def _tool_choice(request: ChatCompletionRequest) -> dict[str, Any] | None:
    choice = request.tool_choice
    result: dict[str, Any] | None
    if choice is None:
        result = None
    elif choice == "auto":
        result = {"type": "auto"}
    elif choice == "required":
        result = {"type": "any"}
    elif choice == "none":
        result = {"type": "none"}
    elif isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        result = {"type": "tool", "name": str(choice["function"].get("name", ""))}
    else:
        raise InvalidRequest(f"Invalid value for 'tool_choice': {str(choice)[:80]}", param="tool_choice")
    if request.parallel_tool_calls is False and request.tools:
        result = result or {"type": "auto"}
        if result["type"] != "none":
            result["disable_parallel_tool_use"] = True
    return result


def to_anthropic(request: ChatCompletionRequest, config: AnthropicConfig, stream: bool) -> dict[str, Any]:
    """The Messages API request for an OpenAI-shaped chat completion request."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        # Consecutive turns of one role merge (tool results, then the user's next words).
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})

    for index, message in enumerate(request.messages):
        if isinstance(message, SystemMessage | DeveloperMessage):
            text = message_text(message.content)
            if text:
                system.append(text)
        elif isinstance(message, UserMessage):
            add("user", _user_blocks(message, index))
        elif isinstance(message, AssistantMessage):
            blocks = _assistant_blocks(message, index)
            if blocks:
                add("assistant", blocks)
        elif isinstance(message, ToolMessage):
            add(
                "user",
                [
                    {
                        "type": "tool_result",
                        "tool_use_id": message.tool_call_id,
                        "content": message_text(message.content),
                    }
                ],
            )
        elif isinstance(message, FunctionMessage):  # refused by the capability check
            raise UnsupportedParameter("role `function` messages are not supported", param=f"messages[{index}]")
    if request.temperature is not None and request.temperature > 1:
        raise UnsupportedParameter(
            f"Anthropic models take a temperature within 0..1, not {request.temperature:g}.", param="temperature"
        )
    payload: dict[str, Any] = {
        "model": config.model,
        "max_tokens": request.output_limit or config.max_tokens_default,
        "messages": turns,
    }
    if system:
        payload["system"] = "\n\n".join(system)
    if request.stop_list:
        payload["stop_sequences"] = request.stop_list
    if request.temperature is not None:
        payload["temperature"] = request.temperature
    if request.top_p is not None:
        payload["top_p"] = request.top_p
    if request.user is not None:
        payload["metadata"] = {"user_id": request.user}
    if request.tools:
        tools = []
        for tool in request.tools:
            if tool.function is None:  # custom tools are refused by the capability check
                raise UnsupportedParameter("only function tools are supported", param="tools")
            definition: dict[str, Any] = {
                "name": tool.function.name,
                "input_schema": tool.function.parameters or {"type": "object", "properties": {}},
            }
            if tool.function.description:
                definition["description"] = tool.function.description
            tools.append(definition)
        payload["tools"] = tools
    choice = _tool_choice(request)
    if choice is not None:
        payload["tool_choice"] = choice
    if stream:
        payload["stream"] = True
    return payload


# -- response: Anthropic -> OpenAI -----------------------------------------------------------------


def _prompt_tokens(usage: dict[str, Any]) -> int:
    """Anthropic's input_tokens leave out cached tokens; OpenAI's prompt_tokens count them."""
    return sum(
        int(usage.get(key) or 0) for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    )


def _finish_reason(stop_reason: Any) -> str:
    return FINISH_REASONS.get(str(stop_reason), "stop")


def from_anthropic(message: dict[str, Any], model: str) -> dict[str, Any]:
    """A `chat.completion` dict for a Messages API answer."""
    text_parts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in message.get("content") or ():
        if block.get("type") == "text":
            text_parts.append(str(block.get("text", "")))
        elif block.get("type") == "tool_use":
            tool_calls.append(
                {
                    "id": block["id"],
                    "type": "function",
                    "function": {"name": block["name"], "arguments": json.dumps(block.get("input") or {})},
                }
            )
    usage = message.get("usage") or {}
    out: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(text_parts) if text_parts or not tool_calls else None,
    }
    out["refusal"] = None
    if tool_calls:
        out["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-" + str(message.get("id") or new_completion_id()[9:]),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": out, "logprobs": None, "finish_reason": _finish_reason(message.get("stop_reason"))}
        ],
        "usage": usage_dict(_prompt_tokens(usage), int(usage.get("output_tokens") or 0)),
    }


# -- errors ----------------------------------------------------------------------------------------


def map_error(name: str, status: int | None, kind: str, message: str, headers: Any = None) -> MeshError:
    """The typed error for an Anthropic error `type` (or, when it is unknown, the HTTP status)."""
    detail = f": {message}" if message else ""
    if kind == "rate_limit_error" or (not kind and status == 429):
        return RateLimited(f"The upstream of `{name}` is rate limiting{detail}", retry_after=retry_after(headers))
    if kind == "overloaded_error" or (not kind and status == 529):
        return Overloaded(f"The upstream of `{name}` is overloaded{detail}", retry_after=retry_after(headers))
    if kind in ("invalid_request_error", "request_too_large") or (not kind and status in (400, 413)):
        return InvalidRequest(f"The upstream of `{name}` rejected the request{detail}")
    if kind in ("authentication_error", "permission_error") or (not kind and status in (401, 403)):
        return UpstreamError(
            f"The upstream of `{name}` refused meshgate's credentials (HTTP {status or 'error'}); "
            "check the model's api_key",
            provider="anthropic",
            upstream_status=status,
        )
    if kind == "timeout_error" or (not kind and status == 504):
        return UpstreamTimeout(
            f"The upstream of `{name}` timed out{detail}", provider="anthropic", upstream_status=status
        )
    where = f"HTTP {status}" if status is not None else "a stream error"
    label = f" ({kind})" if kind else ""
    return UpstreamError(
        f"The upstream of `{name}` failed with {where}{label}{detail}", provider="anthropic", upstream_status=status
    )


def _error_fields(data: Any) -> tuple[str, str]:
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        error = data["error"]
        return str(error.get("type") or ""), str(error.get("message") or "")
    return "", ""


# -- the model -------------------------------------------------------------------------------------


class AnthropicChat(JsonUpstream, ChatModel):
    provider = "anthropic"
    config: AnthropicConfig

    def __init__(self, config: AnthropicConfig, context: ProviderContext) -> None:
        super().__init__(config, _profile(config), context)
        self.url = config.base_url + "/v1/messages"
        self.headers = {
            "content-type": "application/json",
            "x-api-key": config.api_key.get_secret_value(),
            "anthropic-version": API_VERSION,
        }

    async def _status_error(self, response: aiohttp.ClientResponse) -> MeshError:
        body = await response.read()
        try:
            kind, message = _error_fields(json.loads(body))
        except (json.JSONDecodeError, UnicodeDecodeError):
            kind, message = "", ""
        return map_error(self.name, response.status, kind, message, response.headers)

    async def complete(self, request: ChatCompletionRequest, call: CallContext) -> dict[str, Any]:
        body = await self.post_json(self.url, to_anthropic(request, self.config, stream=False))
        try:
            message = json.loads(body)
            result = from_anthropic(message, self.name)
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, KeyError, TypeError, ValueError):
            raise UpstreamError(
                f"The upstream of `{self.name}` answered with a body that is not a message", provider=self.provider
            ) from None
        call.prompt_tokens = result["usage"]["prompt_tokens"]
        call.completion_tokens = result["usage"]["completion_tokens"]
        return result

    async def stream(self, request: ChatCompletionRequest, call: CallContext) -> AsyncIterator[dict[str, Any]]:
        payload = to_anthropic(request, self.config, stream=True)
        translator = _StreamTranslator(self.name, call)
        async with aclosing(self.sse_events(self.url, payload, last_unended=False)) as events:
            async for event, data in events:
                for chunk in translator.feed(event, data):
                    yield chunk
                if translator.done:
                    return
        raise UpstreamError(
            f"The upstream of `{self.name}` ended the stream before message_stop", provider=self.provider
        )


class _StreamTranslator(ChunkTranslator):
    """Anthropic stream events in, OpenAI chunks out."""

    def __init__(self, name: str, call: CallContext) -> None:
        super().__init__(name, call)
        self.done = False
        self.stop_reason: Any = None
        #: Anthropic content block index -> [OpenAI tool call index, whether arguments arrived].
        self.tools: dict[int, list[Any]] = {}
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def feed(self, event: str, raw: str) -> list[dict[str, Any]]:
        try:
            data = json.loads(raw)
        except json.JSONDecodeError:
            raise UpstreamError(
                f"The upstream of `{self.name}` sent an event that is not JSON", provider="anthropic"
            ) from None
        kind = str(data.get("type") or event) if isinstance(data, dict) else event
        if kind == "error":
            error_kind, error_message = _error_fields(data)
            raise map_error(self.name, None, error_kind, error_message)
        if not isinstance(data, dict):
            return []
        if kind == "message_start":
            message = data.get("message") or {}
            if message.get("id"):
                self.id = "chatcmpl-" + str(message["id"])
            usage = message.get("usage") or {}
            self.prompt_tokens = _prompt_tokens(usage)
            self.completion_tokens = int(usage.get("output_tokens") or 0)
            self._report()
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            block = data.get("content_block") or {}
            if block.get("type") == "tool_use":
                position = len(self.tools)
                self.tools[int(data.get("index", 0))] = [position, False]
                call = {"index": position, "id": block.get("id"), "type": "function"}
                call["function"] = {"name": block.get("name"), "arguments": ""}
                return [self._chunk({"tool_calls": [call]})]
            if block.get("type") == "text" and block.get("text"):
                return [self._chunk({"content": block["text"]})]
            return []
        if kind == "content_block_delta":
            delta = data.get("delta") or {}
            if delta.get("type") == "text_delta" and delta.get("text"):
                return [self._chunk({"content": delta["text"]})]
            if delta.get("type") == "input_json_delta" and delta.get("partial_json"):
                tool = self.tools.get(int(data.get("index", 0)))
                if tool is None:
                    return []
                tool[1] = True
                return [
                    self._chunk({"tool_calls": [{"index": tool[0], "function": {"arguments": delta["partial_json"]}}]})
                ]
            return []
        if kind == "content_block_stop":
            tool = self.tools.get(int(data.get("index", 0)))
            if tool is not None and not tool[1]:  # a call without arguments: OpenAI sends "{}"
                tool[1] = True
                return [self._chunk({"tool_calls": [{"index": tool[0], "function": {"arguments": "{}"}}]})]
            return []
        if kind == "message_delta":
            self.stop_reason = (data.get("delta") or {}).get("stop_reason", self.stop_reason)
            usage = data.get("usage") or {}
            if "output_tokens" in usage:
                self.completion_tokens = int(usage.get("output_tokens") or 0)
            if usage.get("input_tokens") is not None:
                self.prompt_tokens = _prompt_tokens(usage)
            self._report()
            return []
        if kind == "message_stop":
            self.done = True
            return [
                self._chunk({}, finish_reason=_finish_reason(self.stop_reason)),
                self._chunk(None, usage=usage_dict(self.prompt_tokens, self.completion_tokens)),
            ]
        return []  # ping and event types added later

    def _report(self) -> None:
        self.call.prompt_tokens = self.prompt_tokens
        self.call.completion_tokens = self.completion_tokens


def _build(config: AnthropicConfig, context: ProviderContext) -> Model:
    return AnthropicChat(config, context)


PROVIDER = ProviderType(
    name="anthropic",
    config_model=AnthropicConfig,
    factory=_build,
    description="Anthropic's Messages API (Claude models), translated to and from OpenAI's shapes.",
)
