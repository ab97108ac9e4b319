"""Property-based: any JSON value in any field of a chat or embeddings request is answered without a
500, in OpenAI's error schema when refused. The field list comes from the request structs, so a
field added later is fuzzed too."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshgate.api.anthropic_translate import MessagesRequest
from meshgate.api.responses_api import ResponsesRequest
from meshgate.protocol import ChatCompletionRequest, EmbeddingRequest
from meshgate.testing.fake_openai import FakeOpenAI
from tests.conftest import UPSTREAM_KEY, make_runtime, served_in_thread, upstream_models_yaml

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)

CHAT_FIELDS = sorted(f.name for f in msgspec.structs.fields(ChatCompletionRequest) if f.name != "model")
EMBED_FIELDS = sorted(f.name for f in msgspec.structs.fields(EmbeddingRequest) if f.name != "model")
MESSAGES_FIELDS = sorted(f.name for f in msgspec.structs.fields(MessagesRequest) if f.name != "model")
RESPONSES_FIELDS = sorted(f.name for f in msgspec.structs.fields(ResponsesRequest) if f.name != "model")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """The app (upstream models only) served by uvicorn in a thread of its own, so that a plain
    synchronous hypothesis test can call it."""
    with FakeOpenAI(required_key=UPSTREAM_KEY) as fake:
        runtime = make_runtime(tmp_path_factory.mktemp("fuzz-fields"), upstream_models_yaml(fake.base_url), auth=False)
        with served_in_thread(runtime) as url, httpx.Client(base_url=url, timeout=30) as client:
            yield client


def check(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text[:500]
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(CHAT_FIELDS), value=JSON)
def test_any_value_in_any_chat_field(server: httpx.Client, name: str, value: Any) -> None:
    body: dict[str, Any] = {"model": "bench", "messages": [{"role": "user", "content": "hi"}], name: value}
    check(server.post("/v1/chat/completions", json=body))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(EMBED_FIELDS), value=JSON)
def test_any_value_in_any_embeddings_field(server: httpx.Client, name: str, value: Any) -> None:
    body: dict[str, Any] = {"model": "remote-embed", "input": "hi", name: value}
    check(server.post("/v1/embeddings", json=body))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(message=st.dictionaries(st.sampled_from(["role", "content", "name", "tool_calls", "tool_call_id"]), JSON))
def test_any_message_shape(server: httpx.Client, message: dict[str, Any]) -> None:
    check(server.post("/v1/chat/completions", json={"model": "bench", "messages": [message]}))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(MESSAGES_FIELDS), value=JSON)
def test_any_value_in_any_anthropic_messages_field(server: httpx.Client, name: str, value: Any) -> None:
    body: dict[str, Any] = {"model": "bench", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    response = server.post("/v1/messages", json={**body, name: value})
    assert response.status_code < 500, response.text[:500]
    if response.status_code >= 400:
        error = response.json()
        assert error["type"] == "error" and set(error["error"]) == {"type", "message"}, error


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(RESPONSES_FIELDS), value=JSON)
def test_any_value_in_any_responses_field(server: httpx.Client, name: str, value: Any) -> None:
    check(server.post("/v1/responses", json={"model": "bench", "input": "hi", name: value}))
