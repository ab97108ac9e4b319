"""Optional reranking: re-scores the top N fused candidates of a query with a small learned model.

Opt-in per request (`"rerank": true` or `{"top_n": 20}` on a bank search or a chat's `knowledge`
options) or by default in mesh.yaml (`knowledge.rerank`). Retrieval fuses BM25 and vectors as usual
(index/fusion.py); the top N fused chunks (N = `top_n`, at least the request's `top_k`) are then
ordered by the reranker and the first `top_k` returned. The ACL was applied inside the index
queries that produced the candidates, so reranking only reorders chunks the caller may read.

The model scores each (query, chunk) pair from cheap features of the pair and of the candidate list
(FEATURES below): the fused score and its parts (cosine, BM25 scaled to the list's best), the fused
rank, how much of the query's content words the chunk, its best sentence and its title hold (words
cut to 6 letters, a cheap stem), the same weighted by how rare each word is among the candidates,
and how many of the query's word pairs the chunk holds in order. No embedding or model inference
runs here: features are plain text counting, a few milliseconds for 20 chunks (bench/README.md),
done in a worker thread by the caller since the work grows with the chunks' length.

The weights are plain JSON arrays (data/reranker.json, sha256 checked against data/MANIFEST.json
before use; no pickles), trained by scripts/train_reranker.py on the tuning half of
bench/retrieval.py's questions only. The reranker's score orders chunks within one query; it is not
comparable across queries, so search results keep the fused score in `score` (what abstention and
`min_evidence` read) and carry the reranker's in `rerank_score`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from meshgate.errors import MeshError
from meshgate.knowledge import text as textnorm
from meshgate.knowledge.index.base import Hit

MODEL_FILE = "reranker.json"
MODEL_FORMAT = "meshgate-reranker/1"
#: Candidates re-scored when a request says `"rerank": true` (measured in bench/retrieval.py).
DEFAULT_TOP_N = 20
#: The most candidates a request may ask to re-score (each retriever fetches 50).
MAX_TOP_N = 50
#: Letters a word is cut to before comparing (grounding.py's cheap stem: "booking" ~ "booked").
STEM_LETTERS = 6

#: The features, in the order of the model's weights (scripts/train_reranker.py writes them too).
FEATURES = (
    "fused",  # the anchored fused score (reads like a cosine)
    "fused_gap",  # fused minus the list's best fused score (<= 0)
    "cosine",  # cosine similarity to the query (0 when the vector list did not return the chunk)
    "cosine_gap",  # cosine minus the list's best cosine
    "bm25",  # BM25 / the keyword list's best BM25 (0 when the keyword list did not return it)
    "in_keyword",  # 1 when the keyword list returned the chunk
    "in_vector",  # 1 when the vector list returned the chunk
    "inverse_rank",  # 1 / fused rank
    "coverage",  # share of the query's content words the chunk holds
    "rare_coverage",  # the same, each word weighted by its rarity among the candidates
    "pairs",  # share of the query's adjacent content-word pairs found adjacent in the chunk
    "sentence",  # the best single sentence's coverage (the words asked for, close together)
    "title",  # share of the query's content words in the chunk's title
    "length",  # log(1 + words of the chunk)
)

_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


class RerankerFileError(MeshError):
    """The shipped reranker file is missing, changed or not a reranker: refusing to use it (500)."""

    default_code = "reranker_file_invalid"


@dataclass(frozen=True)
class Candidate:
    """One fused chunk to re-score, with the parts of its fused score."""

    hit: Hit
    #: Cosine similarity to the query, or None when the vector search did not return the chunk.
    cosine: float | None
    #: Raw BM25, or None when the keyword search did not return the chunk.
    bm25: float | None


@dataclass(frozen=True)
class Reranked:
    hit: Hit
    #: The reranker's score: orders chunks within one query only.
    score: float


def stems(text: str) -> list[str]:
    """The text's content words in order, lower-cased and cut to STEM_LETTERS letters."""
    return [token[:STEM_LETTERS] for token in textnorm.tokenize(text) if token not in textnorm.STOP_WORDS]


def _share(asked: set[Any], present: set[Any]) -> float:
    return len(asked & present) / len(asked) if asked else 0.0


def features(query: str, candidates: Sequence[Candidate]) -> npt.NDArray[np.float64]:
    """One row of FEATURES per candidate (candidates in fused order, best first)."""
    out = np.zeros((len(candidates), len(FEATURES)), dtype=np.float64)
    if not candidates:
        return out
    query_stems = stems(query) or [t[:STEM_LETTERS] for t in textnorm.tokenize(query)]
    asked = set(query_stems)
    asked_pairs = set(itertools.pairwise(query_stems))
    chunk_stems = [stems(c.hit.chunk.text) for c in candidates]
    chunk_sets = [set(s) for s in chunk_stems]
    # Rarity among the candidates: a word every candidate holds tells them apart least (BM25's IDF form).
    n = len(candidates)
    rarity = {w: math.log(1 + (n - df + 0.5) / (df + 0.5)) for w in asked for df in [sum(w in s for s in chunk_sets)]}
    total_rarity = sum(rarity.values())
    top_fused = max(c.hit.score for c in candidates)
    cosines = [c.cosine for c in candidates if c.cosine is not None]
    top_cosine = max(cosines, default=0.0)
    top_bm25 = max((c.bm25 for c in candidates if c.bm25 is not None), default=0.0)
    for row, (candidate, words, present) in enumerate(zip(candidates, chunk_stems, chunk_sets, strict=True)):
        chunk = candidate.hit.chunk
        cosine = candidate.cosine if candidate.cosine is not None else 0.0
        bm25 = candidate.bm25 / top_bm25 if candidate.bm25 is not None and top_bm25 > 0 else 0.0
        pairs = set(itertools.pairwise(words))
        sentences = [set(stems(s)) for s in _SENTENCE.split(chunk.text) if s.strip()]
        out[row] = (
            candidate.hit.score,
            candidate.hit.score - top_fused,
            cosine,
            cosine - top_cosine if candidate.cosine is not None else 0.0,
            bm25,
            float(candidate.bm25 is not None),
            float(candidate.cosine is not None),
            1.0 / (row + 1),
            _share(asked, present),
            sum(rarity[w] for w in asked & present) / total_rarity if total_rarity > 0 else 0.0,
            _share(asked_pairs, pairs),
            max((_share(asked, s) for s in sentences), default=0.0),
            _share(asked, set(stems(chunk.title))),
            math.log1p(len(words)),
        )
    return out


