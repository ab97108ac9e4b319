"""Grounded answers from a knowledge bank, through `meshgate serve`: abstention and answer quality.

    python bench/knowledge_answers.py                  # calibrate, then 80 + 80 test questions with the local model
    python bench/knowledge_answers.py --answers 10     # fewer model calls (a smoke run)

XQuAD-en (48 articles, 240 paragraphs, 1,190 questions): the bank holds the paragraphs of every
other article (the even positions in file order: 24 articles, 120 paragraphs, one document each).
A question about an article in the bank should be answered; a question about one outside it should
abstain. Articles are split once more: the first 12 in file order are the **calibration** articles,
the other 36 the **test** articles. Nothing is tuned on the test articles:

1. Calibration: every question of the calibration articles is asked with `min_evidence: 1.0` (every
   call abstains, so the model is not called) and the `x-meshgate-evidence` header is read; the
   threshold that best separates covered from uncovered questions (highest F1 of "abstain" against
   "the article is not in the bank") is chosen.
2. Test: 80 covered and 80 uncovered questions of the test articles (`random.Random(15)`) are asked
   with that threshold through `local-chat` (greedy, at most 64 tokens); reported: abstention
   precision and recall (positive = abstained, truth = not covered), and token F1 (SQuAD
   normalisation, citation markers removed) of the covered questions that were answered, against
   the gold answers; the share of answers citing the gold paragraph.

Progress on stderr, a markdown table on stdout, everything in bench/results/knowledge-answers-*.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from harness import ensure_free, start_meshgate, stop_all
from local_quality import DATA, best_over, f1_score

PORT = 18093
CALIBRATION_ARTICLES = 12
SEED = 15
MARKER = re.compile(r"\s*\[\d{1,2}\]")


def load(path: Path) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads(path.read_text())["data"]
    return data


def ingest(client: httpx.Client, articles: list[dict[str, Any]]) -> dict[str, str]:
    """Create the bank and put each paragraph of the bank's articles in it; source -> (article, paragraph)."""
    response = client.post("/v1/banks", json={"name": "xquad", "description": "XQuAD-en, every other article"})
    response.raise_for_status()
    documents = []
    for a, article in enumerate(articles):
        if a % 2:
            continue
        for p, paragraph in enumerate(article["paragraphs"]):
            documents.append({"text": paragraph["context"], "title": article["title"], "source": f"xquad/{a}/{p}"})
    started = time.monotonic()
    for start in range(0, len(documents), 40):
        client.post("/v1/banks/xquad/documents", json={"documents": documents[start : start + 40]}).raise_for_status()
    print(f"ingested {len(documents)} paragraphs in {time.monotonic() - started:.1f} s", file=sys.stderr)
    return {d["source"]: d["text"] for d in documents}


def questions(articles: list[dict[str, Any]], which: range) -> list[dict[str, Any]]:
    found = []
    for a in which:
        for p, paragraph in enumerate(articles[a]["paragraphs"]):
            for qa in paragraph["qas"]:
                found.append(
                    {
                        "article": a,
                        "paragraph": p,
                        "covered": a % 2 == 0,
                        "question": qa["question"],
                        "answers": [x["text"] for x in qa["answers"]],
                    }
                )
    return found


def ask(client: httpx.Client, question: str, min_evidence: float, max_tokens: int) -> tuple[dict[str, Any], float]:
    response = client.post(
        "/v1/chat/completions",
        json={
            "model": "local-chat",
            "messages": [{"role": "user", "content": question}],
            "temperature": 0,
            "max_tokens": max_tokens,
            "knowledge": {"banks": ["xquad"], "top_k": 3, "min_evidence": min_evidence},
        },
        timeout=300,
    )
    response.raise_for_status()
    return response.json(), float(response.headers.get("x-meshgate-evidence", "0"))


