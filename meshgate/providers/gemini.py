"""Google's Gemini API (`generativelanguage.googleapis.com`) behind meshgate's OpenAI shapes.

Chat requests become `POST /v1beta/models/{model}:generateContent` (or `:streamGenerateContent?alt=sse`):
system and developer messages go to `systemInstruction`, assistant turns have role `model`, tool calls
and results become `functionCall` and `functionResponse` parts, images given as base64 data URLs
become `inlineData`. Gemini gives function calls no ids, so meshgate names them `call_<n>` (n counts
the calls of one answer) and maps a tool result back to its call through the name of the call that
id belongs to. Embeddings use `:batchEmbedContents`.

The key goes in the `x-goog-api-key` header, never in the URL. Upstream failures map to typed errors
by HTTP status and Google's error `status` (and, for a bad key, its ErrorInfo reason), never by
message text: INVALID_ARGUMENT is a 400, RESOURCE_EXHAUSTED a 429 and UNAVAILABLE a 503 (both with
Retry-After), bad credentials and other failures a 502, DEADLINE_EXCEEDED and timeouts a 504.
"""

from __future__ import annotations

import binascii
import json
import math
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any, Literal
from urllib.parse import quote

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
    EmbeddingInput,
    EmbeddingModel,
    Embeddings,
    ProviderContext,
    ProviderType,
    by_kind,
    new_completion_id,
    usage_dict,
)
from meshgate.providers.http_json import ChunkTranslator, HttpUpstreamConfig, JsonUpstream, parse_retry_after

#: Gemini's finishReason -> OpenAI's finish_reason (a function call makes it "tool_calls").
FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "IMAGE_RECITATION": "content_filter",
}


class GeminiCapabilities(BaseModel):
    """What the upstream model can do; the pipeline refuses what it cannot (400)."""

    model_config = ConfigDict(extra="forbid")
    streaming: bool = True
    tools: bool = True
    vision: bool = True
    json_mode: bool = True
    context_window: int | None = Field(1048576, ge=1)
    max_output_tokens: int | None = Field(None, ge=1)
    embedding_dimensions: int | None = Field(None, ge=1)
    embedding_shortening: bool = Field(True, description="Whether `dimensions` is sent as outputDimensionality.")


class GeminiConfig(HttpUpstreamConfig):
    provider: Literal["gemini"]
    model: str = Field(min_length=1, description="Gemini's name for the model, e.g. gemini-2.5-flash.")
    api_key: SecretStr = Field(description="An environment variable reference, e.g. ${GEMINI_API_KEY}.")
    base_url: str = Field("https://generativelanguage.googleapis.com", description="Without /v1beta.")
    kind: Literal["chat", "embedding"] = "chat"
    timeout: float | None = Field(None, gt=0, description="Seconds for a whole call; default request_timeout.")
    connect_timeout: float = Field(10.0, gt=0)
    read_timeout: float = Field(120.0, gt=0, description="Longest silence between two stream events.")
    max_connections: int = Field(1024, ge=1, description="Most connections open to the upstream at once.")
    capabilities: GeminiCapabilities = GeminiCapabilities()

    @property
    def resource(self) -> str:
        """`models/<model>` (a name already starting with `models/` or `tunedModels/` is kept)."""
        name = self.model if self.model.startswith(("models/", "tunedModels/")) else "models/" + self.model
        return quote(name, safe="/")


def _profile(config: GeminiConfig) -> CapabilityProfile:
    caps = config.capabilities
    return CapabilityProfile(
        chat=config.kind == "chat",
        embeddings=config.kind == "embedding",
        streaming=caps.streaming,
        tools=caps.tools,
        vision=caps.vision,
        json_mode=caps.json_mode,
        logprobs=False,
        logit_bias=False,
        penalties=True,
        seed=True,
        max_stop_sequences=5,
        max_choices=1,
        context_window=caps.context_window,
        max_output_tokens=caps.max_output_tokens,
        embedding_dimensions=caps.embedding_dimensions,
        embedding_shortening=caps.embedding_shortening,
        embedding_token_input=False,
    )


# -- request: OpenAI -> Gemini ---------------------------------------------------------------------


