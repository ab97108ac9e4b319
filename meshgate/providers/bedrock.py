"""Amazon Bedrock's runtime API (Converse, ConverseStream, InvokeModel) behind meshgate's OpenAI shapes.

Chat requests become `POST /model/{modelId}/converse` (or `/converse-stream`, answered in AWS's
binary event-stream framing, meshgate/providers/aws_eventstream.py): system and developer messages go
to `system`, tool calls and results become `toolUse` and `toolResult` blocks (their ids kept), images
given as base64 data URLs become `image` blocks, max_tokens / temperature / top_p / stop go to
`inferenceConfig`, tools to `toolConfig`. Embeddings use `POST /model/{modelId}/invoke` with the body
of the model's family (Titan Text Embeddings, Cohere Embed), picked from `EMBEDDING_PREFIXES`.

Requests are signed with SigV4 (service `bedrock`, meshgate/providers/aws_sigv4.py), or carry a
Bedrock API key as a bearer token. Failures map to typed errors by AWS's error type (the
`x-amzn-ErrorType` header, the body's `__type`, an exception frame's `:exception-type`) and, when it
is missing, the HTTP status, never by message text: ValidationException is a 400, ThrottlingException
and ServiceQuotaExceededException a 429, ServiceUnavailableException and ModelNotReadyException a 503
(each with Retry-After), ModelTimeoutException a 504, refused credentials or permissions and every
other failure a 502.
"""

from __future__ import annotations

import asyncio
import binascii
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from yarl import URL

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
from meshgate.providers.aws_eventstream import EventMessage, EventStreamDecoder, EventStreamError
from meshgate.providers.aws_sigv4 import Credentials, SigV4Signer, uri_encode
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

PROVIDER_NAME = "bedrock"
#: The SigV4 signing name of bedrock-runtime.
SERVICE = "bedrock"
EVENT_STREAM = "application/vnd.amazon.eventstream"

#: Converse's stopReason -> OpenAI's finish_reason.
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
    # The model's output or tool call could not be parsed: it stopped, with what it had.
    "malformed_model_output": "stop",
    "malformed_tool_use": "stop",
}

#: Image media types -> Converse's image `format`.
IMAGE_FORMATS = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/gif": "gif",
    "image/webp": "webp",
}

ErrorKind = Literal["rate_limited", "overloaded", "invalid", "credentials", "timeout", "failed"]

#: AWS error type (exception frames name it in lowerCamelCase) -> how meshgate reports it.
ERROR_TYPES: dict[str, ErrorKind] = {
    "ThrottlingException": "rate_limited",
    "ServiceQuotaExceededException": "rate_limited",
    "ServiceUnavailableException": "overloaded",
    "ModelNotReadyException": "overloaded",
    "ValidationException": "invalid",
    "SerializationException": "invalid",
    "AccessDeniedException": "credentials",
    "UnrecognizedClientException": "credentials",
    "InvalidSignatureException": "credentials",
    "IncompleteSignatureException": "credentials",
    "MissingAuthenticationTokenException": "credentials",
    "ExpiredTokenException": "credentials",
    "ModelTimeoutException": "timeout",
    "ResourceNotFoundException": "failed",
    "ModelErrorException": "failed",
    "ModelStreamErrorException": "failed",
    "InternalServerException": "failed",
}

#: HTTP status -> how meshgate reports it, for an answer without an AWS error type (a proxy's page).
ERROR_STATUSES: dict[int, ErrorKind] = {
    400: "invalid",
    413: "invalid",
    401: "credentials",
    403: "credentials",
    408: "timeout",
    429: "rate_limited",
    503: "overloaded",
    504: "timeout",
}


class BedrockCapabilities(BaseModel):
    """What the upstream model can do; the pipeline refuses what it cannot (400)."""

    model_config = ConfigDict(extra="forbid")
    streaming: bool = True
    tools: bool = True
    vision: bool = Field(True, description="Image blocks (base64 data URLs).")
    max_stop_sequences: int = Field(4, ge=0)
    context_window: int | None = Field(None, ge=1)
    max_output_tokens: int | None = Field(None, ge=1)
    embedding_dimensions: int | None = Field(
        None, ge=1, description="Default: the family's (1024 for Titan v2, 1536 for Titan v1)."
    )


# -- embeddings: one small table of model families -------------------------------------------------


