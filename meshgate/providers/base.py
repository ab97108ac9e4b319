"""What a provider is: a typed capability profile and the chat or embedding interface it implements.

A *provider type* (``openai-compatible``, ``local-llama``, ...) registers itself through the
``register_providers`` hook with the pydantic model of its mesh.yaml entry and a factory. The core
never branches on a provider's name: the pipeline reads the :class:`CapabilityProfile`.

Chat models speak OpenAI's shapes: :meth:`ChatModel.complete` returns a ``chat.completion`` dict and
:meth:`ChatModel.stream` yields ``chat.completion.chunk`` dicts, the last of which carries ``usage``.
"""

from __future__ import annotations

import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from meshgate.protocol import ChatCompletionRequest
from meshgate.settings import default_model_cache


@dataclass(frozen=True)
class CapabilityProfile:
    """What a model can do. The pipeline checks requests against this, never against names."""

    chat: bool = False
    embeddings: bool = False
    streaming: bool = True
    tools: bool = False
    json_mode: bool = False
    vision: bool = False
    audio: bool = False
    logprobs: bool = False
    logit_bias: bool = False
    penalties: bool = True
    seed: bool = True
    max_stop_sequences: int = 4
    #: Largest n (number of choices) the model can return in one call.
    max_choices: int = 1
    context_window: int | None = None
    max_output_tokens: int | None = None
    embedding_dimensions: int | None = None
    #: Whether the model can shorten its embeddings on request (OpenAI's `dimensions`).
    embedding_shortening: bool = False
    #: Whether it accepts token arrays as embedding input.
    embedding_token_input: bool = False
    #: Audio output: `audio`, `modalities` with "audio", earlier audio replies (by id) in the messages.
    audio_output: bool = False
    #: The deprecated `functions` and `function_call`, and messages of role "function".
    functions: bool = False
    #: Custom (free-form input) tools, their calls and `tool_choice` of type "custom".
    custom_tools: bool = False
    #: `web_search_options` (OpenAI's search models).
    web_search: bool = False
    #: `moderation` of the input and output (a control: never dropped silently).
    moderation: bool = False


class Price(BaseModel):
    """USD per million tokens."""

    model_config = ConfigDict(extra="forbid")
    input: float = Field(0.0, ge=0)
    output: float = Field(0.0, ge=0)