def _inline_image(url: str, index: int) -> dict[str, Any]:
    if not url.startswith("data:"):
        raise UnsupportedParameter(
            f"messages[{index}]: the gemini provider takes images as base64 data URLs only",
            param=f"messages[{index}].content",
        )
    header, sep, data = url[5:].partition(",")
    mime_type, _, encoding = header.partition(";")
    if not sep or encoding != "base64" or not mime_type.startswith("image/"):
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
    return {"inlineData": {"mimeType": mime_type, "data": data}}


def _user_parts(message: UserMessage, index: int) -> list[dict[str, Any]]:
    if isinstance(message.content, str):
        return [{"text": message.content}]
    parts: list[dict[str, Any]] = []
    for part in message.content:
        if isinstance(part, TextPart):
            parts.append({"text": part.text})
        elif isinstance(part, ImagePart):
            parts.append(_inline_image(part.image_url.url, index))
        elif isinstance(part, AudioPart | FilePart):
            kind = "audio" if isinstance(part, AudioPart) else "file"
            raise UnsupportedParameter(
                f"The gemini provider does not take {kind} content parts (messages[{index}]).",
                param=f"messages[{index}].content",
            )
    return parts


def _model_parts(message: AssistantMessage, index: int, names: dict[str, str]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    if isinstance(message.content, str):
        text = message.content
    else:
        text = "".join(
            part.text if isinstance(part, TextPart) else part.refusal
            for part in message.content or ()
            if isinstance(part, TextPart | RefusalPart)
        )
    if text:
        parts.append({"text": text})
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
        names[call.id] = call.function.name
        parts.append({"functionCall": {"name": call.function.name, "args": parsed}})
    return parts


def _function_response(message: ToolMessage, index: int, names: dict[str, str]) -> dict[str, Any]:
    name = names.get(message.tool_call_id)
    if name is None:
        raise InvalidRequest(
            f"messages[{index}].tool_call_id {message.tool_call_id!r} answers no tool call of an earlier "
            "assistant message",
            param=f"messages[{index}].tool_call_id",
        )
    text = message_text(message.content)
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        parsed = None
    # Gemini takes an object; a result that is not one goes under "output", as Google's docs advise.
    response = parsed if isinstance(parsed, dict) else {"output": text}
    return {"functionResponse": {"name": name, "response": response}}


def _tool_config(request: ChatCompletionRequest) -> dict[str, Any] | None:
    choice = request.tool_choice
    if choice is None:
        return None
    if choice == "auto":
        config: dict[str, Any] = {"mode": "AUTO"}
    elif choice == "required":
        config = {"mode": "ANY"}
    elif choice == "none":
        config = {"mode": "NONE"}
    elif isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        config = {"mode": "ANY", "allowedFunctionNames": [str(choice["function"].get("name", ""))]}
    else:
        raise InvalidRequest(f"Invalid value for 'tool_choice': {str(choice)[:80]}", param="tool_choice")
    return {"functionCallingConfig": config}


def to_gemini(request: ChatCompletionRequest) -> dict[str, Any]:
    """The generateContent request body for an OpenAI-shaped chat completion request."""
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    #: Tool call id -> function name, from the assistant messages seen so far.
    names: dict[str, str] = {}

    def add(role: str, parts: list[dict[str, Any]]) -> None:
        # Consecutive turns of one role merge (several tool results, then the user's next words).
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})

    for index, message in enumerate(request.messages):
        if isinstance(message, SystemMessage | DeveloperMessage):
            text = message_text(message.content)
            if text:
                system.append(text)
        elif isinstance(message, UserMessage):
            add("user", _user_parts(message, index))
        elif isinstance(message, AssistantMessage):
            parts = _model_parts(message, index, names)
            if parts:
                add("model", parts)
        elif isinstance(message, ToolMessage):
            add("user", [_function_response(message, index, names)])
        elif isinstance(message, FunctionMessage):  # refused by the capability check
            raise UnsupportedParameter("role `function` messages are not supported", param=f"messages[{index}]")
    if request.parallel_tool_calls is False:
        raise UnsupportedParameter(
            "Gemini models cannot be kept from making parallel tool calls.", param="parallel_tool_calls"
        )
    payload: dict[str, Any] = {"contents": contents}
    if system:
        payload["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    generation: dict[str, Any] = {}
    if request.stop_list:
        generation["stopSequences"] = request.stop_list
    if request.temperature is not None:
        generation["temperature"] = request.temperature
    if request.top_p is not None:
        generation["topP"] = request.top_p
    if request.output_limit is not None:
        generation["maxOutputTokens"] = request.output_limit
    if request.seed is not None:
        generation["seed"] = request.seed
    if request.presence_penalty:
        generation["presencePenalty"] = request.presence_penalty
    if request.frequency_penalty:
        generation["frequencyPenalty"] = request.frequency_penalty
    if request.response_format is not None and request.response_format.type != "text":
        generation["responseMimeType"] = "application/json"
        if request.response_format.type == "json_schema":
            schema = (request.response_format.json_schema or {}).get("schema")
            if isinstance(schema, dict):
                generation["responseJsonSchema"] = schema
    if generation:
        payload["generationConfig"] = generation
    if request.tools:
        declarations = []
        for tool in request.tools:
            if tool.function is None:  # custom tools are refused by the capability check
                raise UnsupportedParameter("only function tools are supported", param="tools")
            declaration: dict[str, Any] = {"name": tool.function.name}
            if tool.function.description:
                declaration["description"] = tool.function.description
            if tool.function.parameters:
                declaration["parametersJsonSchema"] = tool.function.parameters
            declarations.append(declaration)
        payload["tools"] = [{"functionDeclarations": declarations}]
    tool_config = _tool_config(request)
    if tool_config is not None:
        payload["toolConfig"] = tool_config
    return payload


# -- response: Gemini -> OpenAI --------------------------------------------------------------------


def _usage(response: dict[str, Any]) -> tuple[int, int] | None:
    usage = response.get("usageMetadata")
    if not isinstance(usage, dict):
        return None
    prompt = int(usage.get("promptTokenCount") or 0) + int(usage.get("toolUsePromptTokenCount") or 0)
    # Thinking tokens are billed as output.
    output = int(usage.get("candidatesTokenCount") or 0) + int(usage.get("thoughtsTokenCount") or 0)
    return prompt, output


def _finish_reason(reason: Any, has_calls: bool) -> str:
    if has_calls and reason in (None, "STOP"):
        return "tool_calls"
    return FINISH_REASONS.get(str(reason), "stop")


def _candidate(response: dict[str, Any]) -> tuple[dict[str, Any] | None, Any]:
    """The first candidate and its finishReason; a blocked prompt has no candidate and is "SAFETY"."""
    candidates = response.get("candidates") or []
    if candidates:
        candidate = candidates[0]
        return candidate, candidate.get("finishReason")
    feedback = response.get("promptFeedback") or {}
    return None, ("SAFETY" if feedback.get("blockReason") else None)


def _split_parts(candidate: dict[str, Any] | None) -> tuple[str, list[dict[str, Any]]]:
    """The text (thoughts left out) and the function calls of a candidate."""
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in ((candidate or {}).get("content") or {}).get("parts") or ():
        if "functionCall" in part:
            calls.append(part["functionCall"])
        elif isinstance(part.get("text"), str) and not part.get("thought"):
            text.append(part["text"])
    return "".join(text), calls


def _tool_call(call: dict[str, Any], position: int) -> dict[str, Any]:
    return {
        "id": str(call.get("id") or f"call_{position}"),
        "type": "function",
        "function": {"name": str(call["name"]), "arguments": json.dumps(call.get("args") or {})},
    }


def from_gemini(response: dict[str, Any], model: str) -> dict[str, Any]:
    """A `chat.completion` dict for a generateContent answer."""
    candidate, reason = _candidate(response)
    text, calls = _split_parts(candidate)
    tool_calls = [_tool_call(call, position) for position, call in enumerate(calls)]
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not tool_calls else None}
    message["refusal"] = None
    if tool_calls:
        message["tool_calls"] = tool_calls
    prompt, output = _usage(response) or (0, 0)
    return {
        "id": new_completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": _finish_reason(reason, bool(calls))}
        ],
        "usage": usage_dict(prompt, output),
    }


