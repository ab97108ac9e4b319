#!/usr/bin/env python3
"""Train the knowledge-bank reranker (meshgate/knowledge/rerank.py) on the TUNING half only.

    python scripts/train_reranker.py            # writes meshgate/knowledge/data/reranker.json + MANIFEST.json
    python scripts/train_reranker.py --dry-run  # cross-validation figures only
    python scripts/train_reranker.py --maxsim   # the MaxSim experiment (cross-validation only)

Data: bench/retrieval.py's two quality sets (XQuAD-en: one gold paragraph per question; Cranfield:
graded judgments), retrieved exactly as the bench does (embedded index, anchored fusion of the top
50 of each retriever), split by its fixed seed (15). Only the "tune" half is read here; the bench
reports the "test" half and all queries with the shipped file.

Per query, the top N (DEFAULT_TOP_N) fused candidates become rows of rerank.features() with a label
(XQuAD: 1 for the gold paragraph, else 0; Cranfield: the judged gain, 0 when unjudged). The model
is trained pairwise (RankNet: logistic loss on score differences of pairs whose labels differ);
each query weighs the same within its set, and the two sets weigh the same, as the fusion tuning's
objective (XQuAD MRR + Cranfield nDCG@10) does. The model shape and its L2 strength are chosen by
5-fold cross-validation over the tuning queries (folds by query) on that objective, measured on the
whole ranking (reranked head, then the fused rest). Numpy only; deterministic (fixed seeds).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import retrieval  # noqa: E402
from meshgate.knowledge import rerank  # noqa: E402
from meshgate.knowledge.index import fusion  # noqa: E402

OUT = ROOT / "meshgate" / "knowledge" / "data"
FOLDS = 5
#: (hidden units, 0 = linear; L2 strength): the shapes cross-validation chooses among.
GRID = [(0, 1e-3), (0, 1e-2), (0, 1e-1), (0, 1.0), (16, 1e-2), (16, 1e-1)]
STEPS = 1500
LEARNING_RATE = 0.01


@dataclass
class Query:
    dataset: str  # "xquad" or "cranfield"
    rows: np.ndarray  # features of the top N fused candidates, fused order
    labels: np.ndarray  # relevance of each row
    head: list[str]  # chunk ids of the top N
    tail: list[str]  # chunk ids after the top N (the fused order, kept as is)
    gold: Any  # XQuAD: the gold id; Cranfield: {doc id: gain}


def build_queries(runs: retrieval.Runs, top_n: int) -> list[Query]:
    out = []
    sets = (
        ("xquad", runs.questions, runs.x_kw, runs.x_vec),
        ("cranfield", runs.cran_queries, runs.c_kw, runs.c_vec),
    )
    for dataset, queries, keyword, vector in sets:
        for (text, gold), kw, vec in zip(queries, keyword, vector, strict=True):
            fused = fusion.fuse(kw, vec, retrieval.CANDIDATES)
            candidates = rerank.candidates_of(fused[:top_n], kw, vec)
            ids = [hit.chunk.chunk_id for hit in fused]
            head = ids[:top_n]
            if dataset == "xquad":
                labels = np.array([1.0 if chunk_id == gold else 0.0 for chunk_id in head])
            else:
                labels = np.array([float(gold.get(chunk_id, 0)) for chunk_id in head])
            out.append(Query(dataset, rerank.features(text, candidates), labels, head, ids[top_n:], gold))
    return out


# -- the model -------------------------------------------------------------------------------------


def init(features: int, hidden: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    if hidden == 0:
        return [np.zeros((features, 1)), np.zeros(1)]
    return [
        rng.normal(0, 1 / np.sqrt(features), (features, hidden)),
        np.zeros(hidden),
        rng.normal(0, 1 / np.sqrt(hidden), (hidden, 1)),
        np.zeros(1),
    ]


def forward(params: list[np.ndarray], x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    if len(params) == 2:
        return (x @ params[0] + params[1])[:, 0], None
    hidden = np.tanh(x @ params[0] + params[1])
    return (hidden @ params[2] + params[3])[:, 0], hidden


@dataclass
class Pairs:
    x: np.ndarray  # all rows, standardised
    better: np.ndarray  # row index of the better chunk of each pair
    worse: np.ndarray
    weight: np.ndarray


def pairs_of(queries: list[Query], mean: np.ndarray, scale: np.ndarray) -> Pairs:
    per_set = {name: sum(q.dataset == name for q in queries) for name in ("xquad", "cranfield")}
    rows, better, worse, weight = [], [], [], []
    offset = 0
    for query in queries:
        rows.append((query.rows - mean) / scale)
        labels = query.labels
        i, j = np.nonzero(labels[:, None] > labels[None, :])
        if len(i):
            better.append(i + offset)
            worse.append(j + offset)
            # Each query weighs the same within its set; the two sets weigh the same.
            weight.append(np.full(len(i), 1.0 / (len(i) * max(per_set[query.dataset], 1) * 2)))
        offset += len(labels)
    return Pairs(
        np.concatenate(rows),
        np.concatenate(better).astype(int),
        np.concatenate(worse).astype(int),
        np.concatenate(weight),
    )


def train(pairs: Pairs, hidden: int, l2: float, seed: int = 15) -> list[np.ndarray]:
    """RankNet with Adam, full batch."""
    params = init(pairs.x.shape[1], hidden, seed)
    moments = [np.zeros_like(p) for p in params]
    squares = [np.zeros_like(p) for p in params]
    for step in range(1, STEPS + 1):
        scores, hidden_values = forward(params, pairs.x)
        margin = scores[pairs.better] - scores[pairs.worse]
        # d/d margin of log(1 + exp(-margin)) = -sigmoid(-margin)
        pull = -pairs.weight / (1 + np.exp(np.clip(margin, -30, 30)))
        d_scores = np.zeros(len(scores))
        np.add.at(d_scores, pairs.better, pull)
        np.add.at(d_scores, pairs.worse, -pull)
        if hidden_values is None:
            grads = [pairs.x.T @ d_scores[:, None], np.array([d_scores.sum()])]
        else:
            d_hidden = d_scores[:, None] @ params[2].T * (1 - hidden_values**2)
            grads = [
                pairs.x.T @ d_hidden,
                d_hidden.sum(axis=0),
                hidden_values.T @ d_scores[:, None],
                np.array([d_scores.sum()]),
            ]
        for index in (0, 2) if hidden_values is not None else (0,):
            grads[index] = grads[index] + 2 * l2 * params[index]
        for p, g, m, v in zip(params, grads, moments, squares, strict=True):
            m *= 0.9
            m += 0.1 * g
            v *= 0.999
            v += 0.001 * g * g
            p -= LEARNING_RATE * (m / (1 - 0.9**step)) / (np.sqrt(v / (1 - 0.999**step)) + 1e-8)
    return params


def standardiser(queries: list[Query]) -> tuple[np.ndarray, np.ndarray]:
    rows = np.concatenate([q.rows for q in queries])
    scale = rows.std(axis=0)
    return rows.mean(axis=0), np.where(scale > 1e-9, scale, 1.0)


def objective(queries: list[Query], order_of: Any) -> dict[str, float]:
    """XQuAD MRR and Cranfield nDCG@10 of each query's ranking (head reordered by order_of)."""
    mrr, ndcg = [], []
    for query in queries:
        ranked = [query.head[i] for i in order_of(query)] + query.tail
        if query.dataset == "xquad":
            mrr.append(1 / (ranked.index(query.gold) + 1) if query.gold in ranked else 0.0)
        else:
            ndcg.append(retrieval.ndcg10(query.gold, ranked))
    figures = {"xquad mrr": statistics.fmean(mrr), "cranfield ndcg@10": statistics.fmean(ndcg)}
    figures["objective"] = figures["xquad mrr"] + figures["cranfield ndcg@10"]
    return figures


