"""The response cache, measured: hit latency and throughput against a miss through `meshgate serve`,
and the semantic cache's precision on paraphrase pairs and unrelated-but-close pairs.

    python bench/cache.py                       # both parts
    python bench/cache.py --part precision      # only the threshold table (no wrk, no server)
    python bench/cache.py --part latency --duration 5

Latency: one fake OpenAI upstream (meshgate/testing/fake_openai.py, model `slow:S`, which answers
after S seconds, or `echo`), `meshgate serve --no-auth` in front of it, and wrk posting
`/v1/chat/completions` with `temperature: 0`. A *miss* run sends a new question per request (wrk's
Lua counter), a *hit* run the same question every time (stored by a first call), a *semantic hit*
run a fixed paraphrase of a stored question. Backends: SQLite (the default), in process, Redis
(when one answers at --redis-url).

Precision: the local embedding model (`local-embed`, all-MiniLM-L6-v2) embeds both sides of every
pair; a pair "hits" when the cosine is at or over the threshold and (with the guard) the two
questions name the same numbers and the same negation and are not the same words in another order
(meshgate/cache/key.py). Pairs:
- PARAPHRASES and NEAR_MISSES below, written by hand for this bench (FAQ-style questions; near
  misses change the entity, a number, a direction, a negation or the subject);
- Cranfield hard negatives: the most similar pairs of distinct Cranfield queries
  (/work/shared/data/cranfield, `cran.qry`) whose judged relevant documents do not overlap: two
  different information needs that embed close.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from harness import ensure_free, process_tree, wait_http
from run import wrk

from meshgate.cache.key import guard_digest, guards_compatible

CRANFIELD = [Path("/work/shared/data/cranfield"), Path(__file__).resolve().parents[2] / "shared/data/cranfield"]

#: Same question, other words: a semantic cache should answer the second from the first.
PARAPHRASES: list[tuple[str, str]] = [
    ("How do I reset my password?", "How can I reset my password?"),
    ("How do I reset my password?", "What are the steps to reset my password?"),
    ("What is the capital of France?", "What's the capital of France?"),
    ("What is the capital of France?", "Which city is the capital of France?"),
    ("How do I cancel my subscription?", "How can I cancel my subscription?"),
    ("How do I cancel my subscription?", "What do I do to cancel my subscription?"),
    ("What are your opening hours?", "What are your business hours?"),
    ("What are your opening hours?", "When are you open?"),
    ("How do I change my email address?", "How can I update my email address?"),
    ("Can I get a refund?", "Is it possible to get a refund?"),
    ("How long does shipping take?", "How long does delivery take?"),
    ("How long does shipping take?", "How many days does shipping take?"),
    ("Do you ship internationally?", "Do you offer international shipping?"),
    ("How do I contact customer support?", "How can I reach customer support?"),
    ("What payment methods do you accept?", "Which payment methods do you accept?"),
    ("What payment methods do you accept?", "What forms of payment do you take?"),
    ("How do I delete my account?", "How can I delete my account?"),
    ("How do I delete my account?", "What is the way to delete my account?"),
    ("Where can I find my invoice?", "Where do I find my invoice?"),
    ("How do I track my order?", "How can I track my order?"),
    ("How do I track my order?", "Where can I track my order?"),
    ("What is machine learning?", "What's machine learning?"),
    ("What is machine learning?", "Can you explain what machine learning is?"),
    ("Explain how photosynthesis works.", "How does photosynthesis work?"),
    ("What causes rain?", "What makes it rain?"),
    ("Who wrote Hamlet?", "Who is the author of Hamlet?"),
    ("Who wrote Hamlet?", "Who was Hamlet written by?"),
    ("How do I sort a list in Python?", "How can I sort a list in Python?"),
    ("How do I sort a list in Python?", "What is the way to sort a Python list?"),
    ("How do I read a file in Python?", "How can I read a file using Python?"),
    ("How do I install Docker on Ubuntu?", "How can I install Docker on Ubuntu?"),
    (
        "What is the difference between a list and a tuple in Python?",
        "What's the difference between lists and tuples in Python?",
    ),
    ("How do I undo the last git commit?", "How can I undo my last git commit?"),
    ("How do I undo the last git commit?", "How do I revert the most recent git commit?"),
    ("What is the boiling point of water?", "At what temperature does water boil?"),
    ("How many continents are there?", "How many continents are there in the world?"),
    ("What is the speed of light?", "How fast is the speed of light?"),
    ("How do I make pancakes?", "How can I make pancakes?"),
    ("What is a good recipe for pancakes?", "Can you give me a good pancake recipe?"),
    ("How do I improve my sleep?", "How can I sleep better?"),
    ("What are the symptoms of the flu?", "What symptoms does the flu have?"),
    ("How do I center a div in CSS?", "How can I center a div with CSS?"),
    ("What does HTTP stand for?", "What is HTTP short for?"),
    ("Translate 'good morning' into Spanish.", "How do you say 'good morning' in Spanish?"),
    ("Summarize the plot of Romeo and Juliet.", "Give me a summary of the plot of Romeo and Juliet."),
    ("What is the population of Japan?", "How many people live in Japan?"),
    ("How do I upgrade my plan?", "How can I upgrade my plan?"),
    ("Is there a free trial?", "Do you offer a free trial?"),
    ("How do I enable two-factor authentication?", "How can I turn on two-factor authentication?"),
    ("Why is my internet slow?", "Why is my internet connection so slow?"),
]

#: Different questions that embed close: a semantic cache must never answer one with the other.
NEAR_MISSES: list[tuple[str, str]] = [
    ("What is the capital of France?", "What is the capital of Germany?"),
    ("What is the capital of Spain?", "What is the capital of Portugal?"),
    ("What is the population of Japan?", "What is the population of China?"),
    ("Who wrote Hamlet?", "Who wrote Macbeth?"),
    ("Who painted the Mona Lisa?", "Who painted the Sistine Chapel ceiling?"),
    ("How do I sort a list in Python?", "How do I sort a list in JavaScript?"),
    ("How do I read a file in Python?", "How do I write a file in Python?"),
    ("How do I install Docker on Ubuntu?", "How do I install Docker on Windows?"),
    ("How do I install Docker on Ubuntu?", "How do I uninstall Docker on Ubuntu?"),
    ("Convert 100 Celsius to Fahrenheit.", "Convert 100 Fahrenheit to Celsius."),
    ("Convert Celsius to Fahrenheit.", "Convert Fahrenheit to Celsius."),
    ("Translate 'good morning' into Spanish.", "Translate 'good morning' into French."),
    ("Translate 'good morning' into Spanish.", "Translate 'good night' into Spanish."),
    ("What is 12 + 7?", "What is 12 + 8?"),
    ("What is 15% of 200?", "What is 20% of 200?"),
    ("How many days are in February 2024?", "How many days are in February 2023?"),
    ("What was the GDP of Germany in 2019?", "What was the GDP of Germany in 2020?"),
    ("Is it safe to eat raw eggs?", "Is it not safe to eat raw eggs?"),
    ("Should I use tabs for indentation?", "Should I not use tabs for indentation?"),
    ("How do I cancel my subscription?", "How do I renew my subscription?"),
    ("How do I cancel my subscription?", "How do I pause my subscription?"),
    ("How do I delete my account?", "How do I create an account?"),
    ("How do I change my email address?", "How do I change my password?"),
    ("How do I upgrade my plan?", "How do I downgrade my plan?"),
    ("How do I enable two-factor authentication?", "How do I disable two-factor authentication?"),
    ("What are your opening hours on Monday?", "What are your opening hours on Sunday?"),
    ("Do you ship to Canada?", "Do you ship to Mexico?"),
    ("How long does shipping to Canada take?", "How much does shipping to Canada cost?"),
    ("What is the boiling point of water?", "What is the freezing point of water?"),
    ("What is the speed of light?", "What is the speed of sound?"),
    ("What are the symptoms of the flu?", "What are the symptoms of a cold?"),
    ("What are the symptoms of diabetes?", "What are the causes of diabetes?"),
    ("How do I center a div in CSS?", "How do I center text in CSS?"),
    ("What does HTTP stand for?", "What does HTTPS stand for?"),
    ("What does CPU stand for?", "What does GPU stand for?"),
    ("Summarize the plot of Romeo and Juliet.", "Summarize the plot of Hamlet."),
    ("What is the difference between TCP and UDP?", "What is the difference between HTTP and HTTPS?"),
    ("How do I make pancakes?", "How do I make waffles?"),
    ("How do I improve my sleep?", "How do I improve my memory?"),
    ("What is the tallest mountain in Europe?", "What is the tallest mountain in Africa?"),
    ("What is the largest planet in the solar system?", "What is the smallest planet in the solar system?"),
    ("Who was the first president of the United States?", "Who was the second president of the United States?"),
    ("When did World War I start?", "When did World War II start?"),
    ("When did World War II start?", "When did World War II end?"),
    ("How do I undo the last git commit?", "How do I amend the last git commit?"),
    ("How do I merge two branches in git?", "How do I delete a branch in git?"),
    ("What is the time complexity of quicksort?", "What is the time complexity of mergesort?"),
    ("What is the best programming language for beginners?", "What is the worst programming language for beginners?"),
    ("Why is my internet slow?", "Why is my computer slow?"),
    ("Can I get a refund?", "Can I get an invoice?"),
]


def cranfield_queries() -> tuple[list[str], dict[int, set[int]]]:
    """Cranfield's 225 queries (numbered 1..225 in file order, as `cranqrel` counts them) and the
    documents judged relevant to each."""
    base = next((p for p in CRANFIELD if p.exists()), None)
    if base is None:
        print("(Cranfield not found: no mined negatives)")
        return [], {}
    text = (base / "cran.qry").read_text()
    parts = re.split(r"^\.I \d+\s*\n\.W\s*\n", text, flags=re.M)[1:]
    queries = [" ".join(part.split()).rstrip(" .") + "?" for part in parts]
    relevant: dict[int, set[int]] = {}
    for line in (base / "cranqrel").read_text().splitlines():
        q, d, grade = (int(v) for v in line.split()[:3])
        if grade != -1:
            relevant.setdefault(q, set()).add(d)
    return queries, relevant


def cranfield_negatives(
    queries: list[str], relevant: dict[int, set[int]], vectors: np.ndarray, limit: int
) -> list[tuple[str, str]]:
    """The `limit` most similar pairs of queries whose relevant documents are disjoint."""
    sims = vectors @ vectors.T
    pairs = []
    for i in range(len(queries)):
        for j in range(i + 1, len(queries)):
            a, b = relevant.get(i + 1), relevant.get(j + 1)
            if a and b and not a & b:
                pairs.append((float(sims[i, j]), queries[i], queries[j]))
    pairs.sort(reverse=True)
    return [(a, b) for _, a, b in pairs[:limit]]


def precision(thresholds: list[float], cranfield_limit: int) -> dict[str, Any]:
    from meshgate.providers.base import CallContext, ProviderContext
    from meshgate.providers.local.embedding import PROVIDER, LocalEmbeddingConfig

    async def run() -> dict[str, Any]:
        data_dir = Path(tempfile.mkdtemp(prefix="meshgate-cache-bench-"))
        config = LocalEmbeddingConfig(name="local-embed", provider="local-embedding")
        model: Any = PROVIDER.factory(config, ProviderContext(data_dir=data_dir))
        await model.start()
        try:

            async def embed_all(texts: list[str]) -> np.ndarray:
                result = await model.embed(texts, CallContext(request_id="bench"))
                v = np.asarray(result.vectors, dtype=np.float32)
                return v / np.linalg.norm(v, axis=1, keepdims=True)

            loop_texts: dict[str, np.ndarray] = {}

            async def vectors_of(texts: list[str]) -> np.ndarray:
                missing = [t for t in dict.fromkeys(texts) if t not in loop_texts]
                for start in range(0, len(missing), 32):
                    batch = missing[start : start + 32]
                    for t, v in zip(batch, await embed_all(batch), strict=True):
                        loop_texts[t] = v
                return np.stack([loop_texts[t] for t in texts])

            queries, relevant = cranfield_queries()
            cran = cranfield_negatives(queries, relevant, await vectors_of(queries), cranfield_limit) if queries else []

            async def scored(pairs: list[tuple[str, str]]) -> list[tuple[float, bool]]:
                a = await vectors_of([p[0] for p in pairs])
                b = await vectors_of([p[1] for p in pairs])
                sims = (a * b).sum(axis=1)
                return [
                    (float(s), guards_compatible(guard_digest(x), guard_digest(y)))
                    for s, (x, y) in zip(sims, pairs, strict=True)
                ]

            positives = await scored(PARAPHRASES)
            negatives = await scored(NEAR_MISSES) + await scored(cran)
            hand_negatives = len(NEAR_MISSES)
        finally:
            await model.close()
        rows = []
        for t in thresholds:
            for guarded in (False, True):
                tp = sum(1 for s, g in positives if s >= t and (g or not guarded))
                fp = sum(1 for s, g in negatives if s >= t and (g or not guarded))
                fp_hand = sum(1 for s, g in negatives[:hand_negatives] if s >= t and (g or not guarded))
                rows.append(
                    {
                        "threshold": t,
                        "guard": guarded,
                        "precision": tp / (tp + fp) if tp + fp else 1.0,
                        "recall": tp / len(positives),
                        "false_hit_rate": fp / len(negatives),
                        "false_hits": fp,
                        "false_hits_hand": fp_hand,
                    }
                )
        worst = sorted(
            ((s, x, y) for (s, g), (x, y) in zip(negatives, NEAR_MISSES + cran, strict=True) if g), reverse=True
        )[:5]
        return {
            "paraphrases": len(positives),
            "near_misses": hand_negatives,
            "cranfield_negatives": len(cran),
            "rows": rows,
            "closest_negatives_passing_guard": [{"similarity": round(s, 4), "a": x, "b": y} for s, x, y in worst],
            "positive_similarity_median": statistics.median(s for s, _ in positives),
        }

    return asyncio.run(run())


WRK_MISS = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local n = 0
local id = tostring(math.random(1, 1000000000))
request = function()
  n = n + 1
  return wrk.format(nil, nil, nil, '{"model":"bench","temperature":0,"max_tokens":16,' ..
    '"messages":[{"role":"user","content":"question ' .. id .. ' ' .. n .. ' about caching"}]}')
end
"""

