"""A test plugin: a provider type whose model fails with an unexpected exception (a bug), to prove
that a 500 never leaks its traceback. It registers through the same hook as the built-ins."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from meshgate.hookspecs import hookimpl
from meshgate.protocol import ChatCompletionRequest
from meshgate.providers.base import (
    CallContext,
    CapabilityProfile,
    ChatModel,
    ModelConfig,
    ProviderContext,
    ProviderType,
)

SECRET_DETAIL = "internal-detail-that-must-not-leak"


class BrokenConfig(ModelConfig):
    provider: Literal["test-broken"]


class BrokenModel(ChatModel):
    provider = "test-broken"

    def __init__(self, config: BrokenConfig, context: ProviderContext) -> None:
        super().__init__(config, CapabilityProfile(chat=True))

    async def complete(self, request: ChatCompletionRequest, call: CallContext) -> dict[str, Any]:
        raise RuntimeError(SECRET_DETAIL)

    async def stream(self, request: ChatCompletionRequest, call: CallContext) -> AsyncIterator[dict[str, Any]]:
        yield {
            "id": "x",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": self.name,
            "choices": [{"index": 0, "delta": {"content": "partial"}, "finish_reason": None}],
        }
        raise RuntimeError(SECRET_DETAIL)


@hookimpl
def register_providers(register: Callable[[ProviderType], None]) -> None:
    register(ProviderType(name="test-broken", config_model=BrokenConfig, factory=BrokenModel))