@dataclass(frozen=True)
class EmbeddingApi:
    """How one family of embedding models is called through InvokeModel."""

    #: Most texts in one call.
    batch: int
    #: Vector size when the request names none, or None when it depends on the model.
    dimensions: int | None
    #: Whether `dimensions` is sent on request.
    shortening: bool
    body: Callable[[list[str], BedrockConfig, int | None], dict[str, Any]]
    #: The vectors and the input token count (None when the body has none) of an answer.
    parse: Callable[[dict[str, Any]], tuple[Any, int | None]]


def _titan_v2_body(texts: list[str], config: BedrockConfig, dimensions: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {"inputText": texts[0], "normalize": config.normalize}
    if dimensions is not None:
        body["dimensions"] = dimensions
    return body


def _titan_parse(data: dict[str, Any]) -> tuple[Any, int | None]:
    count = data.get("inputTextTokenCount")
    return [data.get("embedding")], int(count) if isinstance(count, int) else None


def _cohere_parse(data: dict[str, Any]) -> tuple[Any, int | None]:
    embeddings = data.get("embeddings")
    if isinstance(embeddings, dict):  # Embed v4, or v3 asked for embedding_types
        embeddings = embeddings.get("float")
    return embeddings, None


EMBEDDING_APIS: dict[str, EmbeddingApi] = {
    "titan-v2": EmbeddingApi(1, 1024, True, _titan_v2_body, _titan_parse),
    "titan-v1": EmbeddingApi(1, 1536, False, lambda texts, config, _: {"inputText": texts[0]}, _titan_parse),
    "cohere": EmbeddingApi(
        96, None, False, lambda texts, config, _: {"texts": texts, "input_type": config.input_type}, _cohere_parse
    ),
}

#: Model id prefix (after an ARN's path and a cross-region profile's `us.`/`eu.`...) -> its API.
EMBEDDING_PREFIXES = {
    "amazon.titan-embed-text-v2": "titan-v2",
    "amazon.titan-embed-text-v1": "titan-v1",
    "amazon.titan-embed-g1-text": "titan-v1",
    "cohere.embed-": "cohere",
}


def embedding_api_for(model_id: str) -> str | None:
    name = model_id.rsplit("/", 1)[-1]
    for prefix, api in EMBEDDING_PREFIXES.items():
        if name.startswith(prefix) or f".{prefix}" in name:
            return api
    return None


# -- config ----------------------------------------------------------------------------------------


class BedrockConfig(HttpUpstreamConfig):
    provider: Literal["bedrock"]
    model: str = Field(
        min_length=1,
        description="A model id (anthropic.claude-sonnet-4-5-20250929-v1:0), an inference profile id "
        "(us.anthropic....) or an inference profile ARN.",
    )
    region: str = Field(pattern=r"^[a-z]{2}(-[a-z]+)+-\d+$", description="The AWS region, e.g. us-east-1.")
    base_url: str = Field(
        "https://bedrock-runtime.{region}.amazonaws.com", description="`{region}` is replaced by `region`."
    )
    aws_access_key_id: SecretStr | None = Field(None, description="SigV4 credentials, e.g. ${AWS_ACCESS_KEY_ID}.")
    aws_secret_access_key: SecretStr | None = Field(None, description="e.g. ${AWS_SECRET_ACCESS_KEY}.")
    aws_session_token: SecretStr | None = Field(
        None, description="With temporary credentials (STS), e.g. ${AWS_SESSION_TOKEN}."
    )
    # Optional here, unlike the other remote providers: SigV4 credentials are the other way in.
    api_key: SecretStr | None = Field(  # type: ignore[assignment]
        None, description="A Bedrock API key (bearer token), e.g. ${AWS_BEARER_TOKEN_BEDROCK}; instead of SigV4."
    )
    kind: Literal["chat", "embedding"] = "chat"
    embedding_api: Literal["titan-v2", "titan-v1", "cohere"] | None = Field(
        None, description="The embedding body to send; default: from the model id (needed for an ARN)."
    )
    input_type: Literal["search_document", "search_query", "classification", "clustering"] = Field(
        "search_document", description="What Cohere embeddings are for."
    )
    normalize: bool = Field(True, description="Whether Titan v2 embeddings are normalized.")
    timeout: float | None = Field(None, gt=0, description="Seconds for a whole call; default request_timeout.")
    connect_timeout: float = Field(10.0, gt=0)
    read_timeout: float = Field(120.0, gt=0, description="Longest silence between two stream events.")
    max_connections: int = Field(1024, ge=1, description="Most connections open to the upstream at once.")
    capabilities: BedrockCapabilities = BedrockCapabilities()

    @model_validator(mode="after")
    def _check(self) -> BedrockConfig:
        self.base_url = self.base_url.replace("{region}", self.region)
        keys = self.aws_access_key_id is not None, self.aws_secret_access_key is not None
        if self.api_key is not None and (any(keys) or self.aws_session_token is not None):
            raise ValueError("give either api_key or AWS credentials, not both")
        if self.api_key is None and not all(keys):
            raise ValueError("aws_access_key_id and aws_secret_access_key are required (or api_key)")
        if self.kind == "embedding" and self.embedding_api is None:
            found = embedding_api_for(self.model)
            if found is None:
                raise ValueError(
                    f"no known embedding API for model {self.model!r}; set embedding_api ({', '.join(EMBEDDING_APIS)})"
                )
            self.embedding_api = found  # type: ignore[assignment]
        return self

    @property
    def embedding(self) -> EmbeddingApi:
        return EMBEDDING_APIS[self.embedding_api or "titan-v2"]


def _profile(config: BedrockConfig) -> CapabilityProfile:
    caps = config.capabilities
    embedding = config.embedding if config.kind == "embedding" else None
    return CapabilityProfile(
        chat=embedding is None,
        embeddings=embedding is not None,
        streaming=caps.streaming,
        tools=caps.tools,
        vision=caps.vision,
        json_mode=False,
        logprobs=False,
        logit_bias=False,
        penalties=False,
        seed=False,
        max_stop_sequences=caps.max_stop_sequences,
        max_choices=1,
        context_window=caps.context_window,
        max_output_tokens=caps.max_output_tokens,
        embedding_dimensions=caps.embedding_dimensions or (embedding.dimensions if embedding else None),
        embedding_shortening=embedding.shortening if embedding else False,
        embedding_token_input=False,
    )


# -- request: OpenAI -> Converse -------------------------------------------------------------------


def _image_block(url: str, index: int) -> dict[str, Any]:
    where = f"messages[{index}].content"
    if not url.startswith("data:"):
        raise UnsupportedParameter(
            f"messages[{index}]: the bedrock provider takes images as base64 data URLs only", param=where
        )
    header, sep, data = url[5:].partition(",")
    media_type, _, encoding = header.partition(";")
    if not sep or encoding != "base64" or not media_type.startswith("image/"):
        raise InvalidRequest(
            f"messages[{index}]: an image data URL must be data:image/<type>;base64,<data>", param=where
        )
    image_format = IMAGE_FORMATS.get(media_type.lower())
    if image_format is None:
        raise UnsupportedParameter(
            f"messages[{index}]: Bedrock takes png, jpeg, gif and webp images, not {media_type}", param=where
        )
    try:
        binascii.a2b_base64(data[:4096].encode("ascii") + b"===")
    except (binascii.Error, UnicodeEncodeError):
        raise InvalidRequest(f"messages[{index}]: an image data URL is not valid base64", param=where) from None
    # Blobs travel base64-encoded in JSON: the data URL's payload is sent as it is.
    return {"image": {"format": image_format, "source": {"bytes": data}}}


def _user_blocks(message: UserMessage, index: int) -> list[dict[str, Any]]:
    if isinstance(message.content, str):
        return [{"text": message.content}]
    blocks: list[dict[str, Any]] = []
    for part in message.content:
        if isinstance(part, TextPart):
            blocks.append({"text": part.text})
        elif isinstance(part, ImagePart):
            blocks.append(_image_block(part.image_url.url, index))
        elif isinstance(part, AudioPart | FilePart):
            kind = "audio" if isinstance(part, AudioPart) else "file"
            raise UnsupportedParameter(
                f"The bedrock provider does not take {kind} content parts (messages[{index}]).",
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
        blocks.append({"text": text})
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
        blocks.append({"toolUse": {"toolUseId": call.id, "name": call.function.name, "input": parsed}})
    return blocks


def _tool_config(request: ChatCompletionRequest, history_has_tools: bool) -> dict[str, Any] | None:
    choice = request.tool_choice
    if choice == "none":
        if history_has_tools:  # Converse needs toolConfig beside toolUse blocks and has no "none"
            raise UnsupportedParameter(
                'The bedrock provider cannot send tool_choice "none" in a conversation that has tool calls.',
                param="tool_choice",
            )
        return None
    if not request.tools:
        if choice not in (None, "auto"):
            raise InvalidRequest("tool_choice needs tools", param="tool_choice")
        return None
    tools = []
    for tool in request.tools:
        if tool.function is None:  # custom tools are refused by the capability check
            raise UnsupportedParameter("only function tools are supported", param="tools")
        spec: dict[str, Any] = {"name": tool.function.name}
        if tool.function.description:
            spec["description"] = tool.function.description
        spec["inputSchema"] = {"json": tool.function.parameters or {"type": "object", "properties": {}}}
        tools.append({"toolSpec": spec})
    config: dict[str, Any] = {"tools": tools}
    if choice == "auto":
        config["toolChoice"] = {"auto": {}}
    elif choice == "required":
        config["toolChoice"] = {"any": {}}
    elif isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        config["toolChoice"] = {"tool": {"name": str(choice["function"].get("name", ""))}}
    elif choice is not None:
        raise InvalidRequest(f"Invalid value for 'tool_choice': {str(choice)[:80]}", param="tool_choice")
    return config


def to_converse(request: ChatCompletionRequest) -> dict[str, Any]:
    """The Converse request body (the model id goes in the path) for an OpenAI chat request."""
    system: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        # Consecutive turns of one role merge (tool results, then the user's next words).
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})

    has_tools = False
    for index, message in enumerate(request.messages):
        if isinstance(message, SystemMessage | DeveloperMessage):
            text = message_text(message.content)
            if text:
                system.append({"text": text})
        elif isinstance(message, UserMessage):
            add("user", _user_blocks(message, index))
        elif isinstance(message, AssistantMessage):
            blocks = _assistant_blocks(message, index)
            has_tools = has_tools or any("toolUse" in block for block in blocks)
            if blocks:
                add("assistant", blocks)
        elif isinstance(message, ToolMessage):
            has_tools = True
            result = {"toolUseId": message.tool_call_id, "content": [{"text": message_text(message.content)}]}
            add("user", [{"toolResult": result}])
        elif isinstance(message, FunctionMessage):  # refused by the capability check
            raise UnsupportedParameter("role `function` messages are not supported", param=f"messages[{index}]")
    if request.parallel_tool_calls is False:
        raise UnsupportedParameter(
            "Bedrock's Converse API cannot keep a model from making parallel tool calls.", param="parallel_tool_calls"
        )
    payload: dict[str, Any] = {"messages": messages}
    if system:
        payload["system"] = system
    inference: dict[str, Any] = {}
    if request.output_limit is not None:
        inference["maxTokens"] = request.output_limit
    if request.temperature is not None:
        inference["temperature"] = request.temperature
    if request.top_p is not None:
        inference["topP"] = request.top_p
    if request.stop_list:
        inference["stopSequences"] = request.stop_list
    if inference:
        payload["inferenceConfig"] = inference
    tool_config = _tool_config(request, has_tools)
    if tool_config is not None:
        payload["toolConfig"] = tool_config
    return payload


