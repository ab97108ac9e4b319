"""The real local embedding model (all-MiniLM-L6-v2 int8 ONNX) and its micro-batcher."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest

from meshgate.errors import ContextLengthExceeded, UnsupportedParameter
from meshgate.providers.base import CallContext
from meshgate.providers.local.embedding import LocalEmbeddingConfig, LocalEmbeddingModel

CALL = CallContext(request_id="test")


@pytest.fixture(scope="module")
async def model() -> AsyncIterator[LocalEmbeddingModel]:
    embedder = LocalEmbeddingModel(LocalEmbeddingConfig(name="local-embed", provider="local-embedding"))
    await embedder.start()
    yield embedder
    await embedder.close()


async def vec(model: LocalEmbeddingModel, text: str) -> np.ndarray:
    return np.array((await model.embed([text], CALL)).vectors[0])


async def test_shape_and_norm(model: LocalEmbeddingModel) -> None:
    result = await model.embed(["hello world", "another"], CALL)
    assert len(result.vectors) == 2 and all(len(v) == 384 for v in result.vectors)
    for vector in result.vectors:
        assert abs(np.linalg.norm(vector) - 1.0) < 1e-4


async def test_tokens_counted_with_special_tokens(model: LocalEmbeddingModel) -> None:
    assert (await model.embed(["hello world"], CALL)).prompt_tokens == 4  # [CLS] hello world [SEP]
    assert (await model.embed(["hello world", "hi"], CALL)).prompt_tokens == 7


async def test_semantics(model: LocalEmbeddingModel) -> None:
    cat = await vec(model, "A cat sits on the mat")
    kitten = await vec(model, "A kitten is resting on a rug")
    money = await vec(model, "Quarterly revenue grew 5%")
    assert cat @ kitten > cat @ money + 0.2


async def test_batching_and_padding_do_not_change_vectors(model: LocalEmbeddingModel) -> None:
    """A short text padded inside a batch of long ones equals the text alone (mask-aware pooling)."""
    texts = [f"sentence number {i} " + "with extra words " * (i % 7) for i in range(50)]
    alone = [await vec(model, t) for t in texts]
    together = await asyncio.gather(*(model.embed([t], CALL) for t in texts))
    for single, batched in zip(alone, together, strict=True):
        assert np.allclose(single, batched.vectors[0], atol=1e-5)


async def test_large_request_is_split(model: LocalEmbeddingModel) -> None:
    texts = [f"text {i}" for i in range(300)]
    result = await model.embed(texts, CALL)
    assert len(result.vectors) == 300
    assert np.allclose(result.vectors[123], await vec(model, "text 123"), atol=1e-5)


async def test_empty_string(model: LocalEmbeddingModel) -> None:
    assert len((await model.embed([""], CALL)).vectors[0]) == 384


async def test_over_long_input_is_refused(model: LocalEmbeddingModel) -> None:
    with pytest.raises(ContextLengthExceeded) as caught:
        await model.embed(["short", "word " * 400], CALL)
    assert "input[1]" in caught.value.message and caught.value.param == "input"


async def test_other_dimensions_refused(model: LocalEmbeddingModel) -> None:
    with pytest.raises(UnsupportedParameter):
        await model.embed(["x"], CALL, dimensions=128)