# -- errors ----------------------------------------------------------------------------------------


def _retry_after(headers: Any, details: list[Any]) -> int:
    """Seconds from the Retry-After header, else from a google.rpc.RetryInfo detail ("37s"), else 1."""
    value = headers.get("retry-after") if headers is not None else None
    if value is None:
        for detail in details:
            if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
                value = str(detail.get("retryDelay") or "").removesuffix("s") or None
    return parse_retry_after(value)


def _bad_key(details: list[Any]) -> bool:
    """Google answers a wrong key with 400 INVALID_ARGUMENT and ErrorInfo reason API_KEY_INVALID."""
    return any(
        isinstance(detail, dict)
        and str(detail.get("@type", "")).endswith("google.rpc.ErrorInfo")
        and str(detail.get("reason", "")).startswith("API_KEY_")
        for detail in details
    )


def map_error(
    name: str, status: int | None, kind: str, message: str, headers: Any = None, details: list[Any] | None = None
) -> MeshError:
    """The typed error for a Google error `status` (or, when it is missing, the HTTP status)."""
    details = details or []
    detail = f": {message}" if message else ""
    if kind == "RESOURCE_EXHAUSTED" or (not kind and status == 429):
        return RateLimited(
            f"The upstream of `{name}` is rate limiting{detail}", retry_after=_retry_after(headers, details)
        )
    if kind == "UNAVAILABLE" or (not kind and status == 503):
        return Overloaded(f"The upstream of `{name}` is overloaded{detail}", retry_after=_retry_after(headers, details))
    if kind in ("UNAUTHENTICATED", "PERMISSION_DENIED") or _bad_key(details) or (not kind and status in (401, 403)):
        return UpstreamError(
            f"The upstream of `{name}` refused meshgate's credentials (HTTP {status or 'error'}); "
            "check the model's api_key",
            provider="gemini",
            upstream_status=status,
        )
    if kind in ("INVALID_ARGUMENT", "OUT_OF_RANGE") or (not kind and status in (400, 413)):
        return InvalidRequest(f"The upstream of `{name}` rejected the request{detail}")
    if kind == "DEADLINE_EXCEEDED" or (not kind and status == 504):
        return UpstreamTimeout(f"The upstream of `{name}` timed out{detail}", provider="gemini", upstream_status=status)
    where = f"HTTP {status}" if status is not None else "a stream error"
    label = f" ({kind})" if kind else ""
    return UpstreamError(
        f"The upstream of `{name}` failed with {where}{label}{detail}", provider="gemini", upstream_status=status
    )