# -- response: Converse -> OpenAI ------------------------------------------------------------------


def _usage(usage: Any) -> tuple[int, int]:
    """(prompt, completion) tokens; Bedrock's inputTokens leave out the tokens read from or written to its cache."""
    if not isinstance(usage, dict):
        return 0, 0
    prompt = sum(int(usage.get(key) or 0) for key in ("inputTokens", "cacheReadInputTokens", "cacheWriteInputTokens"))
    return prompt, int(usage.get("outputTokens") or 0)


def _finish_reason(stop_reason: Any) -> str:
    return FINISH_REASONS.get(str(stop_reason), "stop")


def _completion_id(request_id: str | None) -> str:
    return "chatcmpl-" + request_id if request_id else new_completion_id()


def from_converse(response: dict[str, Any], model: str, request_id: str | None = None) -> dict[str, Any]:
    """A `chat.completion` dict for a Converse answer."""
    text_parts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in response["output"]["message"].get("content") or ():
        if isinstance(block.get("text"), str):
            text_parts.append(block["text"])
        elif isinstance(block.get("toolUse"), dict):
            use = block["toolUse"]
            tool_calls.append(
                {
                    "id": str(use["toolUseId"]),
                    "type": "function",
                    "function": {"name": str(use["name"]), "arguments": json.dumps(use.get("input") or {})},
                }
            )
        # reasoningContent, citations and guard content are not passed on
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(text_parts) if text_parts or not tool_calls else None,
        "refusal": None,
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    prompt, completion = _usage(response.get("usage"))
    return {
        "id": _completion_id(request_id),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": _finish_reason(response.get("stopReason")),
            }
        ],
        "usage": usage_dict(prompt, completion),
    }


