"""Hybrid retrieval: one ranking from a keyword (BM25) list and a vector (cosine) list of the same bank.

Methods (measured on XQuAD-en and Cranfield in bench/retrieval.py, figures in bench/README.md):

- `rrf`, reciprocal rank fusion: score = sum over lists of weight / (rrf_k + rank), rank from 1.
  Only ranks count, so the score has the same scale for every query: with rrf_k=60 and weights 1, a
  chunk first in both lists scores 2/61 = 0.0328, first in one list only 1/61 = 0.0164, and a chunk
  in one list at rank 10 only 1/70 = 0.0143. It measures how much the two retrievers agree on a chunk.
- `minmax`: alpha * (cosine scaled to [0, 1] over the vector list) + (1 - alpha) * (BM25 scaled to
  [0, 1] over the keyword list); a chunk missing from a list gets 0 for it.
- `zscore`: the same with each list standardised (mean 0, deviation 1) instead of scaled.
- `anchored` (the default, see DEFAULT_METHOD): alpha * cosine + (1 - alpha) * BM25 / top BM25 *
  top cosine. The keyword part is scaled to the vector list's top cosine, not to 1, so the fused score
  stays on the cosine's absolute scale: a query whose best chunk is only loosely related (cosine
  0.2) cannot score high because one of its words matched. A chunk the keyword list did not return
  counts 0 for it; one the vector list did not return counts `missing_cosine` times the list's
  lowest cosine (0 by default: 1 would credit it that upper bound of its own cosine; measured
  worse). The fused score is at most the top cosine and comparable across queries like a cosine:
  for all-MiniLM-L6-v2, a top fused score under about 0.35 is weak evidence: the evidence of
  XQuAD (bench/README.md): with the question's article in the bank the top score is >= 0.34 for
  95% of questions (median 0.59); with its article absent, <= 0.40 for 95% (median 0.25).

Chunks are identified by chunk_id: both lists must come from one bank.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from meshgate.knowledge.index.base import ChunkRef, Hit

#: How many hits of each retriever to fetch before fusing (for a final top k of up to ~10).
KEYWORD_CANDIDATES = 50
VECTOR_CANDIDATES = 50
DEFAULT_METHOD = "anchored"
#: Defaults per method (picked on one half of the bench questions, reported on the other half).
DEFAULTS: dict[str, dict[str, float]] = {
    "rrf": {"rrf_k": 60.0, "keyword_weight": 1.0, "vector_weight": 1.0},
    "minmax": {"alpha": 0.5},
    "zscore": {"alpha": 0.5},
    "anchored": {"alpha": 0.5, "missing_cosine": 0.0},
}
METHODS = tuple(DEFAULTS)


def fuse(keyword: list[Hit], vector: list[Hit], k: int, method: str = DEFAULT_METHOD, **params: float) -> list[Hit]:
    """The k best chunks of both lists (each best first), fused by `method`; Hit.score is the fused score."""
    if method not in DEFAULTS:
        raise ValueError(f"unknown fusion method {method!r}; use one of {', '.join(METHODS)}")
    unknown = set(params) - set(DEFAULTS[method])
    if unknown:
        raise ValueError(f"fusion method {method!r} takes no parameter {', '.join(sorted(unknown))}")
    settings = {**DEFAULTS[method], **params}
    chunks: dict[str, ChunkRef] = {}
    for hit in (*vector, *keyword):
        chunks.setdefault(hit.chunk.chunk_id, hit.chunk)
    if method == "rrf":
        scores = _rrf(keyword, vector, settings)
    elif method == "anchored":
        scores = _anchored(keyword, vector, settings["alpha"], settings["missing_cosine"])
    else:
        scale = _minmax if method == "minmax" else _zscore
        scores = _combine(scale(keyword), scale(vector), settings["alpha"])
    # Ties (equal fused scores) keep the vector list's order first, then the keyword list's.
    order = {chunk_id: index for index, chunk_id in enumerate(chunks)}
    best = sorted(scores, key=lambda chunk_id: (-scores[chunk_id], order[chunk_id]))[: max(k, 0)]
    return [Hit(chunks[chunk_id], scores[chunk_id]) for chunk_id in best]


def _rrf(keyword: list[Hit], vector: list[Hit], settings: dict[str, float]) -> dict[str, float]:
    scores: dict[str, float] = {}
    for hits, weight in ((keyword, settings["keyword_weight"]), (vector, settings["vector_weight"])):
        for rank, hit in enumerate(_distinct(hits), start=1):
            scores[hit.chunk.chunk_id] = scores.get(hit.chunk.chunk_id, 0.0) + weight / (settings["rrf_k"] + rank)
    return scores


def _anchored(keyword: list[Hit], vector: list[Hit], alpha: float, missing_cosine: float) -> dict[str, float]:
    cosines = {hit.chunk.chunk_id: hit.score for hit in _distinct(vector)}
    top_cosine = max(cosines.values(), default=0.0)
    floor_cosine = missing_cosine * min(cosines.values(), default=0.0)
    top_bm25 = max((hit.score for hit in keyword), default=0.0)
    keyword_part = {
        hit.chunk.chunk_id: (hit.score / top_bm25 * max(top_cosine, 0.0) if top_bm25 > 0 else 0.0)
        for hit in _distinct(keyword)
    }
    return {
        chunk_id: alpha * cosines.get(chunk_id, floor_cosine) + (1 - alpha) * keyword_part.get(chunk_id, 0.0)
        for chunk_id in {**cosines, **keyword_part}
    }


def _combine(keyword: dict[str, float], vector: dict[str, float], alpha: float) -> dict[str, float]:
    return {
        chunk_id: alpha * vector.get(chunk_id, 0.0) + (1 - alpha) * keyword.get(chunk_id, 0.0)
        for chunk_id in {**vector, **keyword}
    }


def _minmax(hits: list[Hit]) -> dict[str, float]:
    return _scaled(hits, lambda values: (min(values), (max(values) - min(values)) or 1.0))


def _zscore(hits: list[Hit]) -> dict[str, float]:
    def centre(values: list[float]) -> tuple[float, float]:
        mean = sum(values) / len(values)
        return mean, math.sqrt(sum((value - mean) ** 2 for value in values) / len(values)) or 1.0

    return _scaled(hits, centre)


def _scaled(hits: list[Hit], shift_scale: Callable[[list[float]], tuple[float, float]]) -> dict[str, float]:
    distinct = _distinct(hits)
    if not distinct:
        return {}
    shift, scale = shift_scale([hit.score for hit in distinct])
    return {hit.chunk.chunk_id: (hit.score - shift) / scale for hit in distinct}


def _distinct(hits: list[Hit]) -> list[Hit]:
    """The hits with each chunk once (its first, best, occurrence)."""
    seen: set[str] = set()
    out = []
    for hit in hits:
        if hit.chunk.chunk_id not in seen:
            seen.add(hit.chunk.chunk_id)
            out.append(hit)
    return out