def model_order(params: list[np.ndarray], mean: np.ndarray, scale: np.ndarray) -> Any:
    def order(query: Query) -> list[int]:
        scores, _ = forward(params, (query.rows - mean) / scale)
        return sorted(range(len(scores)), key=lambda i: (-scores[i], i))

    return order


def fused_order(query: Query) -> list[int]:
    return list(range(len(query.head)))


def cross_validate(tune: list[Query], grid: list[tuple[int, float]]) -> dict[tuple[int, float], dict[str, float]]:
    rng = random.Random(15)
    folds = [i % FOLDS for i in range(len(tune))]
    rng.shuffle(folds)
    results = {}
    for hidden, l2 in grid:
        held_out: list[tuple[Query, list[int]]] = []
        for fold in range(FOLDS):
            train_q = [q for q, f in zip(tune, folds, strict=True) if f != fold]
            test_q = [q for q, f in zip(tune, folds, strict=True) if f == fold]
            mean, scale = standardiser(train_q)
            params = train(pairs_of(train_q, mean, scale), hidden, l2)
            order = model_order(params, mean, scale)
            held_out.extend((q, order(q)) for q in test_q)
        orders = {id(q): o for q, o in held_out}
        results[(hidden, l2)] = objective([q for q, _ in held_out], lambda q, orders=orders: orders[id(q)])
        print(f"  hidden {hidden:2} l2 {l2:g}: " + ", ".join(f"{k} {v:.4f}" for k, v in results[(hidden, l2)].items()))
    return results