# -- errors ----------------------------------------------------------------------------------------


def error_type(value: str | None) -> str:
    """AWS's error type in the shape of the `x-amzn-ErrorType` header: `ValidationException`, from
    `ValidationException:http://internal.amazon.com/...`, `com.amazon.coral#ValidationException` or an
    exception frame's `validationException`."""
    if not value:
        return ""
    kind = value.split(":", 1)[0].rsplit("#", 1)[-1].strip()
    return kind[:1].upper() + kind[1:]


def map_error(
    name: str, status: int | None, kind: str, message: str, headers: Any = None, request_id: str = ""
) -> MeshError:
    """The typed error for an AWS error type (or, when it is missing, the HTTP status)."""
    kind = error_type(kind)
    detail = f": {message}" if message else ""
    detail += f" (AWS request id {request_id})" if request_id else ""
    # A type added after this table falls back to its status, as an answer without a type does.
    category = ERROR_TYPES.get(kind) or (ERROR_STATUSES.get(status) if status is not None else None)
    if category == "rate_limited":
        return RateLimited(f"The upstream of `{name}` is rate limiting{detail}", retry_after=retry_after(headers))
    if category == "overloaded":
        return Overloaded(f"The upstream of `{name}` is unavailable{detail}", retry_after=retry_after(headers))
    if category == "invalid":
        return InvalidRequest(f"The upstream of `{name}` rejected the request{detail}")
    if category == "credentials":
        label = f" ({kind})" if kind else ""
        return UpstreamError(
            f"The upstream of `{name}` refused meshgate's credentials (HTTP {status or 'error'}){label}; check the "
            "model's AWS credentials or api_key, its region and the IAM permissions for the model",
            provider=PROVIDER_NAME,
            upstream_status=status,
        )
    if category == "timeout":
        return UpstreamTimeout(
            f"The upstream of `{name}` timed out{detail}", provider=PROVIDER_NAME, upstream_status=status
        )
    where = f"HTTP {status}" if status is not None else "a stream error"
    label = f" ({kind})" if kind else ""
    return UpstreamError(
        f"The upstream of `{name}` failed with {where}{label}{detail}", provider=PROVIDER_NAME, upstream_status=status
    )


