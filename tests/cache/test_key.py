"""Cache keys: what changes them, what does not, and what is deterministic enough to cache."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from pydantic import ValidationError

from meshgate.cache.config import CacheConfig, parse_duration
from meshgate.cache.key import (
    Tenant,
    context_digest,
    deterministic,
    guard_digest,
    guards_compatible,
    last_user_text,
    request_digest,
)
from meshgate.protocol import ChatCompletionRequest

BASE: dict[str, Any] = {
    "model": "bench",
    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is HTTP?"}],
    "temperature": 0,
}


def req(**changes: Any) -> ChatCompletionRequest:
    return msgspec.json.decode(json.dumps({**BASE, **changes}).encode(), type=ChatCompletionRequest)


def key(**changes: Any) -> str:
    return request_digest(req(**changes), stream=False)


TOOL = {
    "type": "function",
    "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "string"}}}},
}

#: Every sampling parameter (and everything else that shapes the answer) with a non-default value.
CHANGES: list[dict[str, Any]] = [
    {"model": "other"},
    {"messages": [{"role": "user", "content": "What is HTTP?"}]},
    {"messages": [{"role": "system", "content": "Be long."}, {"role": "user", "content": "What is HTTP?"}]},
    {"temperature": 0.5},
    {"top_p": 0.9},
    {"seed": 7},
    {"n": 2},
    {"stop": ["\n"]},
    {"max_tokens": 10},
    {"max_completion_tokens": 10},
    {"presence_penalty": 0.5},
    {"frequency_penalty": 0.5},
    {"logit_bias": {"42": 3}},
    {"logprobs": True},
    {"logprobs": True, "top_logprobs": 2},
    {"response_format": {"type": "json_object"}},
    {"tools": [TOOL]},
    {"tools": [TOOL], "tool_choice": "required"},
    {"tools": [TOOL], "parallel_tool_calls": False},
    {"reasoning_effort": "low"},
    {"verbosity": "low"},
    {"modalities": ["text"]},
]


@pytest.mark.parametrize("change", CHANGES, ids=lambda c: ",".join(c))
def test_every_parameter_that_shapes_the_answer_changes_the_key(change: dict[str, Any]) -> None:
    assert key(**change) != key()


def test_streaming_and_not_are_separate_entries() -> None:
    assert request_digest(req(), stream=True) != request_digest(req(), stream=False)


@pytest.mark.parametrize(
    "change",
    [
        {"user": "alice"},
        {"stream_options": {"include_usage": True}},
        {"metadata": {"a": "b"}},
        {"store": True},
        {"safety_identifier": "x"},
        {"service_tier": "flex"},
        {"prompt_cache_key": "k"},
    ],
    ids=lambda c: ",".join(c),
)
def test_fields_that_do_not_change_the_answer_leave_the_key(change: dict[str, Any]) -> None:
    assert key(**change) == key()


def test_field_order_does_not_change_the_key() -> None:
    body = {**BASE, "tools": [TOOL], "top_p": 0.5}
    reordered = dict(reversed(list(body.items())))
    schema = TOOL["function"]["parameters"]
    reordered["tools"] = [
        {"function": {"parameters": dict(reversed(list(schema.items()))), "name": "f"}, "type": "function"}
    ]
    a = msgspec.json.decode(json.dumps(body).encode(), type=ChatCompletionRequest)
    b = msgspec.json.decode(json.dumps(reordered).encode(), type=ChatCompletionRequest)
    assert request_digest(a, False) == request_digest(b, False)


def test_deterministic_requests() -> None:
    assert deterministic(req(temperature=0))
    assert deterministic(req(temperature=0.8, seed=1))
    assert deterministic(req(temperature=0, n=1))
    assert not deterministic(req(temperature=0.8))
    assert not deterministic(req(temperature=None))
    assert not deterministic(req(temperature=0, n=3))


def test_semantic_context_ignores_only_the_last_user_turn() -> None:
    a = req(messages=[{"role": "system", "content": "S"}, {"role": "user", "content": "one"}])
    b = req(messages=[{"role": "system", "content": "S"}, {"role": "user", "content": "two"}])
    c = req(messages=[{"role": "system", "content": "T"}, {"role": "user", "content": "one"}])
    assert context_digest(a, False) == context_digest(b, False) != context_digest(c, False)
    assert context_digest(a, False) != context_digest(req(**{**BASE, "tools": [TOOL]}), False)
    assert last_user_text(a) == "one"
    tool_turn = req(
        messages=[
            {"role": "user", "content": "hi"},
            {"role": "assistant", "tool_calls": [{"id": "1", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "1", "content": "42"},
        ]
    )
    assert last_user_text(tool_turn) is None


def test_guard_separates_numbers_negations_and_word_order() -> None:
    def compatible(a: str, b: str) -> bool:
        return guards_compatible(guard_digest(a), guard_digest(b))

    assert not compatible("What is 12 + 7?", "What is 12 + 8?")
    assert not compatible("Is it safe?", "Is it not safe?")
    assert not compatible("Convert Celsius to Fahrenheit.", "Convert Fahrenheit to Celsius.")
    assert compatible("Is it safe to do?", "Would doing it be safe?")
    assert compatible("What is 12 + 7?", "what is 12 + 7")
    assert compatible("Isn't it safe?", "Is it not safe?")


def test_tenants_prefix_by_team_scope_and_model() -> None:
    a, b = Tenant("a", "", "k1"), Tenant("b", "", "k1")
    assert a.prefix("m") != b.prefix("m")
    assert a.prefix("m") == Tenant("a", "", "k2").prefix("m")  # team scope: shared by its keys
    assert Tenant("a", "k1", "k1").prefix("m") != Tenant("a", "k2", "k2").prefix("m")
    assert a.prefix("m") != a.prefix("n")


def test_config_durations_and_override() -> None:
    assert [parse_duration(v) for v in ("90s", "30m", "1h", "2d", 45, "1.5h")] == [90, 1800, 3600, 172800, 45, 5400]
    default = CacheConfig(mode="exact", ttl="1h")
    merged = default.merged({"mode": "semantic", "threshold": 0.9})
    assert (merged.mode, merged.ttl, merged.threshold) == ("semantic", 3600, 0.9)
    assert default.merged(None) is default
    with pytest.raises(ValidationError):
        CacheConfig.model_validate({"mode": "exact", "ttl": "soon"})
    with pytest.raises(ValidationError):
        default.merged({"threshold": 1.5})
    with pytest.raises(ValidationError):
        default.merged({"colour": "red"})
