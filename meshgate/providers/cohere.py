"""Cohere's v2 API (`POST /v2/chat`, `POST /v2/embed`) behind meshgate's OpenAI shapes.

Requests are translated from OpenAI's chat completion shape to Cohere's (developer messages are
system messages, `top_p` is `p`, `stop` is `stop_sequences`, tools keep their OpenAI-like function
shape, tool results are `tool` messages with their `tool_call_id`); answers and the typed SSE events
(message-start, content-delta, tool-call-start/delta/end, message-end, ...) are translated back to
`chat.completion` and `chat.completion.chunk` dicts. Cohere's `tool_plan` (its reasoning before a
tool call) is not passed on. Upstream failures map to typed errors by HTTP status alone, never by
message text: 400/422 are a 400, 429 is a 429 with its Retry-After, 503 is a 503 with its
Retry-After, 504 and timeouts are a 504, everything else (credentials, payment, unknown model,
server errors) is a 502. A finish reason of ERROR fails the call the same way, mid-stream too.
"""

from __future__ import annotations

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
    ChatCompletionRequest,
    DeveloperMessage,
    FunctionMessage,
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
    EmbeddingInput,
    EmbeddingModel,
    Embeddings,
    ProviderContext,
    ProviderType,
    by_kind,
    new_completion_id,
    usage_dict,
)
from meshgate.providers.http_json import ChunkTranslator, HttpUpstreamConfig, JsonUpstream, retry_after

PROVIDER_NAME = "cohere"

#: Cohere's finish_reason -> OpenAI's (ERROR and TIMEOUT fail the call instead).
FINISH_REASONS = {
    "COMPLETE": "stop",
    "STOP_SEQUENCE": "stop",
    "MAX_TOKENS": "length",
    "TOOL_CALL": "tool_calls",
}

#: Most texts Cohere embeds in one call; longer inputs are sent in batches of this size.
EMBED_BATCH = 96


class CohereCapabilities(BaseModel):
    """What the upstream model can do; the pipeline refuses what it cannot (400)."""

    model_config = ConfigDict(extra="forbid")
    streaming: bool = True
    tools: bool = True
    context_window: int | None = Field(None, ge=1)
    max_output_tokens: int | None = Field(None, ge=1)
    embedding_dimensions: int | None = Field(None, ge=1)


class CohereConfig(HttpUpstreamConfig):
    provider: Literal["cohere"]
    model: str = Field(min_length=1, description="Cohere's name for the model, e.g. command-a-03-2025.")
    api_key: SecretStr = Field(description="An environment variable reference, e.g. ${COHERE_API_KEY}.")
    base_url: str = Field("https://api.cohere.com", description="Without /v2.")
    kind: Literal["chat", "embedding"] = "chat"
    input_type: Literal["search_document", "search_query", "classification", "clustering"] = Field(
        "search_document", description="What embeddings are for (kind: embedding only)."
    )
    timeout: float | None = Field(None, gt=0, description="Seconds for a whole call; default request_timeout.")
    connect_timeout: float = Field(10.0, gt=0)
    read_timeout: float = Field(120.0, gt=0, description="Longest silence between two stream events.")
    max_connections: int = Field(1024, ge=1, description="Most connections open to the upstream at once.")
    capabilities: CohereCapabilities = CohereCapabilities()


def _profile(config: CohereConfig) -> CapabilityProfile:
    caps = config.capabilities
    return CapabilityProfile(
        chat=config.kind == "chat",
        embeddings=config.kind == "embedding",
        streaming=caps.streaming,
        tools=caps.tools,
        vision=False,
        json_mode=False,
        logprobs=False,
        logit_bias=False,
        penalties=True,
        seed=True,
        max_stop_sequences=5,
        max_choices=1,
        context_window=caps.context_window,
        max_output_tokens=caps.max_output_tokens,
        embedding_dimensions=caps.embedding_dimensions,
    )


# -- request: OpenAI -> Cohere ---------------------------------------------------------------------


def _user_text(message: UserMessage, index: int) -> str:
    if isinstance(message.content, str):
        return message.content
    for part in message.content:
        if not isinstance(part, TextPart):
            raise UnsupportedParameter(
                f"The cohere provider takes text content parts only (messages[{index}]).",
                param=f"messages[{index}].content",
            )
    return message_text(message.content)


