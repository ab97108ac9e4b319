"""The call pipeline: every model call passes the same steps, whatever provider serves it.

    api parses -> resolve model -> steps.before (ascending order) -> provider -> steps.after
    (descending order, always, also on error or hang-up)

Steps come from the `register_pipeline_steps` hook; built-in ones (capability check, request log)
register the same way. Later issues add authenticate, authorize, limits and budgets, guards and
cache as steps at the orders reserved below, without touching the routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from meshgate.errors import (
    ClientDisconnected,
    InvalidRequest,
    MeshError,
    ModelNotFound,
    RetryLater,
    StreamCut,
    UpstreamError,
)
from meshgate.protocol import ChatCompletionRequest, EmbeddingRequest, message_text
from meshgate.providers.base import CallContext, ChatModel, EmbeddingInput, EmbeddingModel, Embeddings, Model
from meshgate.providers.streaming import Valve, relay

M = TypeVar("M", bound=Model)

#: Orders reserved for the steps of the design; a plugin picks a number between them.
ORDER_AUTHENTICATE = 100
ORDER_AUTHORIZE = 200
ORDER_CHECK_CAPABILITIES = 300
ORDER_LIMITS = 400
ORDER_INPUT_GUARDS = 500
ORDER_CACHE = 600
ORDER_RECORD = 0  # request log, usage, audit: outermost, so `after` sees the final outcome


@dataclass
class Call:
    """One model call on its way through the pipeline."""

    endpoint: str  # "chat.completions" | "embeddings"
    request: ChatCompletionRequest | EmbeddingRequest
    headers: Mapping[str, str]
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    stream: bool = False
    model: Model | None = None
    started: float = field(default_factory=time.monotonic)
    started_wall: float = field(default_factory=time.time)
    first_token_at: float | None = None
    finished_at: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    #: Stream chunks that carried output: about a token each, for a stream that ends without usage.
    streamed_pieces: int = 0
    cache_hit: bool = False
    #: How the cache answered ("hit" | "semantic-hit" | "miss" | "bypass"), None when it is off;
    #: and, on a hit, the upstream cost the replayed answer saved.
    cache: str | None = None
    cost_saved_usd: float = 0.0
    #: A stored answer a `before` step (the cache) hands the pipeline to serve instead of calling
    #: the model: the completion dict, or a stream's list of chunks.
    replay: Any = None
    #: Set by a step that needs the fresh answer in its `after` (the cache); the pipeline then keeps
    #: it in `answer`: the completion dict, or a shallow copy of each chunk as it was delivered.
    keep_answer: bool = False
    answer: Any = None
    status: int = 200
    error: MeshError | None = None
    #: Extra response headers steps want to send (rate-limit headers, for example).
    response_headers: dict[str, str] = field(default_factory=dict)
    #: Who is calling (a meshgate.control.policy.Principal), set by the auth middleware.
    principal: Any = None
    #: Names of the steps whose `before` ran, in order; when a step refuses, it is the last one.
    policies: list[str] = field(default_factory=list)
    #: The answer's text, kept only when the pipeline captures content (audit content policy).
    response_text: str | None = None
    #: Free space for steps to hand facts to each other (policy decisions, reservations...).
    notes: dict[str, Any] = field(default_factory=dict)
    #: Set by a `before` step (the guards) that rewrote an embedding call's texts (redaction).
    embed_inputs: EmbeddingInput | None = None
    #: Set by a `before` step (the guards) that must see and may change the answer on its way to the
    #: client: see OutputTransform. The cache keeps the answer as the model gave it, before this.
    output: OutputTransform | None = None

    @property
    def model_name(self) -> str:
        return self.request.model

    @property
    def latency_ms(self) -> float:
        return ((self.finished_at or time.monotonic()) - self.started) * 1000

    @property
    def ttft_ms(self) -> float | None:
        return None if self.first_token_at is None else (self.first_token_at - self.started) * 1000

    def __post_init__(self) -> None:
        self.ctx = CallContext(request_id=self.request_id, started=self.started)

    def context(self) -> CallContext:
        return self.ctx

    def _settle_counts(self) -> None:
        """Tokens and cost as the call ends. Without a final usage report (a stream cut short or a
        caller gone), the provider's own progress counts, else an estimate: a served call is
        never recorded at zero."""
        if not (self.prompt_tokens or self.completion_tokens):
            self.prompt_tokens = self.ctx.prompt_tokens or (estimate_prompt_tokens(self.request) if self.model else 0)
            self.completion_tokens = max(self.ctx.completion_tokens, self.streamed_pieces)
        if self.model is not None:
            price = (self.ctx.served_by or self.model).config.price
            self.cost_usd = (self.prompt_tokens * price.input + self.completion_tokens * price.output) / 1_000_000


class ChunkSink(Protocol):
    """Where a streamed call's chunks go (the API's SSE writer)."""

    valve: Valve

    def deliver(self, chunk: dict[str, Any]) -> None:
        """Takes one chunk (see providers.streaming.Deliver)."""

    async def start(self) -> None:
        """Called once, after the first chunk arrived (or the stream ended without one), before
        any chunk is delivered."""


class OutputTransform(Protocol):
    """Checks and rewrites an answer between the model (or the cache) and the client. It may raise
    a MeshError: before the first chunk that is a plain error response, after it an error event."""

    async def complete(self, result: dict[str, Any]) -> dict[str, Any]:
        """The whole answer as the client gets it (a new dict: `result` may be cached)."""

    def stream(self, chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
        """The chunks as the client gets them (new dicts: the originals may be cached)."""


class _Chained:
    """Two output transforms: `inner` (closer to the model) first, then `outer`."""

    def __init__(self, inner: OutputTransform, outer: OutputTransform) -> None:
        self.inner, self.outer = inner, outer

    async def complete(self, result: dict[str, Any]) -> dict[str, Any]:
        return await self.outer.complete(await self.inner.complete(result))

    def stream(self, chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
        return self.outer.stream(self.inner.stream(chunks))


def add_output(call: Call, transform: OutputTransform) -> None:
    """Give the answer to `transform` before the transforms already set: steps run in ascending
    order before the model, so a later step's transform sits closer to the model (the guards
    restore redacted values before the knowledge step adds its citations)."""
    call.output = transform if call.output is None else _Chained(transform, call.output)


class Step:
    """A pipeline step. `before` may refuse the call by raising a MeshError; `after` must not raise."""

    name: str = "step"
    order: int = 1000

    async def before(self, call: Call) -> None:
        return None

    async def after(self, call: Call) -> None:
        return None


class Pipeline:
    def __init__(self, models: Mapping[str, Model], steps: list[Step], capture_content: bool = False) -> None:
        self.models = models
        self.capture_content = capture_content
        self.steps = sorted(steps, key=lambda step: step.order)
        # Steps that actually implement a hook, so the hot path skips empty awaits.
        self._before = [s for s in self.steps if type(s).before is not Step.before]
        self._after = [s for s in reversed(self.steps) if type(s).after is not Step.after]

    def _resolve(self, call: Call, kind: type[M]) -> M:
        model = self.models.get(call.model_name)
        if model is None:
            raise ModelNotFound(call.model_name)
        if not isinstance(model, kind):
            wanted = "a chat" if kind is ChatModel else "an embedding"
            route = "/v1/" + call.endpoint.replace(".", "/")
            raise InvalidRequest(
                f"The model `{call.model_name}` is not {wanted} model; it cannot serve {route}.",
                param="model",
                code="model_not_supported",
            )
        return model

    @contextlib.asynccontextmanager
    async def _calling(self, call: Call, kind: type[M]) -> AsyncIterator[M]:
        """Resolve the model and run the steps' `before`; whatever happens inside, run their `after`."""
        error: BaseException | None = None
        try:
            model = self._resolve(call, kind)
            call.model = model
            for step in self._before:
                call.policies.append(step.name)
                await step.before(call)
            yield model
        except BaseException as exc:
            error = exc
            raise
        finally:
            call.finished_at = time.monotonic()
            call._settle_counts()
            if isinstance(error, MeshError):
                call.error, call.status = error, error.status
            elif isinstance(error, asyncio.CancelledError | GeneratorExit):
                call.error = ClientDisconnected()  # the caller went away mid-call
                call.status = call.error.status
            elif error is not None:
                call.status = 500
            for step in self._after:
                await step.after(call)

    async def complete(self, call: Call) -> dict[str, Any]:
        assert isinstance(call.request, ChatCompletionRequest)
        async with self._calling(call, ChatModel) as model:
            if call.replay is None:
                result = await model.complete(call.request, call.context())
                _served(call, model)
            else:
                result = call.replay
            call.first_token_at = time.monotonic()
            if call.keep_answer:
                call.answer = result
            if call.output is not None:
                result = await call.output.complete(result)
            usage = result.get("usage") or {}
            call.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            call.completion_tokens = int(usage.get("completion_tokens") or 0)
            if self.capture_content:
                choices = result.get("choices") or [{}]
                call.response_text = str((choices[0].get("message") or {}).get("content") or "")
            return result

    async def stream(self, call: Call, sink: ChunkSink) -> None:
        """Stream the call's chunks into `sink`; the last one holds usage. The first chunk is
        pulled before `sink.start()`, so that a failure before any output raises from here (a
        plain HTTP error); the rest are relayed, pushed where the provider can. Cancelled (the
        client hung up), the call counts as a hang-up (status 499)."""
        assert isinstance(call.request, ChatCompletionRequest)
        call.stream = True
        async with self._calling(call, ChatModel) as model:
            replay = call.replay
            source = model.stream(call.request, call.context()) if replay is None else _replayed(replay)
            chunks = source
            pieces: list[str] | None = [] if self.capture_content else None
            answer: list[dict[str, Any]] | None = [] if call.keep_answer else None
            kept = answer
            if call.output is not None:
                # The cache keeps what the model said; the client gets what the output guard let through.
                if kept is not None:
                    chunks = _kept(chunks, kept)
                    kept = None
                chunks = call.output.stream(chunks)
            deliver = sink.deliver

            def take(chunk: dict[str, Any]) -> None:
                if kept is not None:
                    kept.append(dict(chunk))  # before the sink's encoder edits it
                if _has_output(chunk):
                    call.streamed_pieces += 1
                    if pieces is not None:
                        pieces.append(str((chunk["choices"][0].get("delta") or {}).get("content") or ""))
                    if call.first_token_at is None:
                        call.first_token_at = time.monotonic()
                usage = chunk.get("usage")
                if usage:
                    call.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                    call.completion_tokens = int(usage.get("completion_tokens") or 0)
                deliver(chunk)

            try:
                first = await anext(chunks, None)
                if replay is None:
                    _served(call, model)
                await sink.start()
                if first is not None:
                    take(first)
                    try:
                        await relay(chunks, take, sink.valve)
                    except (UpstreamError, RetryLater) as exc:
                        # Part of the answer is out: never switched to another model, never passed
                        # off as complete. The client gets an error event; usage records a cut.
                        raise StreamCut(
                            f"The stream of `{call.model_name}` broke after {call.streamed_pieces} chunks: "
                            f"{exc.message}",
                            provider=getattr(exc, "provider", ""),
                        ) from exc
            finally:
                await chunks.aclose()  # type: ignore[attr-defined]
                if chunks is not source:
                    await source.aclose()  # type: ignore[attr-defined]
                if pieces is not None:
                    call.response_text = "".join(pieces)
                if answer is not None:
                    call.answer = answer

    async def embed(self, call: Call, texts: EmbeddingInput) -> Embeddings:
        assert isinstance(call.request, EmbeddingRequest)
        async with self._calling(call, EmbeddingModel) as model:
            if call.embed_inputs is not None:
                texts = call.embed_inputs
            result = await model.embed(texts, call.context(), call.request.dimensions)
            call.first_token_at = time.monotonic()
            _served(call, model)
            call.prompt_tokens = result.prompt_tokens
            return result


