"""Mistral's La Plateforme API (api.mistral.ai): OpenAI-like, with its own names for a few fields.

Requests: `seed` is `random_seed`, `max_completion_tokens` is `max_tokens`, `stream_options` and
`user` do not exist (a stream's last chunk always carries usage), `safe_prompt` is Mistral's own, embeddings
shorten by `output_dimension` and take texts only. Answers: the finish reason `model_length` is
OpenAI's `length`, `error` fails the call. Errors are `{"object": "error", "message", "type"}` or,
for a request that fails validation (HTTP 422), `{"detail": ...}`; both map by status, as
openai-compatible's do.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import msgspec
from pydantic import Field

from meshgate.errors import MeshError, UpstreamError
from meshgate.protocol import ChatCompletionRequest
from meshgate.providers.base import CallContext, EmbeddingInput, ProviderContext, ProviderType, by_kind
from meshgate.providers.openai_compatible import (
    Capabilities,
    OpenAICompatibleChat,
    OpenAICompatibleConfig,
    OpenAICompatibleEmbedding,
    _Upstream,
)
from meshgate.providers.sse_upstream import UpstreamEventStream
from meshgate.providers.streaming import Deliver, Valve

_json_decode = msgspec.json.Decoder().decode

#: Mistral's finish reasons in OpenAI's words (`error` is not a finish reason: the call failed).
_FINISH = {"model_length": "length"}


class MistralConfig(OpenAICompatibleConfig):
    provider: Literal["mistral"]  # type: ignore[assignment]
    model: str = Field(min_length=1, description="Mistral's name for the model, e.g. mistral-large-latest.")
    base_url: str = Field("https://api.mistral.ai/v1", description="Up to and including /v1.")
    safe_prompt: bool = Field(False, description="Have Mistral prepend its safety prompt.")
    capabilities: Capabilities = Capabilities(logit_bias=False, stream_usage=False)


class _MistralUpstream(_Upstream):
    def _error_from_status(self, status: int, body: bytes, headers: Any) -> MeshError:
        # A validation error's body is {"detail": ...}: give its text to the shared mapping, which
        # goes by status alone.
        try:
            data = _json_decode(body)
        except msgspec.DecodeError:
            data = None
        if isinstance(data, dict) and "detail" in data and "message" not in data:
            detail = data["detail"]
            if isinstance(detail, list):
                detail = "; ".join(
                    f"{'.'.join(str(p) for p in item.get('loc', []))}: {item.get('msg', '')}"
                    if isinstance(item, dict)
                    else str(item)
                    for item in detail
                )
            body = msgspec.json.encode({"message": str(detail)})
        return super()._error_from_status(status, body, headers)


def _finish_reason(choice: dict[str, Any], name: str) -> None:
    reason = choice.get("finish_reason")
    if reason == "error":
        raise UpstreamError(f"The upstream of `{name}` failed while generating", provider="mistral")
    if reason in _FINISH:
        choice["finish_reason"] = _FINISH[reason]


class _MistralEventStream(UpstreamEventStream):
    """Mistral's chunks with their finish reasons in OpenAI's words."""

    def _fix(self, event: dict[str, Any]) -> dict[str, Any]:
        for choice in event.get("choices") or ():
            if isinstance(choice, dict):
                _finish_reason(choice, self.name)
        return event

    async def __anext__(self) -> dict[str, Any]:
        return self._fix(await super().__anext__())

    async def relay(self, deliver: Deliver, valve: Valve) -> None:
        await super().relay(lambda event: deliver(self._fix(event)), valve)


class MistralChat(OpenAICompatibleChat):
    provider = "mistral"
    upstream_class = _MistralUpstream
    event_stream_class = _MistralEventStream
    config: MistralConfig

    def _payload(self, request: ChatCompletionRequest, stream: bool) -> dict[str, Any]:
        payload = super()._payload(request, stream)
        payload.pop("stream_options", None)
        payload.pop("user", None)  # an end-user id for OpenAI's abuse monitoring: Mistral has no such field
        if "seed" in payload:
            payload["random_seed"] = payload.pop("seed")
        if "max_completion_tokens" in payload:
            payload["max_tokens"] = payload.pop("max_completion_tokens")
        if self.config.safe_prompt:
            payload["safe_prompt"] = True
        return payload

    async def complete(self, request: ChatCompletionRequest, call: CallContext) -> dict[str, Any]:
        result = await super().complete(request, call)
        for choice in result["choices"]:
            if isinstance(choice, dict):
                _finish_reason(choice, self.name)
        return result


class MistralEmbedding(OpenAICompatibleEmbedding):
    provider = "mistral"
    upstream_class = _MistralUpstream

    def __init__(self, config: MistralConfig, context: ProviderContext) -> None:
        super().__init__(config, context)
        self.profile = dataclasses.replace(self.profile, embedding_token_input=False)

    def _embedding_payload(self, texts: EmbeddingInput, dimensions: int | None) -> dict[str, Any]:
        payload: dict[str, Any] = {"model": self.config.model, "input": texts, "encoding_format": "float"}
        if dimensions is not None:
            payload["output_dimension"] = dimensions
        return payload


PROVIDER = ProviderType(
    name="mistral",
    config_model=MistralConfig,
    factory=by_kind(MistralChat, MistralEmbedding),
    description="Mistral's API (api.mistral.ai): chat and mistral-embed.",
)
