"""Grounded answers: the prompt that hands a model its numbered sources, the evidence that decides
abstention, and the citations the answer carries.

Evidence (0..1) of a retrieved chunk for a question = the mean of the chunk's cosine similarity to
the question (the embedder's) and the share of the question's content words found in the chunk.
A question whose best chunk scores under `min_evidence` is not answered from the bank (abstained),
and the model is not asked. The default threshold was chosen on XQuAD questions outside the
benchmark's test articles (bench/knowledge_answers.py says how).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from meshgate.knowledge.index.base import Hit
from meshgate.knowledge.text import STOP_WORDS

#: Chosen by bench/knowledge_answers.py on the 322 questions of its 12 calibration articles (none
#: of the test articles): 0.384 separated covered from uncovered questions best (F1 0.990).
#: mesh.yaml `knowledge.min_evidence` or the request's `knowledge.min_evidence` change it.
DEFAULT_MIN_EVIDENCE = 0.38

ABSTENTION = "I cannot answer that from the knowledge bank: its documents do not cover it."
#: What the model is told to say when its sources do not hold the answer; seen in an answer, the
#: response is marked abstained too.
MODEL_ABSTENTION = "I cannot answer that from the knowledge bank."

#: Written for small local models too: a 0.5B model told only to "cite [n]" often answers with the
#: bare marker; asked for one sentence that states the answer, with an example, it does both (tried
#: on six questions of the calibration articles: token F1 0.21 against 0.04 for the plain wording).
SYSTEM_PROMPT = (
    "You answer questions from documents: the numbered sources below. Write one short sentence that "
    "gives the answer in words, followed by the source number in square brackets, for example: "
    '"Flights are booked through the portal [1]." Never answer with only a number. If the sources '
    f'do not contain the answer, reply exactly: "{MODEL_ABSTENTION}"'
)

_WORD = re.compile(r"[A-Za-z0-9]+(?:'[A-Za-z]+)?")
_MARKER = re.compile(r"\[(\d{1,2})\]")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
QUOTE_CHARS = 300


def content_words(text: str) -> set[str]:
    """Lower-cased words that carry meaning, cut to their first 6 letters (a cheap stem)."""
    return {w.lower()[:6] for w in _WORD.findall(text) if w.lower() not in STOP_WORDS}


def coverage(question: str, text: str) -> float:
    asked = content_words(question)
    if not asked:
        return 0.0
    return len(asked & content_words(text)) / len(asked)


@dataclass(frozen=True)
class Source:
    """One retrieved chunk as the answer uses it: its number, the hit and its evidence."""

    number: int
    hit: Hit
    evidence: float
    bank: str


def evidence(question: str, hit: Hit, similarity: float | None) -> float:
    cos = max(0.0, min(1.0, similarity if similarity is not None else 0.0))
    return round(0.5 * cos + 0.5 * coverage(question, hit.chunk.text), 4)


def sources_prompt(sources: list[Source]) -> str:
    lines = [SYSTEM_PROMPT, "", "Sources:"]
    for source in sources:
        chunk = source.hit.chunk
        where = f", page {chunk.page}" if chunk.page else (f", {chunk.section}" if chunk.section else "")
        text = " ".join(chunk.text.split())
        lines.append(f"[{source.number}] ({chunk.title}{where}) {text}")
    return "\n".join(lines)


def cited_numbers(answer: str, count: int) -> list[int]:
    """The source numbers an answer cites, in order of first mention (numbers out of range dropped)."""
    seen: list[int] = []
    for match in _MARKER.finditer(answer):
        number = int(match.group(1))
        if 1 <= number <= count and number not in seen:
            seen.append(number)
    return seen


def best_source(answer: str, sources: list[Source]) -> int | None:
    """For an answer without markers: the source whose words it shares most (None if none)."""
    words = content_words(answer)
    if not words or not sources:
        return None
    scored = [(len(words & content_words(s.hit.chunk.text)), -s.number, s.number) for s in sources]
    best = max(scored)
    return best[2] if best[0] > 0 else None


def quote(chunk_text: str, answer: str) -> str:
    """The sentence of the chunk that shares most words with the answer, clipped."""
    sentences = [s.strip() for s in _SENTENCE.split(chunk_text) if s.strip()] or [chunk_text.strip()]
    words = content_words(answer)
    best = max(sentences, key=lambda s: len(words & content_words(s))) if words else sentences[0]
    best = " ".join(best.split())
    return best if len(best) <= QUOTE_CHARS else best[: QUOTE_CHARS - 3].rstrip() + "..."


def citations(answer: str, sources: list[Source], numbers: list[int]) -> list[dict[str, Any]]:
    by_number = {s.number: s for s in sources}
    result = []
    for number in numbers:
        source = by_number[number]
        chunk = source.hit.chunk
        result.append(
            {
                "index": number,
                "bank": source.bank,
                **chunk.where(),
                "quote": quote(chunk.text, answer),
                "score": source.evidence,
            }
        )
    return result


def says_it_cannot_answer(answer: str) -> bool:
    text = " ".join(answer.split()).lower()
    return MODEL_ABSTENTION.lower().rstrip(".") in text or text.startswith("i cannot answer")