class Reranker:
    """A standardise-then-MLP (or linear, with no hidden layer) scorer over FEATURES."""

    def __init__(self, model: dict[str, Any]) -> None:
        if model.get("format") != MODEL_FORMAT:
            raise RerankerFileError(f"reranker model format {model.get('format')!r} is not {MODEL_FORMAT!r}")
        if tuple(model.get("features", ())) != FEATURES:
            raise RerankerFileError("reranker model features do not match this code's FEATURES")
        self.info = {k: v for k, v in model.items() if k not in ("mean", "scale", "layers")}
        self.mean = np.asarray(model["mean"], dtype=np.float64)
        self.scale = np.asarray(model["scale"], dtype=np.float64)
        self.layers = [
            (np.asarray(layer["weights"], dtype=np.float64), np.asarray(layer["bias"], dtype=np.float64))
            for layer in model["layers"]
        ]
        width = len(FEATURES)
        for weights, bias in self.layers:
            if weights.ndim != 2 or weights.shape[0] != width or bias.shape != (weights.shape[1],):
                raise RerankerFileError("reranker model layers have the wrong shapes")
            width = weights.shape[1]
        if width != 1 or self.mean.shape != (len(FEATURES),) or self.scale.shape != (len(FEATURES),):
            raise RerankerFileError("reranker model layers have the wrong shapes")

    @classmethod
    def load(cls, directory: Path | None = None) -> Reranker:
        return cls(json.loads(verified_bytes(MODEL_FILE, directory)))

    def score(self, rows: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        values = (rows - self.mean) / self.scale
        for number, (weights, bias) in enumerate(self.layers):
            values = values @ weights + bias
            if number < len(self.layers) - 1:
                values = np.tanh(values)
        result: npt.NDArray[np.float64] = values[:, 0]
        return result

    def rerank(self, query: str, candidates: Sequence[Candidate]) -> list[Reranked]:
        """The candidates best first by the model (ties keep the fused order). CPU work: call it
        from a worker thread."""
        if not candidates:
            return []
        scores = self.score(features(query, candidates))
        order = sorted(range(len(candidates)), key=lambda i: (-scores[i], i))
        return [Reranked(candidates[i].hit, round(float(scores[i]), 6)) for i in order]


def data_dir() -> Path:
    return Path(str(files("meshgate.knowledge").joinpath("data")))


def verified_bytes(name: str, directory: Path | None = None) -> bytes:
    """The bytes of one shipped file, refused unless its sha256 is the one data/MANIFEST.json lists."""
    where = directory or data_dir()
    manifest_path = where / "MANIFEST.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        expected = manifest["files"][name]["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RerankerFileError(f"reranker manifest {manifest_path} does not list {name}: {exc}") from None
    path = where / name
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise RerankerFileError(f"reranker model file {path} cannot be read: {exc}") from None
    digest = hashlib.sha256(content).hexdigest()
    if digest != expected:
        raise RerankerFileError(
            f"reranker model file {path} does not match its manifest (sha256 {digest}, expected {expected}):"
            " refusing to load it"
        )
    return content


_loaded: Reranker | None = None
_loading = threading.Lock()


def default_reranker() -> Reranker:
    """The shipped model, loaded and checked once per process (call from a worker thread)."""
    global _loaded
    with _loading:
        if _loaded is None:
            _loaded = Reranker.load()
        return _loaded


def top_n_of(option: Any, default: Any = False) -> int | None:
    """How many candidates to re-score, or None for no reranking, from a request's `rerank` value
    (None: use `default`, the server's setting; False: off; True: DEFAULT_TOP_N; an object with
    `top_n`: that many)."""
    value = default if option is None else option
    if value is None or value is False:
        return None
    if value is True:
        return DEFAULT_TOP_N
    top_n = getattr(value, "top_n", None)
    if top_n is None and isinstance(value, dict):
        top_n = value.get("top_n", DEFAULT_TOP_N)
    return int(top_n) if top_n is not None else DEFAULT_TOP_N


def candidates_of(fused: Sequence[Hit], keyword: Sequence[Hit], vector: Sequence[Hit]) -> list[Candidate]:
    """The fused hits with the cosine and BM25 their retrievers gave them (each chunk's best)."""
    cosines: dict[str, float] = {}
    for hit in vector:
        cosines.setdefault(hit.chunk.chunk_id, hit.score)
    bm25s: dict[str, float] = {}
    for hit in keyword:
        bm25s.setdefault(hit.chunk.chunk_id, hit.score)
    return [Candidate(hit, cosines.get(hit.chunk.chunk_id), bm25s.get(hit.chunk.chunk_id)) for hit in fused]