def _assistant_message(message: AssistantMessage, index: int) -> dict[str, Any] | None:
    if isinstance(message.content, str):
        text = message.content
    else:
        text = "".join(
            part.text if isinstance(part, TextPart) else part.refusal
            for part in message.content or ()
            if isinstance(part, TextPart | RefusalPart)
        )
    out: dict[str, Any] = {"role": "assistant"}
    if text:
        out["content"] = text
    calls = []
    for call_index, call in enumerate(message.tool_calls or ()):
        if call.function is None:  # custom tools are refused by the capability check
            raise UnsupportedParameter(
                f"messages[{index}].tool_calls[{call_index}]: only function tool calls are supported",
                param=f"messages[{index}].tool_calls",
            )
        calls.append(
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.function.name, "arguments": call.function.arguments},
            }
        )
    if calls:
        out["tool_calls"] = calls
    return out if len(out) > 1 else None


def _tool_choice(choice: Any) -> str | None:
    if choice is None or choice == "auto":
        return None
    if choice == "required":
        return "REQUIRED"
    if choice == "none":
        return "NONE"
    if isinstance(choice, dict) and choice.get("type") == "function":
        raise UnsupportedParameter("The cohere provider cannot force one named tool.", param="tool_choice")
    raise InvalidRequest(f"Invalid value for 'tool_choice': {str(choice)[:80]}", param="tool_choice")


def to_cohere(request: ChatCompletionRequest, config: CohereConfig, stream: bool) -> dict[str, Any]:
    """The v2 chat request for an OpenAI-shaped chat completion request."""
    messages: list[dict[str, Any]] = []
    for index, message in enumerate(request.messages):
        if isinstance(message, SystemMessage | DeveloperMessage):
            messages.append({"role": "system", "content": message_text(message.content)})
        elif isinstance(message, UserMessage):
            messages.append({"role": "user", "content": _user_text(message, index)})
        elif isinstance(message, AssistantMessage):
            assistant = _assistant_message(message, index)
            if assistant is not None:
                messages.append(assistant)
        elif isinstance(message, ToolMessage):
            messages.append(
                {"role": "tool", "tool_call_id": message.tool_call_id, "content": message_text(message.content)}
            )
        elif isinstance(message, FunctionMessage):  # refused by the capability check
            raise UnsupportedParameter("role `function` messages are not supported", param=f"messages[{index}]")
    payload: dict[str, Any] = {"model": config.model, "messages": messages, "stream": stream}
    if request.output_limit is not None:
        payload["max_tokens"] = request.output_limit
    if request.stop_list:
        payload["stop_sequences"] = request.stop_list
    for ours, theirs in (
        ("temperature", "temperature"),
        ("top_p", "p"),
        ("seed", "seed"),
        ("frequency_penalty", "frequency_penalty"),
        ("presence_penalty", "presence_penalty"),
    ):
        value = getattr(request, ours)
        if value is not None:
            payload[theirs] = value
    if request.tools:
        tools = []
        for tool in request.tools:
            if tool.function is None:  # custom tools are refused by the capability check
                raise UnsupportedParameter("only function tools are supported", param="tools")
            function: dict[str, Any] = {
                "name": tool.function.name,
                "parameters": tool.function.parameters or {"type": "object", "properties": {}},
            }
            if tool.function.description:
                function["description"] = tool.function.description
            tools.append({"type": "function", "function": function})
        payload["tools"] = tools
    choice = _tool_choice(request.tool_choice)
    if choice is not None:
        payload["tool_choice"] = choice
    return payload


# -- response: Cohere -> OpenAI --------------------------------------------------------------------


def _usage(usage: Any) -> tuple[int, int]:
    """(prompt, completion) tokens: the model's own counts, else the billed units."""
    if not isinstance(usage, dict):
        return 0, 0
    for key in ("tokens", "billed_units"):
        counts = usage.get(key)
        if isinstance(counts, dict) and (counts.get("input_tokens") is not None or counts.get("output_tokens")):
            return int(counts.get("input_tokens") or 0), int(counts.get("output_tokens") or 0)
    return 0, 0


def _finish_reason(name: str, reason: Any, error: Any = None) -> str:
    if reason == "ERROR":
        detail = f": {error}" if error else ""
        raise UpstreamError(f"The upstream of `{name}` failed while generating{detail}", provider=PROVIDER_NAME)
    if reason == "TIMEOUT":
        raise UpstreamTimeout(f"The upstream of `{name}` timed out while generating", provider=PROVIDER_NAME)
    return FINISH_REASONS.get(str(reason), "stop")


def _tool_call(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    arguments = function.get("arguments")
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments or {})
    return {
        "id": str(call["id"]),
        "type": "function",
        "function": {"name": str(function["name"]), "arguments": arguments or "{}"},
    }