class ModelConfig(BaseModel):
    """The fields every `models:` entry in mesh.yaml has. Provider types extend it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="The name clients use in `model`.")
    provider: str = Field(description="The provider type that serves it.")
    description: str = ""
    price: Price = Price()
    card: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="Model card fields served in /v1/models under `meshgate.card` (license, source, owner, "
        "approved uses, ...); they override what the provider knows of the model.",
    )
    rpm: int | None = Field(None, ge=1, description="Requests per minute to this model, across all callers.")
    tpm: int | None = Field(None, ge=1, description="Tokens per minute to this model, across all callers.")
    hosting: Literal["local", "private", "cloud"] | None = Field(
        None,
        description="Where this model sends data: `local` (this machine), `private` (a network the organisation "
        "controls) or `cloud`; the provider type's default when unset (local models: local, others: cloud). "
        "Data classes allow only some hostings.",
    )
    region: str | None = Field(None, description="Where the deployment runs (informational; shown in /v1/models).")


@dataclass
class CallContext:
    """Per-call facts a provider may need, and the progress it reports back.

    A provider that generates its own tokens updates `prompt_tokens` and `completion_tokens` as it
    goes, so that a call cut short (client hung up) is still charged for what was generated.
    """

    request_id: str
    started: float = field(default_factory=time.monotonic)
    #: Seconds left for the whole call, or None.
    timeout: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: The call's data classification (public | internal | confidential | restricted): a route only
    #: uses deployments whose hosting that class allows.
    data_class: str = "internal"
    #: What sticky routing hashes (the user or the key), or None.
    sticky_key: str | None = None
    #: Set by a route: the deployment that served the call, the model object behind it (its price
    #: prices the call) and each deployment that failed over before, with why.
    deployment: str | None = None
    served_by: Model | None = None
    failovers: list[tuple[str, str]] = field(default_factory=list)


class Model(ABC):
    """A served model: one `models:` entry made live."""

    #: Provider type name, for logs and metrics only.
    provider: ClassVar[str]

    #: Where it sends data unless its entry says `hosting:` (see ModelConfig.hosting); in-process
    #: model classes say "local".
    hosting: str = "cloud"

    def __init__(self, config: ModelConfig, profile: CapabilityProfile) -> None:
        self.config = config
        self.name = config.name
        self.profile = profile
        if config.hosting is not None:
            self.hosting = config.hosting

    async def start(self) -> None:
        """Load weights, open pools. Called once at startup, before the server is ready."""

    async def close(self) -> None:
        """Release resources. Called once at shutdown after in-flight calls finished."""

    def ready(self) -> bool:
        return True

    def describe(self) -> dict[str, Any]:
        """Extra facts for GET /v1/models/{id} (under `meshgate`)."""
        return {}

    def card(self) -> dict[str, Any]:
        """What the provider knows of the model itself (name, license, source, file); mesh.yaml's
        `card:` fields are laid over it in /v1/models."""
        return {}


class ChatModel(Model):
    @abstractmethod
    async def complete(self, request: ChatCompletionRequest, call: CallContext) -> dict[str, Any]:
        """Answer in full: a `chat.completion` dict including `usage`."""

    @abstractmethod
    def stream(self, request: ChatCompletionRequest, call: CallContext) -> AsyncIterator[dict[str, Any]]:
        """Yield `chat.completion.chunk` dicts; the last one carries `usage` (and may have no choices).

        Closing the iterator early (client hung up) must stop the generation at once.
        """


#: Texts, or token arrays for models whose profile says `embedding_token_input`.
EmbeddingInput = list[str] | list[list[int]]


@dataclass
class Embeddings:
    vectors: list[list[float]]
    prompt_tokens: int


class EmbeddingModel(Model):
    @abstractmethod
    async def embed(self, texts: EmbeddingInput, call: CallContext, dimensions: int | None = None) -> Embeddings:
        """One vector per text, in order."""


@dataclass(frozen=True)
class ProviderContext:
    """What the server hands every provider factory besides the model's own config."""

    data_dir: Path
    #: Default seconds a whole call may take (the `request_timeout` setting).
    request_timeout: float = 600.0
    #: Where model files shipped in split packages are assembled (the `model_cache` setting).
    model_cache: Path = field(default_factory=default_model_cache)


@dataclass(frozen=True)
class ProviderType:
    """A kind of provider, registered through the `register_providers` hook.

    `factory(config, context)` builds the live model from its validated `config_model` entry.
    """

    name: str
    config_model: type[ModelConfig]
    factory: Callable[[Any, ProviderContext], Model]
    description: str = ""


def by_kind(
    chat: Callable[[Any, ProviderContext], Model], embedding: Callable[[Any, ProviderContext], Model]
) -> Callable[[Any, ProviderContext], Model]:
    """The factory of a provider type that serves chat or embeddings by its entry's `kind`."""

    def build(config: Any, context: ProviderContext) -> Model:
        return embedding(config, context) if config.kind == "embedding" else chat(config, context)

    return build


# -- OpenAI-shaped response builders shared by providers that generate their own answers ----------


def new_completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def usage_dict(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chunk_dict(
    completion_id: str,
    model: str,
    created: int,
    delta: dict[str, Any] | None,
    finish_reason: str | None = None,
    usage: dict[str, int] | None = None,
) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": []
        if delta is None
        else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }
    if usage is not None:
        chunk["usage"] = usage
    return chunk


def completion_dict(
    completion_id: str,
    model: str,
    created: int,
    text: str,
    finish_reason: str,
    usage: dict[str, int],
) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage,
    }
