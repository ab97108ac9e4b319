"""Local chat models run in-process by llama.cpp (`llama-cpp-python`).

Generation runs in worker threads, never on the event loop. A pool of `concurrency` model contexts
serves requests in arrival order (asyncio.Queue getters are FIFO); more than `max_queue` waiting
requests get a 503. Each generated token passes a cancellation check, so a client that hangs up
frees its context at the next token.

The loop over `Llama.generate()` is our own rather than `create_completion()`: it gives the exact
number of generated tokens (usage with the model's own tokenizer), per-token cancellation, and stop
sequences that never leak a partial match into the stream.

Nothing that grows with a request's size runs on the event loop (docs/architecture.md, "The event
loop never waits on a request's size"): a prompt that cannot fit the context window whatever its
tokens is refused from its length alone, and rendering and tokenizing run in a small pool of their
own threads. Message text is always tokenized as plain text: only the chat template's own text may
produce control tokens, so `<|im_end|>` typed in a message cannot close a turn.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import random
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field

from meshgate.errors import ContextLengthExceeded, InvalidRequest, Overloaded, ServiceUnavailable
from meshgate.protocol import (
    AssistantMessage,
    ChatCompletionRequest,
    DeveloperMessage,
    SystemMessage,
    UserMessage,
    message_text,
)
from meshgate.providers.base import (
    CallContext,
    CapabilityProfile,
    ChatModel,
    ModelConfig,
    ProviderContext,
    ProviderType,
    chunk_dict,
    completion_dict,
    new_completion_id,
    usage_dict,
)
from meshgate.providers.local.chat_template import ChatTemplate, TemplateRefusal
from meshgate.providers.local.gguf import GGUFError, GGUFInfo, read_gguf
from meshgate.providers.local.llama_loader import ExtraBuffers, default_threads, open_llama
from meshgate.providers.local.packaged import DEFAULT_CHAT_MODEL, ModelFileError, assemble, verify_file

log = logging.getLogger("meshgate.llama")
_native_log_callback: Any = None


def _route_native_logs() -> None:
    """Send llama.cpp's own log lines to Python logging (debug) instead of the terminal."""
    global _native_log_callback
    if _native_log_callback is not None:
        return
    import ctypes

    import llama_cpp

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
    def forward(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        log.debug("%s", text.decode("utf-8", "replace").rstrip())

    _native_log_callback = forward  # keep a reference: the C library holds only a pointer
    llama_cpp.llama_log_set(forward, ctypes.c_void_p(0))


class LocalLlamaConfig(ModelConfig):
    provider: Literal["local-llama"]
    path: str | None = Field(
        None,
        validation_alias=AliasChoices("path", "model_path"),
        description="A GGUF file (`model_path` is accepted too). Default: Qwen2.5-Coder-0.5B-Instruct Q4_K_M, "
        "assembled from its pinned packages and checked against its sha256.",
    )
    sha256: str | None = Field(
        None,
        pattern="^[0-9a-fA-F]{64}$",
        description="The file's expected sha256, checked before every load (a mismatch stops startup).",
    )
    chat_template: str | None = Field(
        None,
        description="A Jinja chat template, or the path of a file holding one; default: the GGUF's own "
        "(`tokenizer.chat_template`). Needed only for a GGUF that has none.",
    )
    context_window: int = Field(4096, ge=128, description="Tokens of context (n_ctx) per model context.")
    concurrency: int = Field(1, ge=1, le=64, description="Model contexts generating at once.")
    max_queue: int = Field(64, ge=0, description="Requests that may wait for a context before 503.")
    threads: int = Field(0, ge=0, description="CPU threads per context; 0 = all cores shared by the contexts.")
    extra_buffers: ExtraBuffers = Field(
        "auto",
        description="llama.cpp's repacked weight layouts (AMX, AVX interleaving); `auto` = off on CPUs with "
        "AMX, where llama-cpp-python 0.3.36 crashes on multi-token prompts, on elsewhere.",
    )
    default_max_tokens: int = Field(256, ge=1, description="Output cap when the request gives none.")
    temperature: float = Field(0.7, ge=0, le=2, description="Sampling default when the request gives none.")
    top_p: float = Field(0.8, ge=0, le=1, description="Nucleus sampling default when the request gives none.")
    top_k: int = Field(20, ge=0)
    repeat_penalty: float = Field(1.05, ge=0, description="llama.cpp's penalty on the last 64 tokens; 1 = off.")


#: Threads that render and tokenize prompts, per model: tokenizing reads only the vocabulary, so
#: this never waits for a generating context. One thread, so that prompts finish tokenizing in the
#: order they arrived and requests then queue for a context in arrival order (the size check bounds
#: how long one prompt can hold up the next).
TOKENIZER_THREADS = 1

#: Stands for message i's text when the chat template is rendered: private-use characters that no
#: template escapes or trims. The template's own text around them is all it writes.
_SLOT = "\ue000meshgate-content-{}\ue001"
_SLOTS = re.compile("\ue000meshgate-content-(\\d+)\ue001")


def _longest_token_bytes(llm: Any) -> int | None:
    """The most bytes one token of the vocabulary stands for, control tokens included; None for a
    vocabulary that may drop input text (WordPiece strips whitespace), so that no byte count bounds
    its tokens."""
    import ctypes

    import llama_cpp

    vocab = llm._model.vocab
    if llama_cpp.llama_vocab_type(vocab) not in (llama_cpp.LLAMA_VOCAB_TYPE_BPE, llama_cpp.LLAMA_VOCAB_TYPE_SPM):
        return None
    buffer = ctypes.create_string_buffer(1024)
    longest = 1
    for token in range(llama_cpp.llama_vocab_n_tokens(vocab)):
        size = llama_cpp.llama_token_to_piece(vocab, token, buffer, len(buffer), 0, True)
        longest = max(longest, abs(size))
    return longest


@dataclass
class _Prepared:
    prompt_tokens: list[int]
    limit: int
    stops: list[str]


@dataclass
class _Event:
    """What a generation thread hands to the event loop."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: BaseException | None = None


def _stop_holdback(text: str, stops: list[str]) -> int:
    """How many trailing characters could be the start of a stop sequence (so not yet safe to emit)."""
    hold = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), hold, -1):
            if text.endswith(stop[:size]):
                hold = size
                break
    return hold


class LocalLlamaModel(ChatModel):
    provider = "local-llama"
    hosting = "local"
    config: LocalLlamaConfig

    def __init__(self, config: LocalLlamaConfig, context: ProviderContext) -> None:
        profile = CapabilityProfile(
            chat=True,
            streaming=True,
            logit_bias=True,
            penalties=True,
            seed=True,
            max_stop_sequences=16,
            context_window=config.context_window,
        )
        super().__init__(config, profile)
        self._model_cache = context.model_cache
        self._contexts: asyncio.Queue[Any] = asyncio.Queue()
        self._executor: ThreadPoolExecutor | None = None
        self._tokenizing: ThreadPoolExecutor | None = None
        self._max_token_bytes: int | None = None
        self._waiting = 0
        self._loaded = False
        self._tokenizer: Any = None
        self._template: ChatTemplate | None = None
        self._path: Path | None = None
        self._card: dict[str, Any] = {}

    # -- lifecycle -----------------------------------------------------------------------------

    def _resolve_model_file(self) -> Path:
        """The GGUF to load: the user's (checked against `sha256` when given) or the packaged default."""
        if self.config.path is None:
            return assemble(DEFAULT_CHAT_MODEL, self._model_cache)
        path = Path(self.config.path).expanduser().resolve()
        if not path.is_file():
            raise ModelFileError(f"{path}: no such file")
        if self.config.sha256:
            verify_file(path, self.config.sha256)
        return path

    def _inspect(self, path: Path) -> GGUFInfo:
        try:
            return read_gguf(path)
        except GGUFError as exc:
            raise ModelFileError(f"{path}: {exc}") from None
        except OSError as exc:
            raise ModelFileError(f"{path}: cannot read: {exc.strerror or exc}") from None

    def _template_source(self, info: GGUFInfo, path: Path) -> str:
        configured = self.config.chat_template
        if configured is not None:
            candidate = Path(configured).expanduser()
            if "{" not in configured and candidate.is_file():
                return candidate.read_text(encoding="utf-8")
            return configured
        if info.chat_template is None:
            raise ModelFileError(
                f"{path}: the GGUF has no chat template (tokenizer.chat_template); give one with "
                "`chat_template:` in mesh.yaml"
            )
        return info.chat_template

    def _load_context(self, path: Path) -> Any:
        _route_native_logs()
        threads = self.config.threads or default_threads(self.config.concurrency)
        try:
            return open_llama(path, self.config.context_window, threads, self.config.extra_buffers)
        except (ValueError, RuntimeError) as exc:
            raise ModelFileError(f"{path}: llama.cpp cannot load it ({exc})") from None

    def _card_for(self, path: Path, info: GGUFInfo) -> dict[str, Any]:
        card: dict[str, Any] = {
            "file": str(path),
            "file_bytes": info.file_size,
            "format": f"GGUF v{info.version}",
            "architecture": info.architecture,
            "chat_template": "from mesh.yaml" if self.config.chat_template is not None else "from the GGUF",
        }
        if self.config.path is None:
            card.update(DEFAULT_CHAT_MODEL.card)
            card["sha256"] = DEFAULT_CHAT_MODEL.sha256
        else:
            for field, key in (("name", "general.name"), ("license", "general.license"), ("source", "general.url")):
                if (value := info.get_str(key)) is not None:
                    card[field] = value
            if info.trained_context is not None:
                card["trained_context"] = info.trained_context
            if self.config.sha256:
                card["sha256"] = self.config.sha256.lower()
        return {key: value for key, value in card.items() if value is not None}

    def _end_of_turn(self, llm: Any) -> list[str]:
        """The texts of the tokens that end a turn (generation stops on them, and on control tokens)."""
        import llama_cpp

        vocab = llm._model.vocab
        ids = {llama_cpp.llama_vocab_eos(vocab), llama_cpp.llama_vocab_eot(vocab)} - {-1}
        return sorted(llm._model.token_get_text(i) for i in ids)

    async def start(self) -> None:
        path = await asyncio.to_thread(self._resolve_model_file)
        info = await asyncio.to_thread(self._inspect, path)
        source = self._template_source(info, path)
        self._executor = ThreadPoolExecutor(self.config.concurrency, thread_name_prefix=f"llama-{self.name}")
        for _ in range(self.config.concurrency):
            llm = await asyncio.to_thread(self._load_context, path)
            self._tokenizer = self._tokenizer or llm
            self._contexts.put_nowait(llm)
        self._max_token_bytes = await asyncio.to_thread(_longest_token_bytes, self._tokenizer)
        self._tokenizing = ThreadPoolExecutor(TOKENIZER_THREADS, thread_name_prefix=f"llama-tokenize-{self.name}")
        tokens = self._tokenizer._model
        bos = tokens.token_get_text(tokens.token_bos()) if tokens.token_bos() >= 0 else ""
        eos = tokens.token_get_text(tokens.token_eos()) if tokens.token_eos() >= 0 else ""
        try:
            self._template = ChatTemplate(source, bos_token=bos, eos_token=eos)
            # A template that cannot render a plain exchange would fail every call: fail startup instead.
            self._template.render([{"role": "user", "content": "Hello"}])
        except (ValueError, TemplateRefusal) as exc:
            raise ModelFileError(f"{path}: {exc}") from None
        self._path = path
        self._card = {**self._card_for(path, info), "end_of_turn": self._end_of_turn(self._tokenizer)}
        self._loaded = True

    async def close(self) -> None:
        self._loaded = False
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
        if self._tokenizing is not None:
            self._tokenizing.shutdown(wait=True, cancel_futures=True)
        while not self._contexts.empty():
            llm = self._contexts.get_nowait()
            llm.close()

    def ready(self) -> bool:
        return self._loaded

    def card(self) -> dict[str, Any]:
        return self._card

    def describe(self) -> dict[str, Any]:
        return {
            "model_file": self._path.name if self._path else "",
            "context_window": self.config.context_window,
            "concurrency": self.config.concurrency,
            "queued": self._waiting,
        }

    # -- prompt --------------------------------------------------------------------------------

    def _messages(self, request: ChatCompletionRequest) -> list[dict[str, Any]]:
        """The conversation as the chat template expects it: roles and plain text."""
        messages: list[dict[str, Any]] = []
        for message in request.messages:
            if isinstance(message, SystemMessage | DeveloperMessage):
                messages.append({"role": "system", "content": message_text(message.content)})
            elif isinstance(message, UserMessage):
                messages.append({"role": "user", "content": message_text(message.content)})
            elif isinstance(message, AssistantMessage):
                messages.append({"role": "assistant", "content": message_text(message.content)})
        return messages

    def render(self, request: ChatCompletionRequest) -> str:
        """The prompt text of a request, by the model's own chat template."""
        if self._template is None:
            raise ServiceUnavailable(f"model `{self.name}` is not loaded")
        try:
            return self._template.render(self._messages(request))
        except TemplateRefusal as exc:
            raise InvalidRequest(
                f"The model `{self.name}` cannot take these messages: {exc}", param="messages"
            ) from None

    # -- generation ----------------------------------------------------------------------------

    def _refuse_oversized(self, messages: list[dict[str, Any]], utf8: bool = False) -> None:
        """Refuse, from its length alone, a prompt that cannot fit whatever its tokens: no token
        stands for more than `_max_token_bytes` bytes. On the event loop it counts characters (at
        most the bytes, and free); in a tokenizer thread (`utf8`) the UTF-8 bytes."""
        if self._max_token_bytes is None:
            return
        window = self.config.context_window
        size = sum(len(m["content"].encode("utf-8")) if utf8 else len(m["content"]) for m in messages)
        at_least = -(-size // self._max_token_bytes)
        if at_least > window:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {window} tokens. "
                f"However, your messages resulted in at least {at_least} tokens.",
                param="messages",
            )

    def _tokenize(self, text: str, *, special: bool, add_bos: bool, room: int) -> tuple[int, list[int]]:
        """Tokens of `text` and their count; only the count when there are more than `room`.
        `special`: whether control-token strings in the text become control tokens."""
        import llama_cpp

        data = text.encode("utf-8")
        size = max(room, 1)
        buffer = (llama_cpp.llama_token * size)()
        count = llama_cpp.llama_tokenize(self._tokenizer._model.vocab, data, len(data), buffer, size, add_bos, special)
        if count < 0:
            return -count, []
        return count, list(buffer[:count])

    def _prepare(self, request: ChatCompletionRequest) -> _Prepared:
        """Render and tokenize the prompt and check it fits, before anything is queued or streamed.
        Runs in a tokenizer thread (see `_prepare_off_loop`).

        Tokenizing reads only the model's vocabulary, which llama.cpp shares read-only between
        contexts, so it is safe here while other contexts generate.

        The template is rendered with a placeholder for each message's text: what it writes
        around them is tokenized with control tokens, the messages' texts as plain text.
        """
        if self._template is None:
            raise ServiceUnavailable(f"model `{self.name}` is not loaded")
        messages = self._messages(request)
        self._refuse_oversized(messages, utf8=True)
        texts = [message["content"] for message in messages]
        slotted = [{**message, "content": _SLOT.format(i)} for i, message in enumerate(messages)]
        try:
            prompt = self._template.render(slotted)
        except TemplateRefusal as exc:
            raise InvalidRequest(
                f"The model `{self.name}` cannot take these messages: {exc}", param="messages"
            ) from None
        # The template writes the BOS token itself where the model wants one; otherwise llama.cpp
        # adds it if the GGUF asks for it (`tokenizer.ggml.add_bos_token`).
        bos = self._template.bos_token
        add_bos = not (bos and prompt.startswith(bos))
        window = self.config.context_window
        pieces = _SLOTS.split(prompt)  # template text, message index, template text, ...
        prompt_tokens: list[int] = []
        total = 0
        for index, piece in enumerate(pieces):
            is_message = index % 2 == 1
            text = texts[int(piece)] if is_message else piece
            if not text and not (index == 0 and add_bos):
                continue
            count, tokens = self._tokenize(
                text, special=not is_message, add_bos=index == 0 and add_bos, room=window - total
            )
            total += count
            prompt_tokens += tokens
        room = window - total
        if room < 1:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {window} tokens. "
                f"However, your messages resulted in {total} tokens.",
                param="messages",
            )
        requested = request.output_limit
        if requested is not None and requested > room:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {window} tokens. However, you requested "
                f"{total + requested} tokens ({total} in the messages, "
                f"{requested} in the completion).",
                param="max_tokens" if request.max_completion_tokens is None else "max_completion_tokens",
            )
        limit = min(requested or self.config.default_max_tokens, room)
        return _Prepared(prompt_tokens=prompt_tokens, limit=limit, stops=[s for s in request.stop_list if s])

    async def _prepare_off_loop(self, request: ChatCompletionRequest) -> _Prepared:
        """`_prepare` in a tokenizer thread, after the size check on the loop (which costs nothing)."""
        if self._tokenizing is None:
            raise ServiceUnavailable(f"model `{self.name}` is not loaded")
        self._refuse_oversized(self._messages(request))
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._tokenizing, self._prepare, request)

    def _generate(
        self,
        llm: Any,
        request: ChatCompletionRequest,
        prepared: _Prepared,
        emit: Callable[[_Event], None],
        cancelled: threading.Event,
    ) -> None:
        """Runs in a worker thread. Emits text events, then one final event with finish and counts."""
        import llama_cpp

        prompt_tokens, limit, stops = prepared.prompt_tokens, prepared.limit, prepared.stops
        if request.seed is not None:
            # Reusing a cached prompt prefix changes the logits in the last bits, enough to change
            # a sample; a seeded request evaluates its prompt from scratch to be reproducible.
            llm.reset()
            llm.set_seed(request.seed)
        else:
            llm.set_seed(random.randrange(2**31))

        logits_processor = None
        if request.logit_bias:
            bias = {int(token): value for token, value in request.logit_bias.items()}

            def apply_bias(_ids: Any, scores: Any) -> Any:
                for token, value in bias.items():
                    if 0 <= token < scores.shape[0]:
                        scores[token] += value
                return scores

            logits_processor = llama_cpp.LogitsProcessorList([apply_bias])

        vocab = llm._model.vocab
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        generated: list[int] = []
        text = ""
        emitted = 0
        finish = "length"
        tokens: Generator[int, Any, None] = llm.generate(
            prompt_tokens,
            temp=request.temperature if request.temperature is not None else self.config.temperature,
            top_p=request.top_p if request.top_p is not None else self.config.top_p,
            top_k=self.config.top_k,
            repeat_penalty=self.config.repeat_penalty,
            frequency_penalty=request.frequency_penalty or 0.0,
            presence_penalty=request.presence_penalty or 0.0,
            logits_processor=logits_processor,
            reset=True,
        )
        try:
            for token in tokens:
                if cancelled.is_set():
                    finish = "cancelled"
                    break
                if llama_cpp.llama_vocab_is_eog(vocab, token) or llama_cpp.llama_vocab_is_control(vocab, token):
                    finish = "stop"
                    break
                generated.append(token)
                text += decoder.decode(llm.detokenize([token], prev_tokens=prompt_tokens + generated[:-1]))
                cut = min((i for i in (text.find(s, max(emitted - len(s), 0)) for s in stops) if i >= 0), default=-1)
                if cut >= 0:
                    text = text[:cut]
                    finish = "stop"
                    break
                safe = len(text) - _stop_holdback(text, stops)
                if safe > emitted:
                    emit(_Event(text=text[emitted:safe], completion_tokens=len(generated)))
                    emitted = safe
                if len(generated) >= limit:
                    break
        finally:
            tokens.close()
        if finish != "stop":
            text += decoder.decode(b"", final=True)
        if len(text) > emitted:
            emit(_Event(text=text[emitted:]))
        emit(_Event(finish_reason=finish, prompt_tokens=len(prompt_tokens), completion_tokens=len(generated)))

    async def _events(self, request: ChatCompletionRequest, prepared: _Prepared) -> AsyncIterator[_Event]:
        """Queue for a context, generate in a thread, and relay its events; stops it when closed."""
        if self._executor is None:
            raise ServiceUnavailable(f"model `{self.name}` is not loaded")
        if self._contexts.empty() and self._waiting >= self.config.max_queue:
            raise Overloaded(f"model `{self.name}` has {self._waiting} requests waiting; retry shortly")
        self._waiting += 1
        try:
            llm = await self._contexts.get()
        finally:
            self._waiting -= 1
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[_Event] = asyncio.Queue()
        cancelled = threading.Event()

        def emit(event: _Event) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        def run() -> None:
            try:
                self._generate(llm, request, prepared, emit, cancelled)
            except BaseException as exc:  # handed to the event loop, re-raised there
                emit(_Event(error=exc))

        future = loop.run_in_executor(self._executor, run)
        try:
            while True:
                event = await events.get()
                if event.error is not None:
                    raise event.error
                yield event
                if event.finish_reason is not None:
                    return
        finally:
            cancelled.set()
            # The context goes back only after its thread let go of it; waiting here is short,
            # since the thread checks `cancelled` before each token.
            future.add_done_callback(lambda _f: self._contexts.put_nowait(llm))

    async def complete(self, request: ChatCompletionRequest, call: CallContext) -> dict[str, Any]:
        prepared = await self._prepare_off_loop(request)
        call.prompt_tokens = len(prepared.prompt_tokens)
        created = int(time.time())
        parts: list[str] = []
        async for event in self._events(request, prepared):
            parts.append(event.text)
            call.completion_tokens = event.completion_tokens
            if event.finish_reason is not None:
                return completion_dict(
                    new_completion_id(),
                    self.name,
                    created,
                    "".join(parts),
                    event.finish_reason,
                    usage_dict(event.prompt_tokens, event.completion_tokens),
                )
        raise ServiceUnavailable(f"model `{self.name}` stopped without an answer")  # pragma: no cover

    async def stream(self, request: ChatCompletionRequest, call: CallContext) -> AsyncIterator[dict[str, Any]]:
        prepared = await self._prepare_off_loop(request)
        call.prompt_tokens = len(prepared.prompt_tokens)
        completion_id = new_completion_id()
        created = int(time.time())
        yield chunk_dict(completion_id, self.name, created, {"role": "assistant", "content": ""})
        async for event in self._events(request, prepared):
            call.completion_tokens = event.completion_tokens
            if event.text:
                yield chunk_dict(completion_id, self.name, created, {"content": event.text})
            if event.finish_reason is not None:
                yield chunk_dict(completion_id, self.name, created, {}, event.finish_reason)
                yield chunk_dict(
                    completion_id,
                    self.name,
                    created,
                    None,
                    usage=usage_dict(event.prompt_tokens, event.completion_tokens),
                )


PROVIDER = ProviderType(
    name="local-llama",
    config_model=LocalLlamaConfig,
    factory=LocalLlamaModel,
    description="A GGUF chat model run in-process by llama.cpp, prompted by its own chat template "
    "(default: Qwen2.5-Coder-0.5B-Instruct).",
)