WRK_FIXED = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{body}'
"""


def _post(url: str, body: dict[str, Any]) -> dict[str, str]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()
        return dict(response.headers)


def latency(args: argparse.Namespace) -> list[dict[str, Any]]:
    from meshgate.testing.fake_openai import FakeOpenAI

    ensure_free(args.port)
    results: list[dict[str, Any]] = []
    redis_ok = False
    try:
        import redis

        redis_ok = bool(redis.Redis.from_url(args.redis_url).ping())
    except Exception:
        pass
    with FakeOpenAI() as fake, tempfile.TemporaryDirectory(prefix="meshgate-cache-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        setups = [("off", "sqlite", ""), ("exact", "sqlite", ""), ("exact", "memory", "")]
        if redis_ok:
            setups.append(("exact", "redis", args.redis_url))
        setups.append(("semantic", "sqlite", ""))
        for mode, backend, redis_url in setups:
            data = tmp / f"{mode}-{backend}"
            mesh = tmp / f"{mode}-{backend}.yaml"
            embed = "  - name: local-embed\n    provider: local-embedding\n" if mode == "semantic" else ""
            mesh.write_text(
                f"cache: {{mode: {mode}, backend: {backend}}}\nmodels:\n  - name: bench\n"
                f"    provider: openai-compatible\n    model: '{args.upstream}'\n    base_url: {fake.base_url}\n"
                "    price: {input: 2.5, output: 10.0}\n" + embed
            )
            if redis_url:
                import redis

                redis.Redis.from_url(redis_url).flushdb()
            env = {**os.environ, "MESHGATE_DATA_DIR": str(data)}
            command = [sys.executable, "-m", "meshgate", "serve", "--no-auth", "--port", str(args.port)]
            command += ["--config", str(mesh), "--log-level", "warning"]
            if redis_url:
                command += ["--redis-url", redis_url]
            server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
            try:
                url = f"http://127.0.0.1:{args.port}/v1/chat/completions"
                wait_http(f"http://127.0.0.1:{args.port}/readyz")
                stored = {
                    "model": "bench",
                    "temperature": 0,
                    "max_tokens": 16,
                    "messages": [{"role": "user", "content": "How do I reset my password?"}],
                }
                first = _post(url, stored)
                time.sleep(0.3)  # the store is written in the background
                runs: list[tuple[str, str]] = [("miss", WRK_MISS)]
                if mode != "off":
                    runs.append(("hit", WRK_FIXED.format(body=json.dumps(stored))))
                if mode == "semantic":
                    paraphrase = {**stored, "messages": [{"role": "user", "content": "How can I reset my password?"}]}
                    kind = _post(url, paraphrase).get("x-meshgate-cache")
                    assert kind == "semantic-hit", kind
                    runs.append(("semantic-hit", WRK_FIXED.format(body=json.dumps(paraphrase))))
                assert mode == "off" or first.get("x-meshgate-cache") == "miss", first
                for kind, script in runs:
                    path = tmp / "script.lua"
                    path.write_text(script)
                    for connections in args.connections:
                        rps, p50, p99, errors = wrk(url, path, connections, args.duration)
                        row = {
                            "mode": mode,
                            "backend": backend if mode != "off" else "-",
                            "result": kind if mode != "off" else "no cache",
                            "connections": connections,
                            "rps": round(rps, 1),
                            "p50_ms": round(p50, 2),
                            "p99_ms": round(p99, 2),
                            "errors": errors,
                        }
                        print(json.dumps(row), flush=True)
                        results.append(row)
            finally:
                for pid in reversed(process_tree(server.pid)):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, 15)
                server.wait(30)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["all", "latency", "precision"], default="all")
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=lambda v: [int(c) for c in v.split(",")], default=[1, 32])
    parser.add_argument("--upstream", default="slow:0.2", help="the fake upstream's model (slow:S, echo)")
    parser.add_argument("--port", type=int, default=18200)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument(
        "--thresholds",
        type=lambda v: [float(t) for t in v.split(",")],
        default=[0.8, 0.85, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98],
    )
    parser.add_argument("--cranfield-pairs", type=int, default=200)
    args = parser.parse_args()
    out: dict[str, Any] = {"when": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if args.part in ("all", "precision"):
        out["precision"] = precision(args.thresholds, args.cranfield_pairs)
        p = out["precision"]
        print(
            f"pairs: {p['paraphrases']} paraphrases, {p['near_misses']} near misses, "
            f"{p['cranfield_negatives']} Cranfield"
        )
        print("| threshold | guard | precision | recall | false-hit rate | false hits (hand / all) |")
        print("|---|---|---|---|---|---|")
        for r in p["rows"]:
            print(
                f"| {r['threshold']:.2f} | {'yes' if r['guard'] else 'no'} | {r['precision']:.3f} | {r['recall']:.3f} "
                f"| {r['false_hit_rate']:.3f} | {r['false_hits_hand']} / {r['false_hits']} |"
            )
        print("closest negatives passing the guard:", json.dumps(p["closest_negatives_passing_guard"], indent=1))
    if args.part in ("all", "latency"):
        out["latency"] = latency(args)
        print("| mode | backend | result | connections | req/s | p50 ms | p99 ms | errors |")
        print("|---|---|---|---|---|---|---|---|")
        for r in out["latency"]:
            print(
                f"| {r['mode']} | {r['backend']} | {r['result']} | {r['connections']} | {r['rps']} | {r['p50_ms']} "
                f"| {r['p99_ms']} | {r['errors']} |"
            )
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    path = results / f"cache-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
