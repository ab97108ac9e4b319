"""Knowledge banks, retrieval: quality on public data and speed of the embedded index.

    python bench/retrieval.py                  # both parts
    python bench/retrieval.py --part quality   # XQuAD-en and Cranfield
    python bench/retrieval.py --part speed     # search p50/p95 at 10k and 100k chunks, ingest rates

Quality, on ../shared/data (see its README):
- XQuAD-en: each of the 240 paragraphs is one chunk; each of the 1,190 questions has one gold
  paragraph: recall@1, recall@5 and MRR (over the fused top 50).
- Cranfield: 1,400 records (title, authors and abstract), 225 queries (`.I` ids skip numbers: they
  are numbered 1..225 in file order to match cranqrel), graded judgments (1 most relevant .. 4;
  -1 rows are not relevant): nDCG@10 with gain 2^(5-grade)-1.
Rows: `bm25s` (reference BM25, English stop words), meshgate keyword (FTS5 BM25), vectors
(all-MiniLM-L6-v2 int8, meshgate's local embedder; texts over its 256 tokens are cut at 256, as
sentence-transformers does), hybrid with every fusion method, and the default fusion followed by
the shipped reranker (meshgate/knowledge/rerank.py) over its top 10, 20 and 50, with the reranking's
time per query. Fusion parameters are chosen on one half of the queries of both sets (fixed seed
split) and reported on the other half and on all; the reranker is trained on that same tuning half
only (scripts/train_reranker.py).
Embeddings are cached in bench/results/retrieval-embeddings.npz, keyed by sha256 of the text.

Speed: the embedded index in one process holding N synthetic chunks (N = 10k, 100k): texts are
Cranfield and XQuAD texts with 10% of their words dropped and 10 words of the corpus' vocabulary
added (seeded), vectors random unit vectors (384 dims), ACLs drawn from four; queries are the
Cranfield queries and XQuAD questions, query vectors random. The reader holds two of the ACL tokens.
Search p50/p95 for keyword (top 50), vector (top 50) and hybrid (both, concurrently, fused to 10);
upsert rate (chunks/s, vectors given) and one ingest-with-embedding rate (chunks/s through the
local embedder, then upsert).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from meshgate.knowledge import rerank  # noqa: E402
from meshgate.knowledge.index import fusion  # noqa: E402
from meshgate.knowledge.index.base import ChunkRef, Hit, IndexedChunk, Readers  # noqa: E402
from meshgate.knowledge.index.embedded import EmbeddedIndex  # noqa: E402
from meshgate.knowledge.text import STOP_WORDS  # noqa: E402
from meshgate.providers.base import CallContext  # noqa: E402
from meshgate.providers.local.embedding import LocalEmbeddingConfig, LocalEmbeddingModel  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "bench" / "results"
CACHE = RESULTS / "retrieval-embeddings.npz"
DIMS = 384
MAX_TOKENS = 256
SPLIT_SEED = 15
CANDIDATES = 50
#: Candidate counts the reranker rows are measured at (the default, rerank.DEFAULT_TOP_N, is 20).
RERANK_TOP_N = (10, 20, 50)

#: The grids searched per fusion method on the tuning half.
GRIDS: dict[str, list[dict[str, float]]] = {
    "rrf": [
        {"rrf_k": k, "keyword_weight": w, "vector_weight": 1.0}
        for k in (10.0, 30.0, 60.0)
        for w in (0.5, 0.75, 1.0, 1.5, 2.0)
    ],
    "minmax": [{"alpha": a / 10} for a in range(1, 10)],
    "zscore": [{"alpha": a / 10} for a in range(1, 10)],
    "anchored": [{"alpha": a / 10, "missing_cosine": m} for a in range(1, 10) for m in (0.0, 1.0)],
}


# -- data ------------------------------------------------------------------------------------------


def load_xquad() -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
    """Paragraphs as (id, title, text) and questions as (question, gold paragraph id)."""
    data = json.loads((DATA / "xquad-en" / "xquad.en.json").read_text())
    paragraphs, questions = [], []
    for article in data["data"]:
        for number, paragraph in enumerate(article["paragraphs"]):
            pid = f"{article['title']}#{number}"
            paragraphs.append((pid, article["title"].replace("_", " "), paragraph["context"]))
            questions.extend((qa["question"], pid) for qa in paragraph["qas"])
    return paragraphs, questions


def load_cranfield() -> tuple[list[tuple[str, str, str]], list[tuple[str, dict[str, int]]]]:
    """Documents as (id, title, text) and queries as (text, {doc id: gain})."""
    folder = DATA / "cranfield"
    docs = []
    for block in re.split(r"^\.I ", (folder / "cran.all.1400").read_text(), flags=re.M)[1:]:
        doc_id = block.split("\n", 1)[0].strip()
        fields = dict(re.findall(r"^\.([TAWB])\n(.*?)(?=^\.[TAWB]\n|\Z)", block, flags=re.M | re.S))
        title = " ".join(fields.get("T", "").split())
        # The record's title, authors and abstract (`.W`, which repeats the title): with this text
        # bm25s gives the reference figure (0.341; the abstract alone gives 0.326).
        text = " ".join(f"{fields.get('T', '')} {fields.get('A', '')} {fields.get('W', '')}".split())
        docs.append((doc_id, title, text))
    queries = [
        " ".join(block.split(".W", 1)[1].split())
        for block in re.split(r"^\.I ", (folder / "cran.qry").read_text(), flags=re.M)[1:]
    ]
    judged: dict[int, dict[str, int]] = {}
    for line in (folder / "cranqrel").read_text().splitlines():
        if not line.strip():
            continue
        query, doc, grade = (int(part) for part in line.split())
        if 1 <= grade <= 4:  # -1: judged not relevant
            judged.setdefault(query, {})[str(doc)] = 2 ** (5 - grade) - 1
    # .I numbers skip: the n-th query in file order is query n of cranqrel.
    return docs, [(text, judged.get(number, {})) for number, text in enumerate(queries, start=1)]


# -- metrics ---------------------------------------------------------------------------------------


def ranks_of(gold: str, ranked: Sequence[str]) -> int | None:
    return ranked.index(gold) + 1 if gold in ranked else None


def xquad_metrics(runs: list[tuple[str, list[str]]]) -> dict[str, float]:
    ranks = [ranks_of(gold, ranked) for gold, ranked in runs]
    return {
        "recall@1": sum(r == 1 for r in ranks) / len(ranks),
        "recall@5": sum(r is not None and r <= 5 for r in ranks) / len(ranks),
        "mrr": sum(1 / r for r in ranks if r) / len(ranks),
    }


def ndcg10(gains: dict[str, int], ranked: Sequence[str]) -> float:
    dcg = sum(gains.get(doc, 0) / math.log2(i + 2) for i, doc in enumerate(ranked[:10]))
    ideal = sum(g / math.log2(i + 2) for i, g in enumerate(sorted(gains.values(), reverse=True)[:10]))
    return dcg / ideal if ideal else 0.0


def cranfield_metrics(runs: list[tuple[dict[str, int], list[str]]]) -> dict[str, float]:
    return {"ndcg@10": statistics.fmean(ndcg10(gains, ranked) for gains, ranked in runs)}


# -- embeddings ------------------------------------------------------------------------------------


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class Embedder:
    """The local embedder with a cache on disk keyed by sha256 of the (cut) text."""

    def __init__(self) -> None:
        self.model = LocalEmbeddingModel(LocalEmbeddingConfig(name="local-embed", provider="local-embedding"))
        self.cache: dict[str, np.ndarray[Any, Any]] = {}
        if CACHE.exists():
            stored = np.load(CACHE)
            self.cache = dict(zip(stored["keys"].tolist(), stored["vectors"], strict=True))

    async def start(self) -> None:
        await self.model.start()

    def cut(self, text: str) -> str:
        """The text up to its 256th token ([CLS] and [SEP] included), as sentence-transformers truncates."""
        encoding = self.model._tokenizer.encode(text, add_special_tokens=False)
        if len(encoding.ids) <= MAX_TOKENS - 2:
            return text
        return text[: encoding.offsets[MAX_TOKENS - 3][1]]

    async def embed(self, texts: list[str], use_cache: bool = True) -> np.ndarray[Any, Any]:
        cut = [self.cut(text) for text in texts]
        missing = list(dict.fromkeys(t for t in cut if not use_cache or _sha(t) not in self.cache))
        for start in range(0, len(missing), 256):
            batch = missing[start : start + 256]
            result = await self.model.embed(batch, CallContext(request_id="bench-retrieval"))
            for text, vector in zip(batch, result.vectors, strict=True):
                self.cache[_sha(text)] = np.asarray(vector, dtype=np.float32)
        return np.stack([self.cache[_sha(t)] for t in cut])

    def save(self) -> None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        keys = np.array(list(self.cache))
        np.savez(CACHE, keys=keys, vectors=np.stack([self.cache[k] for k in keys.tolist()]))

    async def close(self) -> None:
        await self.model.close()


# -- quality ---------------------------------------------------------------------------------------


def bm25s_runs(docs: list[tuple[str, str, str]], queries: list[str], k: int) -> list[list[str]]:
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(
        bm25s.tokenize([text for _, _, text in docs], stopwords="en", show_progress=False), show_progress=False
    )
    results, _ = retriever.retrieve(
        bm25s.tokenize(queries, stopwords="en", show_progress=False), k=k, show_progress=False
    )
    return [[docs[i][0] for i in row] for row in results.tolist()]


async def index_corpus(index: EmbeddedIndex, bank: str, docs: list[tuple[str, str, str]], vectors: np.ndarray) -> None:
    await index.create_bank(bank, DIMS)
    chunks = [
        IndexedChunk(ChunkRef(chunk_id=doc_id, document_id=doc_id, text=text, source=bank, title=title), vector)
        for (doc_id, title, text), vector in zip(docs, vectors, strict=True)
    ]
    for start in range(0, len(chunks), 500):
        await index.upsert(bank, chunks[start : start + 500])


async def retrieve(
    index: EmbeddedIndex, bank: str, queries: list[str], vectors: np.ndarray
) -> tuple[list[list[Hit]], list[list[Hit]]]:
    everyone = Readers.of("public")
    keyword = [await index.keyword_search(bank, q, everyone, CANDIDATES) for q in queries]
    vector = [await index.vector_search(bank, v, everyone, CANDIDATES) for v in vectors]
    return keyword, vector


def ids(hits: list[Hit]) -> list[str]:
    return [hit.chunk.chunk_id for hit in hits]


@dataclass
class Runs:
    """Both quality sets with each query's keyword and vector hits (top CANDIDATES each)."""

    paragraphs: list[tuple[str, str, str]]
    questions: list[tuple[str, str]]
    docs: list[tuple[str, str, str]]
    cran_queries: list[tuple[str, dict[str, int]]]
    x_kw: list[list[Hit]]
    x_vec: list[list[Hit]]
    c_kw: list[list[Hit]]
    c_vec: list[list[Hit]]