def _error_fields(body: bytes) -> tuple[str, str]:
    """(`__type`, message) of an error body, each empty when missing."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "", body[:200].decode("utf-8", "replace").strip()
    if not isinstance(data, dict):
        return "", ""
    message = data.get("message", data.get("Message"))
    return str(data.get("__type") or ""), str(message)[:500] if message is not None else ""


# -- the models ------------------------------------------------------------------------------------


class _BedrockModel(JsonUpstream):
    provider = PROVIDER_NAME
    config: BedrockConfig

    def __init__(self, config: BedrockConfig, context: ProviderContext) -> None:
        super().__init__(config, _profile(config), context)
        self.headers = {"content-type": "application/json", "accept": "application/json"}
        self.signer: SigV4Signer | None = None
        if config.api_key is not None:
            self.headers["authorization"] = "Bearer " + config.api_key.get_secret_value()
        else:
            assert config.aws_access_key_id is not None and config.aws_secret_access_key is not None
            token = config.aws_session_token
            credentials = Credentials(
                config.aws_access_key_id.get_secret_value(),
                config.aws_secret_access_key.get_secret_value(),
                token.get_secret_value() if token is not None else None,
            )
            self.signer = SigV4Signer(credentials, config.region, SERVICE)
        # Path labels are percent-encoded whole: a model id's `:` and an ARN's `/` too.
        self.model_url = f"{config.base_url}/model/{uri_encode(config.model)}"

    def describe(self) -> dict[str, Any]:
        return {"upstream_model": self.config.model, "region": self.config.region}

    async def _status_error(self, response: aiohttp.ClientResponse) -> MeshError:
        kind, message = _error_fields(await response.read())
        kind = response.headers.get("x-amzn-errortype") or kind
        request_id = response.headers.get("x-amzn-requestid", "")
        return map_error(self.name, response.status, kind, message, response.headers, request_id)

    @asynccontextmanager
    async def _post(self, action: str, payload: dict[str, Any], accept: str) -> AsyncIterator[aiohttp.ClientResponse]:
        """The successful response to `payload` POSTed to the model's `action`; failures raise typed errors."""
        assert self.session is not None, "start() first"
        url = f"{self.model_url}/{action}"
        body = json.dumps(payload).encode("utf-8")
        headers = {**self.headers, "accept": accept}
        if self.signer is not None:
            headers.update(self.signer.headers("POST", url, body))
        try:
            # encoded=True: the path is sent exactly as signed (yarl would otherwise decode `%3A`).
            async with self.session.post(URL(url, encoded=True), data=body, headers=headers) as response:
                if response.status >= 400:
                    raise await self._status_error(response)
                yield response
        except MeshError:
            raise
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._transport_error(exc) from None

    async def _post_json(self, action: str, payload: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        async with self._post(action, payload, "application/json") as response:
            body = await response.read()
            headers = response.headers
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            data = None
        if not isinstance(data, dict):
            raise UpstreamError(f"The upstream of `{self.name}` answered with invalid JSON", provider=self.provider)
        return data, headers


class BedrockChat(_BedrockModel, ChatModel):
    async def complete(self, request: ChatCompletionRequest, call: CallContext) -> dict[str, Any]:
        data, headers = await self._post_json("converse", to_converse(request))
        try:
            result = from_converse(data, self.name, headers.get("x-amzn-requestid"))
        except (AttributeError, KeyError, TypeError, ValueError):
            raise UpstreamError(
                f"The upstream of `{self.name}` answered with a body that is not a Converse response",
                provider=self.provider,
            ) from None
        call.prompt_tokens = result["usage"]["prompt_tokens"]
        call.completion_tokens = result["usage"]["completion_tokens"]
        return result

    async def stream(self, request: ChatCompletionRequest, call: CallContext) -> AsyncIterator[dict[str, Any]]:
        payload = to_converse(request)
        decoder = EventStreamDecoder()
        async with self._post("converse-stream", payload, EVENT_STREAM) as response:
            translator = _StreamTranslator(self.name, call, response.headers.get("x-amzn-requestid"))
            async for data in response.content.iter_any():
                messages = decoder.feed(data)
                while True:
                    try:
                        message = next(messages, None)
                    except EventStreamError as exc:
                        raise UpstreamError(
                            f"The upstream of `{self.name}` sent a corrupt event-stream frame ({exc})",
                            provider=self.provider,
                        ) from None
                    if message is None:
                        break
                    for chunk in translator.feed(message):
                        yield chunk
        if decoder.pending:
            raise UpstreamError(
                f"The upstream of `{self.name}` ended the stream inside a frame", provider=self.provider
            )
        for chunk in translator.finish():
            yield chunk


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


class _StreamTranslator(ChunkTranslator):
    """ConverseStream events in, OpenAI chunks out."""

    def __init__(self, name: str, call: CallContext, request_id: str | None = None) -> None:
        super().__init__(name, call)
        if request_id:
            self.id = _completion_id(request_id)
        self.request_id = request_id or ""
        self.started = False
        self.stop_reason: Any = None
        #: Converse content block index -> [OpenAI tool call index, whether arguments arrived].
        self.tools: dict[int, list[Any]] = {}

    def _role(self) -> list[dict[str, Any]]:
        if self.started:
            return []
        self.started = True
        return [self._chunk({"role": "assistant", "content": ""})]

    def feed(self, message: EventMessage) -> list[dict[str, Any]]:
        message_type = message.header(":message-type") or "event"
        if message_type == "exception":
            _, text = _error_fields(message.payload)
            kind = message.header(":exception-type")
            raise map_error(self.name, None, kind, text, request_id=self.request_id)
        if message_type == "error":
            code, text = message.header(":error-code"), message.header(":error-message")
            raise map_error(self.name, None, code, text, request_id=self.request_id)
        try:
            data = json.loads(message.payload) if message.payload else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UpstreamError(
                f"The upstream of `{self.name}` sent an event that is not JSON", provider=PROVIDER_NAME
            ) from None
        data = _obj(data)
        event = message.header(":event-type")
        index = int(data.get("contentBlockIndex") or 0)
        if event == "messageStart":
            return self._role()
        if event == "contentBlockStart":
            use = _obj(_obj(data.get("start")).get("toolUse"))
            if not use:
                return []
            position = len(self.tools)
            self.tools[index] = [position, False]
            start = {"index": position, "id": use.get("toolUseId"), "type": "function"}
            start["function"] = {"name": use.get("name"), "arguments": ""}
            return [*self._role(), self._chunk({"tool_calls": [start]})]
        if event == "contentBlockDelta":
            delta = _obj(data.get("delta"))
            content = delta.get("text")
            if isinstance(content, str) and content:
                return [*self._role(), self._chunk({"content": content})]
            piece = _obj(delta.get("toolUse")).get("input")
            tool = self.tools.get(index)
            if tool is None or not isinstance(piece, str) or not piece:
                return []  # reasoning and citation deltas are not passed on
            tool[1] = True
            return [self._chunk({"tool_calls": [{"index": tool[0], "function": {"arguments": piece}}]})]
        if event == "contentBlockStop":
            tool = self.tools.get(index)
            if tool is not None and not tool[1]:  # a call without arguments: OpenAI sends "{}"
                tool[1] = True
                return [self._chunk({"tool_calls": [{"index": tool[0], "function": {"arguments": "{}"}}]})]
            return []
        if event == "messageStop":
            self.stop_reason = data.get("stopReason") or "end_turn"
            return [*self._role(), self._chunk({}, finish_reason=_finish_reason(self.stop_reason))]
        if event == "metadata":
            self.call.prompt_tokens, self.call.completion_tokens = _usage(data.get("usage"))
            return []
        return []  # event types added later

    def finish(self) -> list[dict[str, Any]]:
        if self.stop_reason is None:
            raise UpstreamError(
                f"The upstream of `{self.name}` ended the stream before messageStop", provider=PROVIDER_NAME
            )
        return [self._chunk(None, usage=usage_dict(self.call.prompt_tokens, self.call.completion_tokens))]


#: Most InvokeModel calls of one embeddings request in flight at once.
EMBED_CONCURRENCY = 8


class BedrockEmbedding(_BedrockModel, EmbeddingModel):
    async def embed(self, texts: EmbeddingInput, call: CallContext, dimensions: int | None = None) -> Embeddings:
        if any(not isinstance(text, str) for text in texts):  # refused earlier: the profile takes no token input
            raise UnsupportedParameter("The bedrock provider embeds texts, not token arrays.", param="input")
        api = self.config.embedding
        if dimensions is not None and not api.shortening:  # refused earlier by the capability check
            raise UnsupportedParameter(f"The model `{self.name}` cannot shorten its embeddings.", param="dimensions")
        size = dimensions if dimensions is not None else self.config.capabilities.embedding_dimensions
        strings = [str(text) for text in texts]
        batches = [strings[start : start + api.batch] for start in range(0, len(strings), api.batch)]
        limit = asyncio.Semaphore(EMBED_CONCURRENCY)

        async def one(batch: list[str]) -> tuple[list[list[float]], int]:
            async with limit:
                data, headers = await self._post_json("invoke", api.body(batch, self.config, size))
            vectors, tokens = api.parse(data)
            try:
                if not isinstance(vectors, list) or len(vectors) != len(batch):
                    raise TypeError
                floats = [[float(x) for x in vector] for vector in vectors]
            except (TypeError, ValueError):
                raise UpstreamError(
                    f"The upstream of `{self.name}` answered without one vector of numbers per text",
                    provider=self.provider,
                ) from None
            if tokens is None:  # InvokeModel reports the count in a header too
                header = headers.get("x-amzn-bedrock-input-token-count", "")
                tokens = int(header) if header.isdigit() else 0
            return floats, tokens

        tasks = [asyncio.ensure_future(one(batch)) for batch in batches]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:  # the first failure ends the others' calls too
            for task in tasks:
                task.cancel()
            raise
        vectors = [vector for batch_vectors, _ in results for vector in batch_vectors]
        tokens = sum(count for _, count in results)
        call.prompt_tokens = tokens
        return Embeddings(vectors=vectors, prompt_tokens=tokens)


PROVIDER = ProviderType(
    name="bedrock",
    config_model=BedrockConfig,
    factory=by_kind(BedrockChat, BedrockEmbedding),
    description="Amazon Bedrock's runtime API (Converse, ConverseStream, InvokeModel embeddings), SigV4-signed or "
    "with a Bedrock API key, translated to and from OpenAI's shapes.",
)