def _error_fields(data: Any) -> tuple[str, str, list[Any]]:
    if isinstance(data, list) and data:  # a streamed error may come as a one-element array
        data = data[0]
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        error = data["error"]
        details = error.get("details")
        return (
            str(error.get("status") or ""),
            str(error.get("message") or ""),
            details if isinstance(details, list) else [],
        )
    return "", "", []


# -- the models ------------------------------------------------------------------------------------


class _GeminiModel(JsonUpstream):
    provider = "gemini"
    config: GeminiConfig

    def __init__(self, config: GeminiConfig, context: ProviderContext) -> None:
        super().__init__(config, _profile(config), context)
        self.base = f"{config.base_url}/v1beta/{config.resource}"
        self.headers = {"content-type": "application/json", "x-goog-api-key": config.api_key.get_secret_value()}

    async def _status_error(self, response: aiohttp.ClientResponse) -> MeshError:
        body = await response.read()
        try:
            kind, message, details = _error_fields(json.loads(body))
        except (json.JSONDecodeError, UnicodeDecodeError):
            kind, message, details = "", "", []
        return map_error(self.name, response.status, kind, message, response.headers, details)

    async def _post(self, method: str, payload: dict[str, Any]) -> Any:
        body = await self.post_json(f"{self.base}:{method}", payload)
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UpstreamError(
                f"The upstream of `{self.name}` answered with a body that is not JSON", provider=self.provider
            ) from None


