"""bench/local_quality.py's prompt registry and selection split: what keeps prompt choice off the sample.

No model runs here: the requests go to an `httpx.MockTransport` that answers with a fixed stream.
"""

from __future__ import annotations

import importlib
import json
import random
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def quality() -> Any:
    # bench scripts import their siblings (`harness`) as top-level modules.
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module("local_quality")
    finally:
        sys.path.remove(str(BENCH))


def synthetic(quality: Any, count: int) -> list[Any]:
    return [quality.Question(f"q{i}", "t", f"context {i}", f"question {i}?", [f"answer {i}"]) for i in range(count)]


def test_span_cue_is_the_prompt_the_first_sample_run_used(quality: Any) -> None:
    # The 0.531 row of bench/README.md was measured with exactly these texts.
    messages = quality.PROMPTS["span-cue"].messages("The cape.", "Where?")
    assert messages == [
        {
            "role": "system",
            "content": "You extract answers from a text. Output only the answer: the few words of the context "
            "that answer the question, copied exactly. Never write a sentence.",
        },
        {"role": "user", "content": "Context:\nThe cape.\n\nQuestion: Where?\nShortest answer span:"},
    ]
    assert quality.PROMPTS["span-cue"].extras == {}


def test_default_prompt_is_registered(quality: Any) -> None:
    assert quality.DEFAULT_PROMPT in quality.PROMPTS


def test_every_prompt_carries_the_context_and_the_question_once(quality: Any) -> None:
    for name, prompt in quality.PROMPTS.items():
        text = "\n".join(m["content"] for m in prompt.messages("CONTEXT-TEXT {braces}", "QUESTION-TEXT?"))
        assert text.count("CONTEXT-TEXT {braces}") == 1, name
        assert text.count("QUESTION-TEXT?") == 1, name


def test_context_in_system_puts_the_paragraph_in_the_system_message(quality: Any) -> None:
    system, user = quality.PROMPTS["context-in-system"].messages("The cape.", "Where?")
    assert "The cape." in system["content"] and "The cape." not in user["content"]
    assert "Where?" in user["content"]


def test_selection_split_leaves_out_the_sample_and_the_earlier_choice(quality: Any) -> None:
    questions = synthetic(quality, 400)
    in_sample = {q.id for q in quality.sample(questions, 7)}
    others = [q for q in questions if q.id not in in_sample]
    earlier = {q.id for q in random.Random(11).sample(others, 150)}
    split = quality.selection_split(questions, 7)
    ids = [q.id for q in split]
    assert len(ids) == len(set(ids)) == 400 - 200 - 150
    assert not set(ids) & in_sample and not set(ids) & earlier
    assert [q.id for q in quality.selection_split(questions, 7)] == ids  # reproducible
    assert ids != sorted(ids, key=lambda i: int(i[1:]))  # shuffled, not file order


def test_selection_split_follows_the_sample_seed(quality: Any) -> None:
    questions = synthetic(quality, 400)
    for seed in (7, 2026):
        in_sample = {q.id for q in quality.sample(questions, seed)}
        assert not {q.id for q in quality.selection_split(questions, seed)} & in_sample


def test_on_xquad_the_selection_split_has_840_questions_none_of_the_sample(quality: Any) -> None:
    if not quality.DATA.is_file():
        pytest.skip(f"{quality.DATA} missing (XQuAD-en, github.com/deepmind/xquad)")
    questions = quality.load_questions(quality.DATA)
    split = quality.selection_split(questions, quality.SEED)
    assert len(split) == 1190 - 200 - 150
    assert not {q.id for q in split} & {q.id for q in quality.sample(questions, quality.SEED)}


def stream_of(*pieces: str) -> bytes:
    chunks = [{"choices": [{"delta": {"content": piece}, "finish_reason": None}]} for piece in pieces]
    chunks.append({"choices": [{"delta": {}, "finish_reason": "stop"}]})
    chunks.append({"choices": [], "usage": {"prompt_tokens": 40, "completion_tokens": len(pieces)}})
    return ("".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks) + "data: [DONE]\n\n").encode()


def test_ask_sends_the_prompt_and_its_extras_and_scores_the_answer(quality: Any) -> None:
    sent: list[dict[str, Any]] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(200, content=stream_of("in ", "1874."), headers={"content-type": "text/event-stream"})

    client = httpx.Client(transport=httpx.MockTransport(upstream), base_url="http://test/v1")
    question = quality.Question("x", "t", "Built in 1874.", "When?", ["1874"])
    result = quality.ask(client, "local-chat", quality.PROMPTS["span-cue-stop-newline"], question, 48)
    assert sent[0]["stop"] == ["\n"] and sent[0]["temperature"] == 0 and sent[0]["max_tokens"] == 48
    assert sent[0]["messages"] == quality.PROMPTS["span-cue-stop-newline"].messages("Built in 1874.", "When?")
    assert result.error is None and result.prediction == "in 1874."
    assert result.em == 0.0 and result.f1 == pytest.approx(2 / 3)


def test_extras_cannot_override_the_measured_settings(quality: Any) -> None:
    sent: list[dict[str, Any]] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(200, content=stream_of("1874"), headers={"content-type": "text/event-stream"})

    client = httpx.Client(transport=httpx.MockTransport(upstream), base_url="http://test/v1")
    greedy_breaker = quality.Prompt("s {context}", "u {question}", {"temperature": 1.0, "stop": ["."]})
    result = quality.ask(client, "local-chat", greedy_breaker, quality.Question("x", "t", "c", "q", ["1874"]), 8)
    assert sent[0]["temperature"] == 0 and sent[0]["stop"] == ["."]
    assert result.em == 1.0