def to_json(params: list[np.ndarray], mean: np.ndarray, scale: np.ndarray, info: dict[str, Any]) -> dict[str, Any]:
    layers = [
        {"weights": params[i].round(8).tolist(), "bias": params[i + 1].round(8).tolist()}
        for i in range(0, len(params), 2)
    ]
    return {
        "format": rerank.MODEL_FORMAT,
        "features": list(rerank.FEATURES),
        **info,
        "mean": mean.round(8).tolist(),
        "scale": scale.round(8).tolist(),
        "layers": layers,
    }


def write(model: dict[str, Any]) -> str:
    OUT.mkdir(parents=True, exist_ok=True)
    content = (json.dumps(model, indent=1) + "\n").encode()
    (OUT / rerank.MODEL_FILE).write_bytes(content)
    digest = hashlib.sha256(content).hexdigest()
    manifest = {
        "files": {rerank.MODEL_FILE: {"sha256": digest, "bytes": len(content)}},
        "readme": "written by scripts/train_reranker.py; meshgate/knowledge/rerank.py checks the sha256 on load",
    }
    (OUT / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return digest


# -- an experiment: late interaction (MaxSim) over the local MiniLM's token vectors ----------------


def token_vectors(texts: list[str], batch: int = 32) -> list[np.ndarray]:
    """Each text's MiniLM last-layer token vectors ([CLS]/[SEP] dropped, cut at 256 tokens), unit length."""
    from meshgate.providers.local.embedding import LocalEmbeddingConfig, LocalEmbeddingModel

    model = LocalEmbeddingModel(LocalEmbeddingConfig(name="local-embed", provider="local-embedding"))
    model._load()
    out = []
    for start in range(0, len(texts), batch):
        ids = [e.ids[: retrieval.MAX_TOKENS] for e in model._tokenizer.encode_batch(texts[start : start + batch])]
        inputs = np.zeros((len(ids), max(map(len, ids))), dtype=np.int64)
        mask = np.zeros_like(inputs)
        for row, tokens in enumerate(ids):
            inputs[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
        (hidden,) = model._session.run(
            ["last_hidden_state"],
            {"input_ids": inputs, "attention_mask": mask, "token_type_ids": np.zeros_like(inputs)},
        )
        for row, tokens in enumerate(ids):
            vectors = hidden[row, 1 : len(tokens) - 1]
            out.append(
                (vectors / np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9, None)).astype(np.float16)
            )
    return out


def maxsim_experiment(runs: retrieval.Runs, queries: list[Query], tune_indices: list[int]) -> None:
    """Cross-validates the linear shapes with two MaxSim features added (the score, and its gap to
    the list's best), on the tuning half; prints what the token vectors cost."""
    import copy
    import time

    count = len(runs.questions)
    texts = [q for q, _ in runs.questions] + [q for q, _ in runs.cran_queries]
    chunk_text = {pid: text for pid, _, text in runs.paragraphs} | {f"c:{d}": text for d, _, text in runs.docs}

    def key(index: int, chunk_id: str) -> str:
        return chunk_id if index < count else f"c:{chunk_id}"

    needed = sorted({key(i, c) for i in tune_indices for c in queries[i].head})
    started = time.perf_counter()
    query_vectors = dict(zip(tune_indices, token_vectors([texts[i] for i in tune_indices]), strict=True))
    chunk_vectors = dict(zip(needed, token_vectors([chunk_text[k] for k in needed]), strict=True))
    elapsed = time.perf_counter() - started
    print(f"maxsim: token vectors of {len(tune_indices) + len(needed)} texts in {elapsed:.0f} s")
    plain, extended = [], []
    for i in tune_indices:
        q = query_vectors[i].astype(np.float32)
        scores = np.array(
            [float((q @ chunk_vectors[key(i, c)].astype(np.float32).T).max(axis=1).mean()) for c in queries[i].head]
        )
        wider = copy.copy(queries[i])
        wider.rows = np.hstack([queries[i].rows, np.stack([scores, scores - scores.max()], axis=1)])
        plain.append(queries[i])
        extended.append(wider)

    def by_maxsim(query: Query) -> list[int]:
        return sorted(range(len(query.head)), key=lambda r: (-query.rows[r, -2], r))

    print("  maxsim alone: " + ", ".join(f"{k} {v:.4f}" for k, v in objective(extended, by_maxsim).items()))
    linear = [shape for shape in GRID if shape[0] == 0]
    print("  features + maxsim:")
    cross_validate(extended, linear)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--top-n", type=int, default=rerank.DEFAULT_TOP_N, help="candidates per query")
    parser.add_argument("--dry-run", action="store_true", help="cross-validate only; write nothing")
    parser.add_argument("--linear-only", action="store_true", help="cross-validate the linear shapes only (faster)")
    parser.add_argument(
        "--maxsim", action="store_true", help="experiment: add MaxSim over MiniLM token vectors (cross-validation only)"
    )
    args = parser.parse_args()
    runs = await retrieval.gather_runs()
    queries = build_queries(runs, args.top_n)
    halves = retrieval.split_halves(len(runs.questions), len(runs.cran_queries))
    x_tune, c_tune = halves["tune"]
    count = len(runs.questions)
    tune = [queries[i] for i in x_tune] + [queries[count + i] for i in c_tune]
    print(f"tuning half: {len(x_tune)} XQuAD questions, {len(c_tune)} Cranfield queries; top {args.top_n}")
    baseline = objective(tune, fused_order)
    print("  anchored fusion (no rerank): " + ", ".join(f"{k} {v:.4f}" for k, v in baseline.items()))
    if args.maxsim:
        maxsim_experiment(runs, queries, list(x_tune) + [count + i for i in c_tune])
        return
    results = cross_validate(tune, [shape for shape in GRID if shape[0] == 0] if args.linear_only else GRID)
    (hidden, l2), best = max(results.items(), key=lambda item: item[1]["objective"])
    print(f"chosen: hidden {hidden}, l2 {l2:g} (cv objective {best['objective']:.4f}, ", end="")
    print(f"fused {baseline['objective']:.4f})")
    if args.dry_run:
        return
    mean, scale = standardiser(tune)
    params = train(pairs_of(tune, mean, scale), hidden, l2)
    info = {
        "trained_on": "tuning half (seed 15) of bench/retrieval.py: XQuAD-en and Cranfield",
        "top_n": args.top_n,
        "hidden": hidden,
        "l2": l2,
        "cv_objective": round(best["objective"], 4),
        "fused_objective": round(baseline["objective"], 4),
    }
    digest = write(to_json(params, mean, scale, info))
    print(f"wrote {(OUT / rerank.MODEL_FILE).relative_to(ROOT)} (sha256 {digest})")


if __name__ == "__main__":
    asyncio.run(main())