def _served(call: Call, model: Model) -> None:
    """Say which deployment answered: a route set it on the context; a flat model is its own."""
    ctx = call.ctx
    if ctx.deployment is None:
        ctx.deployment = model.name
    call.response_headers["x-meshgate-deployment"] = ctx.deployment


async def _kept(chunks: AsyncIterator[dict[str, Any]], kept: list[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    """Pass chunks on, keeping a copy of each (what the cache stores)."""
    async for chunk in chunks:
        kept.append(dict(chunk))
        yield chunk


async def _replayed(chunks: list[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    """A stored stream (a cache hit), pulled like a model's: relay() waits on the valve between chunks."""
    for chunk in chunks:
        yield chunk


def estimate_prompt_tokens(request: ChatCompletionRequest | EmbeddingRequest) -> int:
    """About four characters a token, when no tokenizer spoke: for calls that ended without usage."""
    if isinstance(request, ChatCompletionRequest):
        chars = sum(len(message_text(m.content)) + 16 for m in request.messages)
    else:
        chars = sum(len(i) if isinstance(i, str) else 4 * len(i) for i in request.inputs())
    return max(1, chars // 4)


def _has_output(chunk: dict[str, Any]) -> bool:
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("tool_calls") or delta.get("refusal"):
            return True
    return False