async def gather_runs() -> Runs:
    """Embed both sets (cached), index them in a temporary embedded index, and search every query."""
    paragraphs, questions = load_xquad()
    docs, cran_queries = load_cranfield()
    print(
        f"xquad: {len(paragraphs)} paragraphs, {len(questions)} questions; cranfield: {len(docs)} docs, "
        f"{len(cran_queries)} queries ({sum(bool(g) for _, g in cran_queries)} judged)"
    )
    embedder = Embedder()
    await embedder.start()
    try:
        x_doc_vec = await embedder.embed([text for _, _, text in paragraphs])
        x_q_vec = await embedder.embed([q for q, _ in questions])
        c_doc_vec = await embedder.embed([text for _, _, text in docs])
        c_q_vec = await embedder.embed([q for q, _ in cran_queries])
        embedder.save()
    finally:
        await embedder.close()

    with tempfile.TemporaryDirectory() as tmp:
        index = EmbeddedIndex(Path(tmp) / "index.sqlite")
        await index.open()
        await index_corpus(index, "xquad", paragraphs, x_doc_vec)
        await index_corpus(index, "cranfield", docs, c_doc_vec)
        x_kw, x_vec = await retrieve(index, "xquad", [q for q, _ in questions], x_q_vec)
        c_kw, c_vec = await retrieve(index, "cranfield", [q for q, _ in cran_queries], c_q_vec)
        await index.close()
    return Runs(paragraphs, questions, docs, cran_queries, x_kw, x_vec, c_kw, c_vec)