def choose_threshold(scored: list[tuple[float, bool]]) -> tuple[float, float]:
    """The evidence threshold with the best F1 of abstaining on uncovered questions."""
    best = (0.0, 0.0)
    for candidate in sorted({round(s, 3) for s, _ in scored}):
        abstain = [(s < candidate, not covered) for s, covered in scored]
        tp = sum(1 for a, truth in abstain if a and truth)
        fp = sum(1 for a, truth in abstain if a and not truth)
        fn = sum(1 for a, truth in abstain if not a and truth)
        f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        if f1 > best[1]:
            best = (candidate, f1)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--answers", type=int, default=80, help="Test questions of each kind (covered, uncovered).")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--port", type=int, default=PORT)
    args = parser.parse_args()
    ensure_free(args.port)
    articles = load(args.data)
    data_dir = Path(tempfile.mkdtemp(prefix="meshgate-bench-answers-"))
    env = {**os.environ, "MESHGATE_DATA_DIR": str(data_dir)}
    server = start_meshgate(env, args.port, "--no-auth")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{args.port}", timeout=120) as client:
            ingest(client, articles)
            calibration = questions(articles, range(CALIBRATION_ARTICLES))
            scored = []
            for q in calibration:
                _, evidence = ask(client, q["question"], 1.0, 1)
                scored.append((evidence, q["covered"]))
            threshold, calibration_f1 = choose_threshold(scored)
            print(
                f"calibration: {len(scored)} questions, threshold {threshold} (F1 {calibration_f1:.3f})",
                file=sys.stderr,
            )
            test = questions(articles, range(CALIBRATION_ARTICLES, len(articles)))
            rng = random.Random(SEED)
            covered = rng.sample([q for q in test if q["covered"]], args.answers)
            uncovered = rng.sample([q for q in test if not q["covered"]], args.answers)
            results = []
            started = time.monotonic()
            for n, q in enumerate(covered + uncovered, 1):
                body, evidence = ask(client, q["question"], threshold, args.max_tokens)
                text = str(body["choices"][0]["message"]["content"] or "")
                cited = {c["source"] for c in body.get("citations") or ()}
                results.append(
                    {
                        **q,
                        "answer": text,
                        "abstained": bool(body.get("abstained")),
                        "evidence": evidence,
                        "f1": best_over(f1_score, MARKER.sub("", text), q["answers"]),
                        "cites_gold": f"xquad/{q['article']}/{q['paragraph']}" in cited,
                    }
                )
                if n % 10 == 0:
                    print(
                        f"  {n}/{len(covered) + len(uncovered)} in {time.monotonic() - started:.0f} s", file=sys.stderr
                    )
    finally:
        stop_all([server])
        shutil.rmtree(data_dir, ignore_errors=True)
    tp = sum(1 for r in results if r["abstained"] and not r["covered"])
    fp = sum(1 for r in results if r["abstained"] and r["covered"])
    fn = sum(1 for r in results if not r["abstained"] and not r["covered"])
    answered = [r for r in results if r["covered"] and not r["abstained"]]
    summary = {
        "threshold": threshold,
        "calibration_questions": len(scored),
        "calibration_f1": round(calibration_f1, 4),
        "abstention_precision": round(tp / (tp + fp), 4) if tp + fp else None,
        "abstention_recall": round(tp / (tp + fn), 4) if tp + fn else None,
        "answered_covered": len(answered),
        "answer_f1": round(sum(r["f1"] for r in answered) / len(answered), 4) if answered else None,
        "cites_gold": round(sum(r["cites_gold"] for r in answered) / len(answered), 4) if answered else None,
    }
    out = Path(__file__).parent / "results" / f"knowledge-answers-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "results": results}, indent=2))
    print(
        "| threshold (chosen on calibration articles) | abstention precision | abstention recall "
        "| answered (covered) | token F1 of answers | answers citing the gold paragraph |"
    )
    print("|---|---|---|---|---|---|")
    print(
        f"| {threshold} | {summary['abstention_precision']} | {summary['abstention_recall']} | "
        f"{len(answered)}/{len(covered)} | {summary['answer_f1']} | {summary['cites_gold']} |"
    )
    print(f"results: {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
