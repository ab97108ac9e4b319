"""The semantic mode: the last user turn, embedded, against the questions stored under the same context.

A semantic hit needs all of:
- the same bucket: the same tenant, model route, system prompt, earlier turns, tools and sampling
  parameters (key.context_digest; only the last user turn may differ);
- compatible guards: the same numbers and negation, and not the same words in another order
  (key.guard_digest);
- a cosine similarity of the two turns' embeddings at or over the model's threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meshgate.cache.backends import Candidates
from meshgate.cache.key import guards_compatible
from meshgate.providers.base import CallContext, EmbeddingModel


async def embed(model: EmbeddingModel, text: str, request_id: str) -> np.ndarray:
    """The unit vector of `text` (the embedding model runs in its own worker, off the event loop)."""
    result = await model.embed([text], CallContext(request_id=request_id))
    vector = np.asarray(result.vectors[0], dtype=np.float32)
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


@dataclass(frozen=True)
class Match:
    entry_id: str
    similarity: float


def best_match(candidates: Candidates, vector: np.ndarray, guard: str, threshold: float) -> Match | None:
    """The most similar candidate with a compatible guard, if its similarity reaches `threshold`.
    At most MAX_CANDIDATES rows of a few hundred floats: microseconds."""
    if candidates.vectors is None or candidates.vectors.shape[1] != vector.shape[0]:
        return None
    similarities = candidates.vectors @ vector
    allowed = np.fromiter(
        (guards_compatible(guard, other) for other in candidates.guards), dtype=bool, count=len(candidates.guards)
    )
    similarities = np.where(allowed, similarities, -1.0)
    best = int(np.argmax(similarities))
    score = float(similarities[best])
    if score < threshold:
        return None
    return Match(candidates.ids[best], score)