def split_halves(x_count: int, c_count: int) -> dict[str, tuple[list[int], list[int]]]:
    """Query indices of XQuAD and Cranfield per half: "tune" (fixed seed), "test" (the rest), "all"."""
    rng = random.Random(SPLIT_SEED)
    x_tune = set(rng.sample(range(x_count), x_count // 2))
    c_tune = set(rng.sample(range(c_count), c_count // 2))
    return {
        "tune": (sorted(x_tune), sorted(c_tune)),
        "test": ([i for i in range(x_count) if i not in x_tune], [i for i in range(c_count) if i not in c_tune]),
        "all": (list(range(x_count)), list(range(c_count))),
    }


async def quality() -> dict[str, Any]:
    runs = await gather_runs()
    paragraphs, questions, docs, cran_queries = runs.paragraphs, runs.questions, runs.docs, runs.cran_queries
    x_kw, x_vec, c_kw, c_vec = runs.x_kw, runs.x_vec, runs.c_kw, runs.c_vec
    x_gold = [gold for _, gold in questions]
    c_gains = [gains for _, gains in cran_queries]
    halves = split_halves(len(questions), len(cran_queries))

    def score(x_ranked: list[list[str]], c_ranked: list[list[str]], half: str) -> dict[str, float]:
        xi, ci = halves[half]
        return {
            **{f"xquad {m}": v for m, v in xquad_metrics([(x_gold[i], x_ranked[i]) for i in xi]).items()},
            **{f"cranfield {m}": v for m, v in cranfield_metrics([(c_gains[i], c_ranked[i]) for i in ci]).items()},
        }

    rows: dict[str, dict[str, Any]] = {}
    x_bm25s = bm25s_runs(paragraphs, [q for q, _ in questions], CANDIDATES)
    c_bm25s = bm25s_runs(docs, [q for q, _ in cran_queries], CANDIDATES)
    singles = {
        "bm25s (reference)": (x_bm25s, c_bm25s),
        "meshgate keyword (FTS5)": ([ids(h) for h in x_kw], [ids(h) for h in c_kw]),
        "meshgate vectors": ([ids(h) for h in x_vec], [ids(h) for h in c_vec]),
    }
    for name, (xr, cr) in singles.items():
        rows[name] = {half: score(xr, cr, half) for half in ("test", "all")}

    def fused(method: str, params: dict[str, float]) -> tuple[list[list[str]], list[list[str]]]:
        return (
            [ids(fusion.fuse(k, v, CANDIDATES, method, **params)) for k, v in zip(x_kw, x_vec, strict=True)],
            [ids(fusion.fuse(k, v, CANDIDATES, method, **params)) for k, v in zip(c_kw, c_vec, strict=True)],
        )

    def objective(figures: dict[str, float]) -> float:
        # Both sets count alike: XQuAD MRR and Cranfield nDCG@10.
        return figures["xquad mrr"] + figures["cranfield ndcg@10"]

    chosen: dict[str, dict[str, float]] = {}
    for method, grid in GRIDS.items():
        tuned = max(grid, key=lambda params: objective(score(*fused(method, params), "tune")))
        chosen[method] = tuned
        xr, cr = fused(method, tuned)
        label = f"hybrid {method} " + ",".join(f"{k}={v:g}" for k, v in tuned.items())
        rows[label] = {half: score(xr, cr, half) for half in ("test", "all")}
        defaults = fusion.DEFAULTS[method]
        if defaults != tuned:
            xr, cr = fused(method, defaults)
            label = f"hybrid {method} (defaults) " + ",".join(f"{k}={v:g}" for k, v in defaults.items())
            rows[label] = {half: score(xr, cr, half) for half in ("test", "all")}

    # The shipped reranker (trained by scripts/train_reranker.py on the tuning half only) over the
    # default fusion's top N; the rest of the fused list follows unchanged.
    reranking: dict[str, Any] = {"model": rerank.default_reranker().info, "latency": {}, "difference": {}}
    x_plain, c_plain = fused("anchored", fusion.DEFAULTS["anchored"])
    for top_n in RERANK_TOP_N:
        xr, cr, seconds = reranked_runs(runs, top_n)
        label = f"hybrid anchored + rerank (top {top_n})"
        rows[label] = {half: score(xr, cr, half) for half in ("test", "all")}
        reranking["latency"][str(top_n)] = {**percentiles(seconds), "load_average": round(os.getloadavg()[0], 2)}
        # Per-query differences against plain anchored on the test half, with a bootstrap interval.
        xi, ci = halves["test"]
        reranking["difference"][str(top_n)] = {
            "xquad mrr": paired_difference(
                [1 / r if (r := ranks_of(x_gold[i], xr[i])) else 0.0 for i in xi],
                [1 / r if (r := ranks_of(x_gold[i], x_plain[i])) else 0.0 for i in xi],
            ),
            "cranfield ndcg@10": paired_difference(
                [ndcg10(c_gains[i], cr[i]) for i in ci], [ndcg10(c_gains[i], c_plain[i]) for i in ci]
            ),
        }

    abstention = abstention_scale(x_kw, x_vec, paragraphs, questions)
    print_quality(rows)
    print("rerank latency per query (features + model, top N):", reranking["latency"])
    print("rerank minus anchored on the test half (mean, 95% bootstrap interval):", reranking["difference"])
    print("fused top score (default method) on answerable vs unanswerable XQuAD questions:", abstention)
    return {
        "rows": rows,
        "chosen": chosen,
        "split_seed": SPLIT_SEED,
        "rerank": reranking,
        "abstention_scale": abstention,
    }


def paired_difference(new: list[float], old: list[float], resamples: int = 2000) -> dict[str, float]:
    """Mean of new - old over queries, with a 95% interval from resampling the queries (seeded)."""
    deltas = np.array(new) - np.array(old)
    rng = np.random.default_rng(SPLIT_SEED)
    means = deltas[rng.integers(0, len(deltas), (resamples, len(deltas)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {
        "mean": round(float(deltas.mean()), 4),
        "low": round(float(low), 4),
        "high": round(float(high), 4),
        "better": int((deltas > 0).sum()),
        "worse": int((deltas < 0).sum()),
    }


def reranked_runs(runs: Runs, top_n: int) -> tuple[list[list[str]], list[list[str]], list[float]]:
    """Each query's ranking with the fused top `top_n` reordered by the shipped reranker, and the
    time the reranking took per query (candidates, features and model; the searches excluded)."""
    model = rerank.default_reranker()
    seconds: list[float] = []

    def one(query: str, keyword: list[Hit], vector: list[Hit]) -> list[str]:
        fused = fusion.fuse(keyword, vector, CANDIDATES)
        started = time.perf_counter()
        head = model.rerank(query, rerank.candidates_of(fused[:top_n], keyword, vector))
        seconds.append(time.perf_counter() - started)
        return [r.hit.chunk.chunk_id for r in head] + ids(fused[top_n:])

    x_ranked = [one(q, k, v) for (q, _), k, v in zip(runs.questions, runs.x_kw, runs.x_vec, strict=True)]
    c_ranked = [one(q, k, v) for (q, _), k, v in zip(runs.cran_queries, runs.c_kw, runs.c_vec, strict=True)]
    return x_ranked, c_ranked, seconds


def abstention_scale(
    x_kw: list[list[Hit]],
    x_vec: list[list[Hit]],
    paragraphs: list[tuple[str, str, str]],
    questions: list[tuple[str, str]],
) -> dict[str, Any]:
    """The default fusion's top score when the gold paragraph is in the bank and when its whole
    article is not (hits of the question's own article removed): where 'weak evidence' lies."""
    answerable, unanswerable = [], []
    for (_, gold), kw, vec in zip(questions, x_kw, x_vec, strict=True):
        article = gold.split("#")[0]
        top = fusion.fuse(kw, vec, 1)
        answerable.append(top[0].score if top else 0.0)
        other_kw = [h for h in kw if not h.chunk.chunk_id.startswith(article + "#")]
        other_vec = [h for h in vec if not h.chunk.chunk_id.startswith(article + "#")]
        top = fusion.fuse(other_kw, other_vec, 1)
        unanswerable.append(top[0].score if top else 0.0)

    def quantiles(values: list[float]) -> dict[str, float]:
        cuts = statistics.quantiles(values, n=20)
        return {"p5": round(cuts[0], 3), "p50": round(statistics.median(values), 3), "p95": round(cuts[-1], 3)}

    return {
        "method": fusion.DEFAULT_METHOD,
        "answerable": quantiles(answerable),
        "article_absent": quantiles(unanswerable),
    }


def print_quality(rows: dict[str, dict[str, Any]]) -> None:
    metrics = ["xquad recall@1", "xquad recall@5", "xquad mrr", "cranfield ndcg@10"]
    print(f"\n{'retriever':58} {'half':5} " + " ".join(f"{m.split(' ')[1]:>9}" for m in metrics))
    for name, halves in rows.items():
        for half, figures in halves.items():
            print(f"{name:58} {half:5} " + " ".join(f"{figures[m]:9.3f}" for m in metrics))


# -- speed -----------------------------------------------------------------------------------------


def synthetic_texts(n: int, seed: int) -> list[str]:
    paragraphs, _ = load_xquad()
    docs, _ = load_cranfield()
    bases = [text for _, _, text in paragraphs] + [text for _, _, text in docs]
    vocabulary = sorted({w for text in bases for w in text.lower().split() if w.isalpha() and w not in STOP_WORDS})
    rng = random.Random(seed)
    texts = []
    for i in range(n):
        words = [w for w in bases[i % len(bases)].split() if rng.random() > 0.1]
        words += rng.sample(vocabulary, 10)
        texts.append(" ".join(words))
    return texts


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(1000 * ordered[len(ordered) // 2], 2),
        "p95_ms": round(1000 * ordered[int(len(ordered) * 0.95) - 1], 2),
    }


def unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    vectors = rng.standard_normal((n, DIMS)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


async def speed(sizes: list[int], searches: int, ingest: int) -> dict[str, Any]:
    rng = np.random.default_rng(7)
    acls = [("public",), ("team:a",), ("team:b",), ("user:x", "team:c")]
    readers = Readers.of("team:a", "user:x")
    _, questions = load_xquad()
    _, cran_queries = load_cranfield()
    queries = [q for q, _ in cran_queries] + [q for q, _ in questions]
    random.Random(3).shuffle(queries)
    out: dict[str, Any] = {}
    for size in sizes:
        texts = synthetic_texts(size, seed=size)
        vectors = unit_vectors(rng, size)
        with tempfile.TemporaryDirectory() as tmp:
            index = EmbeddedIndex(Path(tmp) / "index.sqlite")
            await index.open()
            await index.create_bank("speed", DIMS)
            started = time.perf_counter()
            batch = 1000
            for start in range(0, size, batch):
                await index.upsert(
                    "speed",
                    [
                        IndexedChunk(
                            ChunkRef(
                                f"c{i}",
                                f"d{i // 4}",
                                texts[i],
                                f"file{i // 4}.txt",
                                f"doc {i // 4}",
                                acl=acls[i % len(acls)],
                            ),
                            vectors[i],
                        )
                        for i in range(start, min(start + batch, size))
                    ],
                )
            upsert_rate = size / (time.perf_counter() - started)
            query_vectors = unit_vectors(rng, searches)
            await index.vector_search("speed", query_vectors[0], readers, 50)  # loads the matrix
            # Wall time, and CPU time of the whole process (all threads): on a shared machine the
            # second shows what a search costs when it does not wait for the cores.
            timings: dict[str, list[float]] = {"keyword": [], "vector": [], "hybrid": []}
            cpu: dict[str, list[float]] = {"keyword": [], "vector": [], "hybrid": []}
            for i in range(searches):
                q, v = queries[i % len(queries)], query_vectors[i]
                t0, c0 = time.perf_counter(), time.process_time()
                await index.keyword_search("speed", q, readers, fusion.KEYWORD_CANDIDATES)
                t1, c1 = time.perf_counter(), time.process_time()
                await index.vector_search("speed", v, readers, fusion.VECTOR_CANDIDATES)
                t2, c2 = time.perf_counter(), time.process_time()
                kw, vec = await asyncio.gather(
                    index.keyword_search("speed", q, readers, fusion.KEYWORD_CANDIDATES),
                    index.vector_search("speed", v, readers, fusion.VECTOR_CANDIDATES),
                )
                fusion.fuse(kw, vec, 10)
                t3, c3 = time.perf_counter(), time.process_time()
                timings["keyword"].append(t1 - t0)
                timings["vector"].append(t2 - t1)
                timings["hybrid"].append(t3 - t2)
                cpu["keyword"].append(c1 - c0)
                cpu["vector"].append(c2 - c1)
                cpu["hybrid"].append(c3 - c2)
            file_mb = sum(p.stat().st_size for p in Path(tmp).iterdir()) / 1e6  # noqa: ASYNC240
            await index.close()
        out[str(size)] = figures = {
            "upsert_chunks_per_s": round(upsert_rate),
            "file_mb": round(file_mb, 1),
            **{kind: percentiles(samples) for kind, samples in timings.items()},
            "cpu": {kind: percentiles(samples) for kind, samples in cpu.items()},
            "load_average": round(os.getloadavg()[0], 2),
        }
        print(
            f"{size:>7} chunks: upsert {upsert_rate:,.0f} chunks/s, file {file_mb:.0f} MB; "
            + f"load {out[str(size)]['load_average']}; "
            + "; ".join(
                f"{kind} p50 {figures[kind]['p50_ms']} ms p95 {figures[kind]['p95_ms']} ms "
                f"(cpu {figures['cpu'][kind]['p50_ms']}/{figures['cpu'][kind]['p95_ms']})"
                for kind in timings
            )
        )
    if ingest:
        out["ingest_with_embedding"] = await ingest_with_embedding(ingest)
    return out


async def ingest_with_embedding(n: int = 1000) -> dict[str, Any]:
    """Chunks/s through the local embedder (no cache) and into the index."""
    texts = synthetic_texts(n, seed=99)
    embedder = Embedder()
    await embedder.start()
    cut = [embedder.cut(t) for t in texts]
    with tempfile.TemporaryDirectory() as tmp:
        index = EmbeddedIndex(Path(tmp) / "index.sqlite")
        await index.open()
        await index.create_bank("ingest", DIMS)
        started = time.perf_counter()
        tokens = 0
        for start in range(0, n, 64):
            batch = cut[start : start + 64]
            result = await embedder.model.embed(batch, CallContext(request_id="bench-ingest"))
            tokens += result.prompt_tokens
            await index.upsert(
                "ingest",
                [
                    IndexedChunk(ChunkRef(f"c{start + j}", f"d{start + j}", t, "s", "t"), np.asarray(v, np.float32))
                    for j, (t, v) in enumerate(zip(batch, result.vectors, strict=True))
                ],
            )
        elapsed = time.perf_counter() - started
        await index.close()
    await embedder.close()
    rate = {"chunks": n, "tokens_per_chunk": round(tokens / n), "chunks_per_s": round(n / elapsed, 1)}
    print(f"ingest with embedding: {rate}")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("quality", "speed", "all"), default="all")
    parser.add_argument("--sizes", default="10000,100000", help="chunk counts for the speed part")
    parser.add_argument("--searches", type=int, default=200, help="searches per size and kind")
    parser.add_argument("--ingest", type=int, default=1000, help="chunks for the ingest-with-embedding rate (0: skip)")
    args = parser.parse_args()
    report: dict[str, Any] = {"sqlite": __import__("sqlite3").sqlite_version}
    if args.part in ("quality", "all"):
        report["quality"] = asyncio.run(quality())
    if args.part in ("speed", "all"):
        sizes = [int(s) for s in args.sizes.split(",")]
        report["speed"] = asyncio.run(speed(sizes, args.searches, args.ingest))
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"retrieval-{args.part}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
