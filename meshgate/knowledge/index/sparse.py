"""Client-side BM25 as sparse vectors, for a store without full-text search (Pinecone).

BM25 scores a document d for a query q as the sum over the query's terms t of
IDF(t) * tf(t, d) * (k1 + 1) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl)). It splits into a dot
product of two sparse vectors, so a dot-product vector store computes it:

- the **document side** holds, per term, the saturated term frequency (the fraction above). It is
  computed once, at upsert, with a fixed `avgdl` (AVGDL tokens, about a chunk): a bank's true
  average drifts as documents come and go, and rewriting every vector when it does is not worth the
  small change in length normalisation. This is the approximation of the document side;
- the **query side** holds, per query term, IDF = ln(1 + (N - df + 0.5) / (df + 0.5)), from the
  bank's document frequencies (`DocumentFrequencies`), which the backend keeps (it rebuilds them by
  reading the bank and then updates them on its own writes; see pinecone.py for how fresh they are).

Terms are the lower-cased word tokens of knowledge/text.py without its English stop words (no
stemming: "runs" does not match "run"), hashed to uint32 indices with BLAKE2b (collisions among the
few thousand terms of a bank are negligible in 2^32). A document keeps at most MAX_TERMS terms (its
highest-weighted ones), under Pinecone's limit on the non-zero values of a sparse vector.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from meshgate.knowledge import text as textnorm

K1 = 1.2
B = 0.75
#: The document length (tokens) BM25's length normalisation compares against.
AVGDL = 200.0
#: Most terms one document's sparse vector keeps.
MAX_TERMS = 1000


@dataclass(frozen=True)
class SparseVector:
    indices: tuple[int, ...]
    values: tuple[float, ...]

    def as_json(self) -> dict[str, list[int] | list[float]]:
        return {"indices": list(self.indices), "values": list(self.values)}


def term_index(term: str) -> int:
    """A term's uint32 index, the same in every process and release."""
    return int.from_bytes(hashlib.blake2b(term.encode(), digest_size=4).digest(), "big")


def document_vector(text: str, avgdl: float = AVGDL) -> SparseVector:
    """The document side: BM25's saturated term frequency of each content term of `text`."""
    tokens = textnorm.tokenize(text)
    length = len(tokens)  # stop words count in the length, as they do in the text
    counts = Counter(token for token in tokens if token not in textnorm.STOP_WORDS)
    norm = K1 * (1 - B + B * length / avgdl)
    weights: dict[int, float] = {}
    for term, tf in counts.items():
        index = term_index(term)
        weights[index] = weights.get(index, 0.0) + tf * (K1 + 1) / (tf + norm)
    top = sorted(weights.items(), key=lambda item: (-item[1], item[0]))[:MAX_TERMS]
    top.sort()
    return SparseVector(tuple(index for index, _ in top), tuple(weight for _, weight in top))


@dataclass
class DocumentFrequencies:
    """How many documents (chunks) of a bank hold each term index."""

    documents: int = 0
    counts: Counter[int] = field(default_factory=Counter)

    def add(self, indices: Iterable[int]) -> None:
        self.documents += 1
        self.counts.update(set(indices))

    def remove(self, indices: Iterable[int]) -> None:
        self.documents = max(0, self.documents - 1)
        for index in set(indices):
            left = self.counts[index] - 1
            if left > 0:
                self.counts[index] = left
            else:
                del self.counts[index]

    def idf(self, index: int) -> float:
        df = self.counts.get(index, 0)
        return math.log(1 + (self.documents - df + 0.5) / (df + 0.5))


def query_vector(text: str, frequencies: DocumentFrequencies) -> SparseVector:
    """The query side: the IDF of each distinct query term that some document holds (a term no
    document holds cannot score, and Pinecone wants no zero-only vectors)."""
    weights: dict[int, float] = {}
    for term in textnorm.query_terms(text):
        index = term_index(term)
        if frequencies.counts.get(index, 0) > 0:
            weights[index] = frequencies.idf(index)
    ordered = sorted(weights.items())
    return SparseVector(tuple(index for index, _ in ordered), tuple(weight for _, weight in ordered))
