"""Any upstream that speaks OpenAI's API: vLLM, TGI, Ollama, llama.cpp's server, OpenAI itself.

One pooled aiohttp session per model entry keeps connections alive for whole answers; streams go
through their own callback-driven client and pool (stream_client.py, sse_upstream.py), relayed
event by event as they arrive, never buffered. Upstream failures map to typed errors: unreachable or 5xx is
502, a timeout is 504, the upstream's own 4xx about the request passes through as that 4xx.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, ClassVar, Literal

import aiohttp
import msgspec
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from meshgate.errors import InvalidRequest, MeshError, RateLimited, UpstreamError, UpstreamTimeout
from meshgate.protocol import ChatCompletionRequest, to_wire
from meshgate.providers import connectors
from meshgate.providers.base import (
    CallContext,
    CapabilityProfile,
    ChatModel,
    EmbeddingInput,
    EmbeddingModel,
    Embeddings,
    Model,
    ModelConfig,
    ProviderContext,
    ProviderType,
    by_kind,
)
from meshgate.providers.sse_upstream import UpstreamEventStream
from meshgate.providers.stream_client import StreamPool

log = logging.getLogger("meshgate.providers")
_json_decode = msgspec.json.Decoder().decode
_json_encode = msgspec.json.Encoder().encode

#: Errors before any response byte that mean the upstream closed a pooled keep-alive connection as
#: we reused it (its idle timeout raced ours): the request did not reach it, so it is sent once more
#: on a fresh connection, as Go's and urllib3's clients do. A refused connect is not among them.
_STALE_CONNECTION = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


class Capabilities(BaseModel):
    """What the upstream model can do; the pipeline refuses what it cannot (400)."""

    model_config = ConfigDict(extra="forbid")
    streaming: bool = True
    tools: bool = True
    json_mode: bool = True
    vision: bool = False
    audio: bool = False
    logprobs: bool = True
    logit_bias: bool = True
    max_choices: int = Field(1, ge=1, le=128)
    context_window: int | None = Field(None, ge=1)
    max_output_tokens: int | None = Field(None, ge=1)
    embedding_dimensions: int | None = Field(None, ge=1)
    embedding_shortening: bool = False
    #: Whether the upstream honours `stream_options.include_usage` (vLLM, OpenAI, llama.cpp do).
    stream_usage: bool = True
    # What OpenAI itself serves but most OpenAI-compatible servers ignore without an error: off
    # unless declared, so that a request for them is a 400 rather than silently not honoured.
    #: Audio output (`audio`, `modalities: ["audio"]`).
    audio_output: bool = False
    #: The deprecated `functions`/`function_call` and role "function" messages.
    functions: bool = False
    #: Custom (free-form input) tools.
    custom_tools: bool = False
    #: `web_search_options`.
    web_search: bool = False
    #: `moderation` of input and output.
    moderation: bool = False


class OpenAICompatibleConfig(ModelConfig):
    provider: Literal["openai-compatible"]
    model: str = Field(min_length=1, description="The upstream's name for the model.")
    base_url: str = Field(description="Up to and including /v1, e.g. http://127.0.0.1:8000/v1.")
    api_key: SecretStr | None = None
    kind: Literal["chat", "embedding"] = "chat"
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: float | None = Field(None, gt=0, description="Seconds for a whole call; default request_timeout.")
    connect_timeout: float = Field(10.0, gt=0)
    read_timeout: float = Field(120.0, gt=0, description="Longest silence between two stream events.")
    max_connections: int = Field(
        4096,
        ge=1,
        description="Most connections open to this upstream at once; a streaming call holds one for its "
        "whole length, so this bounds concurrent streams (calls beyond it wait for a free connection).",
    )
    capabilities: Capabilities = Capabilities()

    @field_validator("base_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    # Hooks for provider types that speak OpenAI's API with another URL scheme or credential.

    def request_path(self, path: str) -> str:
        """What follows `base_url` in the request for an API `path` such as "/chat/completions"."""
        return path

    def auth_headers(self) -> dict[str, str]:
        """The credential headers; they win over configured `headers` of the same name."""
        if self.api_key is None:
            return {}
        return {"authorization": f"Bearer {self.api_key.get_secret_value()}"}


def _profile(config: OpenAICompatibleConfig) -> CapabilityProfile:
    caps = config.capabilities
    return CapabilityProfile(
        chat=config.kind == "chat",
        embeddings=config.kind == "embedding",
        streaming=caps.streaming,
        tools=caps.tools,
        json_mode=caps.json_mode,
        vision=caps.vision,
        audio=caps.audio,
        logprobs=caps.logprobs,
        logit_bias=caps.logit_bias,
        max_choices=caps.max_choices,
        max_stop_sequences=16,
        context_window=caps.context_window,
        max_output_tokens=caps.max_output_tokens,
        embedding_dimensions=caps.embedding_dimensions,
        embedding_shortening=caps.embedding_shortening,
        embedding_token_input=True,
        audio_output=caps.audio_output,
        functions=caps.functions,
        custom_tools=caps.custom_tools,
        web_search=caps.web_search,
        moderation=caps.moderation,
    )


class _Upstream:
    """The HTTP side shared by the chat and embedding adapters: pool, headers, error mapping."""

    def __init__(self, config: OpenAICompatibleConfig, context: ProviderContext) -> None:
        self.config = config
        self.total_timeout = config.timeout or context.request_timeout
        self.session: aiohttp.ClientSession | None = None
        self.headers = {"content-type": "application/json", **config.headers}
        auth = config.auth_headers()
        # The key wins over a configured header of the same name, whatever its case.
        self.headers = {k: v for k, v in self.headers.items() if k.lower() not in auth}
        self.headers.update(auth)
        #: Streams go through their own callback-driven client (meshgate/providers/stream_client.py).
        self.streams = StreamPool(
            config.base_url,
            self.headers,
            limit=config.max_connections,
            connect_timeout=config.connect_timeout,
            keepalive_timeout=60,
        )

    async def start(self) -> None:
        # The pool is shared with the other models calling the same origin (connectors.py); the
        # session, with this model's timeouts, is its own. No cookies are ever kept.
        self.session = connectors.session(
            self.config.base_url,
            self.config.max_connections,
            aiohttp.ClientTimeout(
                total=self.total_timeout,
                sock_connect=self.config.connect_timeout,
                sock_read=self.config.read_timeout,
            ),
            auto_decompress=True,
        )

    async def close(self) -> None:
        if self.session is not None:
            await connectors.close(self.session)
            self.session = None
        await self.streams.close()

    def _error_from_status(self, status: int, body: bytes, headers: Any) -> MeshError:
        message = ""
        try:
            data = _json_decode(body)
            if isinstance(data, dict) and isinstance(data.get("error"), dict):
                message = str(data["error"].get("message") or "")
            elif isinstance(data, dict) and "message" in data:
                message = str(data["message"])
        except msgspec.DecodeError:
            message = body[:200].decode("utf-8", "replace")
        provider = self.config.provider
        if status == 429:
            retry = headers.get("retry-after", "1")
            return RateLimited(
                f"The upstream of `{self.config.name}` is rate limiting: {message or 'too many requests'}",
                retry_after=int(retry) if str(retry).isdigit() else 1,
            )
        if status in (400, 413, 422):
            return InvalidRequest(f"The upstream of `{self.config.name}` rejected the request: {message}")
        if status in (401, 403):
            return UpstreamError(
                f"The upstream of `{self.config.name}` refused meshgate's credentials (HTTP {status}); "
                "check the model's api_key",
                provider=provider,
                upstream_status=status,
            )
        detail = f": {message}" if message else ""
        return UpstreamError(
            f"The upstream of `{self.config.name}` failed with HTTP {status}{detail}",
            provider=provider,
            upstream_status=status,
        )

    def _transport_error(self, exc: BaseException) -> MeshError:
        if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
            return UpstreamTimeout(
                f"The upstream of `{self.config.name}` did not answer in time", provider=self.config.provider
            )
        if isinstance(exc, aiohttp.ClientConnectorError):
            return UpstreamError(
                f"The upstream of `{self.config.name}` is unreachable at {self.config.base_url}",
                provider=self.config.provider,
            )
        return UpstreamError(
            f"The connection to the upstream of `{self.config.name}` failed: {type(exc).__name__}",
            provider=self.config.provider,
        )

    async def _post(
        self, path: str, payload: dict[str, Any], timeouts: aiohttp.ClientTimeout | None = None
    ) -> aiohttp.ClientResponse:
        """Send the request; one retry when a reused connection turns out to be closed."""
        assert self.session is not None, "start() first"
        url, body = self.config.base_url + self.config.request_path(path), _json_encode(payload)
        options: dict[str, Any] = {"data": body, "headers": self.headers}
        if timeouts is not None:
            options["timeout"] = timeouts
        try:
            return await self.session.post(url, **options)
        except aiohttp.ClientConnectorError:
            raise
        except _STALE_CONNECTION as exc:
            log.info("upstream of %s closed a pooled connection (%s); retrying once", self.config.name, exc)
            return await self.session.post(url, **options)

    async def post_json(self, path: str, payload: dict[str, Any]) -> Any:
        try:
            async with await self._post(path, payload) as response:
                body = await response.read()
                if response.status >= 400:
                    raise self._error_from_status(response.status, body, response.headers)
        except MeshError:
            raise
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._transport_error(exc) from None
        try:
            return _json_decode(body)
        except msgspec.DecodeError:
            raise UpstreamError(
                f"The upstream of `{self.config.name}` answered with invalid JSON",
                provider=self.config.provider,
            ) from None


class _UpstreamModel(Model):
    """What the chat and embedding adapters share: the profile, the pool and its lifecycle."""

    provider = "openai-compatible"
    #: The HTTP side; a provider type with its own error bodies subclasses it.
    upstream_class: ClassVar[type[_Upstream]] = _Upstream
    config: OpenAICompatibleConfig

    def __init__(self, config: OpenAICompatibleConfig, context: ProviderContext) -> None:
        super().__init__(config, _profile(config))
        self.upstream = self.upstream_class(config, context)

    async def start(self) -> None:
        await self.upstream.start()

    async def close(self) -> None:
        await self.upstream.close()

    def describe(self) -> dict[str, Any]:
        return {"upstream_model": self.config.model}


class OpenAICompatibleChat(_UpstreamModel, ChatModel):
    #: Decodes the upstream's SSE into chunks; a provider with its own event quirks swaps it.
    event_stream_class: type[UpstreamEventStream] = UpstreamEventStream

    def _payload(self, request: ChatCompletionRequest, stream: bool) -> dict[str, Any]:
        payload = to_wire(request)
        payload["model"] = self.config.model
        payload["stream"] = stream
        options = payload.pop("stream_options", None) or {}
        if stream:
            if self.config.capabilities.stream_usage:
                # Always ask for usage: the gateway counts every stream, whether or not the client asked.
                options["include_usage"] = True
            else:
                options.pop("include_usage", None)
            if options:
                payload["stream_options"] = options
        return payload

    async def complete(self, request: ChatCompletionRequest, call: CallContext) -> dict[str, Any]:
        result = await self.upstream.post_json("/chat/completions", self._payload(request, stream=False))
        if not isinstance(result, dict) or not isinstance(result.get("choices"), list):
            raise UpstreamError(f"The upstream of `{self.name}` answered without choices", provider=self.provider)
        result["model"] = self.name
        return result

    def stream(self, request: ChatCompletionRequest, call: CallContext) -> AsyncIterator[dict[str, Any]]:
        upstream = self.upstream
        return self.event_stream_class(
            upstream.streams,
            upstream.streams.request(
                self.config.request_path("/chat/completions"), _json_encode(self._payload(request, stream=True))
            ),
            name=self.name,
            provider=self.provider,
            model=self.name,
            read_timeout=self.config.read_timeout,
            total_timeout=upstream.total_timeout,
            status_error=upstream._error_from_status,
        )


class OpenAICompatibleEmbedding(_UpstreamModel, EmbeddingModel):
    def _embedding_payload(self, texts: EmbeddingInput, dimensions: int | None) -> dict[str, Any]:
        payload: dict[str, Any] = {"model": self.config.model, "input": texts, "encoding_format": "float"}
        if dimensions is not None:
            payload["dimensions"] = dimensions
        return payload

    async def embed(self, texts: EmbeddingInput, call: CallContext, dimensions: int | None = None) -> Embeddings:
        result = await self.upstream.post_json("/embeddings", self._embedding_payload(texts, dimensions))
        try:
            rows = sorted(result["data"], key=lambda row: row["index"])
            vectors = [row["embedding"] for row in rows]
            tokens = int((result.get("usage") or {}).get("prompt_tokens", 0))
        except (KeyError, TypeError, ValueError):
            raise UpstreamError(
                f"The upstream of `{self.name}` answered embeddings in an unknown shape",
                provider=self.provider,
            ) from None
        if len(vectors) != len(texts):
            raise UpstreamError(
                f"The upstream of `{self.name}` returned {len(vectors)} vectors for {len(texts)} inputs",
                provider=self.provider,
            )
        return Embeddings(vectors=vectors, prompt_tokens=tokens)


PROVIDER = ProviderType(
    name="openai-compatible",
    config_model=OpenAICompatibleConfig,
    factory=by_kind(OpenAICompatibleChat, OpenAICompatibleEmbedding),
    description="Any upstream speaking OpenAI's API: vLLM, TGI, Ollama, llama.cpp server, OpenAI.",
)