def from_cohere(response: dict[str, Any], name: str) -> dict[str, Any]:
    """A `chat.completion` dict for a v2 chat answer."""
    finish_reason = _finish_reason(name, response.get("finish_reason"))
    message = response.get("message") or {}
    content = message.get("content")
    if isinstance(content, str):
        text_parts = [content]
    else:
        text_parts = [
            str(i.get("text") or "") for i in content or () if isinstance(i, dict) and i.get("type") == "text"
        ]
    tool_calls = [_tool_call(call) for call in message.get("tool_calls") or ()]
    out: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(text_parts) if text_parts or not tool_calls else None,
        "refusal": None,
    }
    if tool_calls:
        out["tool_calls"] = tool_calls
    prompt_tokens, completion_tokens = _usage(response.get("usage"))
    return {
        "id": "chatcmpl-" + str(response.get("id") or new_completion_id()[9:]),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": name,
        "choices": [{"index": 0, "message": out, "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage_dict(prompt_tokens, completion_tokens),
    }


# -- errors ----------------------------------------------------------------------------------------


def map_error(name: str, status: int, message: str, headers: Any = None) -> MeshError:
    """The typed error for an upstream HTTP status (the message is only quoted)."""
    detail = f": {message}" if message else ""
    if status == 429:
        return RateLimited(f"The upstream of `{name}` is rate limiting{detail}", retry_after=retry_after(headers))
    if status == 503:
        return Overloaded(f"The upstream of `{name}` is unavailable{detail}", retry_after=retry_after(headers))
    if status in (400, 413, 422):
        return InvalidRequest(f"The upstream of `{name}` rejected the request{detail}")
    if status in (401, 403, 498):
        return UpstreamError(
            f"The upstream of `{name}` refused meshgate's credentials (HTTP {status}); check the model's api_key",
            provider=PROVIDER_NAME,
            upstream_status=status,
        )
    if status == 504:
        return UpstreamTimeout(
            f"The upstream of `{name}` timed out{detail}", provider=PROVIDER_NAME, upstream_status=status
        )
    return UpstreamError(
        f"The upstream of `{name}` failed with HTTP {status}{detail}", provider=PROVIDER_NAME, upstream_status=status
    )


def _error_message(body: bytes) -> str:
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return body[:200].decode("utf-8", "replace")
    if isinstance(data, dict) and data.get("message") is not None:
        return str(data["message"])[:500]
    return ""


# -- the models ------------------------------------------------------------------------------------


class _CohereModel(JsonUpstream):
    provider = PROVIDER_NAME
    config: CohereConfig

    def __init__(self, config: CohereConfig, context: ProviderContext) -> None:
        super().__init__(config, _profile(config), context)
        self.headers = {
            "content-type": "application/json",
            "accept": "application/json",
            "authorization": "Bearer " + config.api_key.get_secret_value(),
        }

    async def _status_error(self, response: aiohttp.ClientResponse) -> MeshError:
        return map_error(self.name, response.status, _error_message(await response.read()), response.headers)

    async def _post_json(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        body = await self.post_json(self.config.base_url + path, payload)
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            data = None
        if not isinstance(data, dict):
            raise UpstreamError(f"The upstream of `{self.name}` answered with invalid JSON", provider=self.provider)
        return data


class CohereChat(_CohereModel, ChatModel):
    async def complete(self, request: ChatCompletionRequest, call: CallContext) -> dict[str, Any]:
        data = await self._post_json("/v2/chat", to_cohere(request, self.config, stream=False))
        try:
            result = from_cohere(data, self.name)
        except (AttributeError, KeyError, TypeError, ValueError):
            raise UpstreamError(
                f"The upstream of `{self.name}` answered with a body that is not a chat response",
                provider=self.provider,
            ) from None
        call.prompt_tokens = result["usage"]["prompt_tokens"]
        call.completion_tokens = result["usage"]["completion_tokens"]
        return result

    async def stream(self, request: ChatCompletionRequest, call: CallContext) -> AsyncIterator[dict[str, Any]]:
        payload = to_cohere(request, self.config, stream=True)
        headers = {**self.headers, "accept": "text/event-stream"}
        translator = _StreamTranslator(self.name, call)
        async with aclosing(self.sse_events(self.config.base_url + "/v2/chat", payload, headers)) as events:
            async for event, data in events:
                for chunk in translator.feed(event, data):
                    yield chunk
                if translator.done:
                    return
        raise UpstreamError(
            f"The upstream of `{self.name}` ended the stream before message-end", provider=self.provider
        )


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


class _StreamTranslator(ChunkTranslator):
    """Cohere's typed stream events in, OpenAI chunks out."""

    def __init__(self, name: str, call: CallContext) -> None:
        super().__init__(name, call)
        self.done = False
        self.started = False
        #: Cohere tool call index -> [OpenAI tool call index, whether arguments arrived].
        self.tools: dict[int, list[Any]] = {}

    def _role(self) -> list[dict[str, Any]]:
        if self.started:
            return []
        self.started = True
        return [self._chunk({"role": "assistant", "content": ""})]

    def feed(self, event: str, raw: str) -> list[dict[str, Any]]:
        if raw.strip() == "[DONE]":
            return []
        try:
            data = json.loads(raw)
        except json.JSONDecodeError:
            raise UpstreamError(
                f"The upstream of `{self.name}` sent an event that is not JSON", provider=PROVIDER_NAME
            ) from None
        if not isinstance(data, dict):
            return []
        kind = str(data.get("type") or event)
        delta = _obj(data.get("delta"))
        message = _obj(delta.get("message"))
        if kind == "message-start":
            if data.get("id"):
                self.id = "chatcmpl-" + str(data["id"])
            return self._role()
        if kind in ("content-start", "content-delta"):
            content = _obj(message.get("content"))
            text = content.get("text")
            if isinstance(text, str) and text:
                return [*self._role(), self._chunk({"content": text})]
            return []
        if kind == "tool-call-start":
            tool = _obj(message.get("tool_calls"))
            function = _obj(tool.get("function"))
            position = len(self.tools)
            arguments = function.get("arguments") if isinstance(function.get("arguments"), str) else ""
            self.tools[int(data.get("index") or 0)] = [position, bool(arguments)]
            start = {"index": position, "id": tool.get("id"), "type": "function"}
            start["function"] = {"name": function.get("name"), "arguments": arguments}
            return [*self._role(), self._chunk({"tool_calls": [start]})]
        if kind == "tool-call-delta":
            tool = _obj(message.get("tool_calls"))
            function = _obj(tool.get("function"))
            piece = function.get("arguments")
            entry = self.tools.get(int(data.get("index") or 0))
            if entry is None or not isinstance(piece, str) or not piece:
                return []
            entry[1] = True
            return [self._chunk({"tool_calls": [{"index": entry[0], "function": {"arguments": piece}}]})]
        if kind == "tool-call-end":
            entry = self.tools.get(int(data.get("index") or 0))
            if entry is not None and not entry[1]:  # a call without arguments: OpenAI sends "{}"
                entry[1] = True
                return [self._chunk({"tool_calls": [{"index": entry[0], "function": {"arguments": "{}"}}]})]
            return []
        if kind == "message-end":
            finish_reason = _finish_reason(self.name, delta.get("finish_reason"), delta.get("error"))
            prompt_tokens, completion_tokens = _usage(delta.get("usage"))
            self.call.prompt_tokens, self.call.completion_tokens = prompt_tokens, completion_tokens
            self.done = True
            return [
                *self._role(),
                self._chunk({}, finish_reason=finish_reason),
                self._chunk(None, usage=usage_dict(prompt_tokens, completion_tokens)),
            ]
        return []  # content-end, tool-plan-delta, citations, debug and event types added later


class CohereEmbedding(_CohereModel, EmbeddingModel):
    async def embed(self, texts: EmbeddingInput, call: CallContext, dimensions: int | None = None) -> Embeddings:
        if dimensions is not None:  # refused by the capability check
            raise UnsupportedParameter("The cohere provider cannot shorten embeddings.", param="dimensions")
        if any(not isinstance(text, str) for text in texts):
            raise UnsupportedParameter("The cohere provider embeds texts, not token arrays.", param="input")
        vectors: list[list[float]] = []
        tokens = 0
        for start in range(0, len(texts), EMBED_BATCH):
            batch = texts[start : start + EMBED_BATCH]
            data = await self._post_json(
                "/v2/embed",
                {
                    "model": self.config.model,
                    "texts": batch,
                    "input_type": self.config.input_type,
                    "embedding_types": ["float"],
                },
            )
            embeddings = data.get("embeddings")
            floats = embeddings.get("float") if isinstance(embeddings, dict) else None
            if not isinstance(floats, list) or len(floats) != len(batch):
                raise UpstreamError(
                    f"The upstream of `{self.name}` answered without one float embedding per text",
                    provider=self.provider,
                )
            try:
                vectors.extend([float(x) for x in vector] for vector in floats)
            except (TypeError, ValueError):
                raise UpstreamError(
                    f"The upstream of `{self.name}` answered with embeddings that are not numbers",
                    provider=self.provider,
                ) from None
            meta = data.get("meta")
            billed = meta.get("billed_units") if isinstance(meta, dict) else None
            if isinstance(billed, dict):
                tokens += int(billed.get("input_tokens") or 0)
        call.prompt_tokens = tokens
        return Embeddings(vectors=vectors, prompt_tokens=tokens)


PROVIDER = ProviderType(
    name="cohere",
    config_model=CohereConfig,
    factory=by_kind(CohereChat, CohereEmbedding),
    description="Cohere's v2 API (Command chat models and Embed), translated to and from OpenAI's shapes.",
)