class GeminiChat(_GeminiModel, ChatModel):
    async def complete(self, request: ChatCompletionRequest, call: CallContext) -> dict[str, Any]:
        data = await self._post("generateContent", to_gemini(request))
        try:
            result = from_gemini(data, self.name)
        except (AttributeError, KeyError, TypeError, ValueError):
            raise UpstreamError(
                f"The upstream of `{self.name}` answered with a body that is not a GenerateContentResponse",
                provider=self.provider,
            ) from None
        call.prompt_tokens = result["usage"]["prompt_tokens"]
        call.completion_tokens = result["usage"]["completion_tokens"]
        return result

    async def stream(self, request: ChatCompletionRequest, call: CallContext) -> AsyncIterator[dict[str, Any]]:
        url = f"{self.base}:streamGenerateContent?alt=sse"
        translator = _StreamTranslator(self.name, call)
        async with aclosing(self.sse_events(url, to_gemini(request))) as events:
            async for _, data in events:
                for chunk in translator.feed(data):
                    yield chunk
        for chunk in translator.finish():
            yield chunk


class _StreamTranslator(ChunkTranslator):
    """Partial GenerateContentResponses in, OpenAI chunks out."""

    def __init__(self, name: str, call: CallContext) -> None:
        super().__init__(name, call)
        self.started = False
        self.reason: Any = None
        self.calls = 0

    def feed(self, raw: str) -> list[dict[str, Any]]:
        try:
            data = json.loads(raw)
        except json.JSONDecodeError:
            raise UpstreamError(
                f"The upstream of `{self.name}` sent an event that is not JSON", provider="gemini"
            ) from None
        kind, message, details = _error_fields(data)
        if kind or message:
            raise map_error(self.name, None, kind, message, None, details)
        if not isinstance(data, dict):
            raise UpstreamError(f"The upstream of `{self.name}` sent an event of an unknown shape", provider="gemini")
        chunks: list[dict[str, Any]] = []
        if not self.started:
            self.started = True
            chunks.append(self._chunk({"role": "assistant", "content": ""}))
        candidate, reason = _candidate(data)
        text, calls = _split_parts(candidate)
        if text:
            chunks.append(self._chunk({"content": text}))
        for call in calls:
            tool_call = {"index": self.calls, **_tool_call(call, self.calls)}
            chunks.append(self._chunk({"tool_calls": [tool_call]}))
            self.calls += 1
        if reason is not None:
            self.reason = reason
        usage = _usage(data)
        if usage is not None:  # each event carries the counts so far
            self.call.prompt_tokens, self.call.completion_tokens = usage
        return chunks

    def finish(self) -> list[dict[str, Any]]:
        if self.reason is None:
            raise UpstreamError(
                f"The upstream of `{self.name}` ended the stream before a finishReason", provider="gemini"
            )
        return [
            self._chunk({}, finish_reason=_finish_reason(self.reason, self.calls > 0)),
            self._chunk(None, usage=usage_dict(self.call.prompt_tokens, self.call.completion_tokens)),
        ]


class GeminiEmbedding(_GeminiModel, EmbeddingModel):
    async def embed(self, texts: EmbeddingInput, call: CallContext, dimensions: int | None = None) -> Embeddings:
        requests: list[dict[str, Any]] = []
        for text in texts:
            if not isinstance(text, str):  # refused earlier: the profile takes no token input
                raise UnsupportedParameter("The gemini provider embeds texts only.", param="input")
            entry: dict[str, Any] = {"model": self.config.resource, "content": {"parts": [{"text": text}]}}
            if dimensions is not None:
                entry["outputDimensionality"] = dimensions
            requests.append(entry)
        data = await self._post("batchEmbedContents", {"requests": requests})
        try:
            vectors = [[float(value) for value in row["values"]] for row in data["embeddings"]]
        except (KeyError, TypeError, ValueError):
            vectors = []
        if len(vectors) != len(requests):
            raise UpstreamError(
                f"The upstream of `{self.name}` answered embeddings in an unknown shape", provider=self.provider
            )
        # batchEmbedContents reports no token counts: about four characters a token.
        tokens = sum(max(1, math.ceil(len(str(text)) / 4)) for text in texts)
        call.prompt_tokens = tokens
        return Embeddings(vectors=vectors, prompt_tokens=tokens)


PROVIDER = ProviderType(
    name="gemini",
    config_model=GeminiConfig,
    factory=by_kind(GeminiChat, GeminiEmbedding),
    description="Google's Gemini API (generateContent, batchEmbedContents), translated to and from OpenAI's shapes.",
)
