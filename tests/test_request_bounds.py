"""Every numeric field is bounded at the API edge, `logit_bias` and `user` are validated before a call
(or a stream) starts, and max tokens are checked against the model's limits."""

from __future__ import annotations

import pytest

from meshgate.errors import InvalidRequest
from meshgate.gateway.capabilities import check_chat, check_embeddings
from meshgate.protocol import ChatCompletionRequest, EmbeddingRequest, UserMessage
from meshgate.providers.base import CapabilityProfile
from tests.conftest import AppClient
from tests.test_api_errors import assert_openai_error

CHAT = "/v1/chat/completions"
EMBED = "/v1/embeddings"
HUGE = 10**30
MSG = [{"role": "user", "content": "hi"}]


def chat(**fields: object) -> dict:
    return {"model": "bench", "messages": MSG, **fields}


BAD_LOGIT_BIAS = [
    {"abc": 1},
    {"-1": 1},
    {"1.5": 1},
    {" 7": 1},
    {"": 1},
    {"١٢": 1},  # digits, but not ASCII decimal ones
    {"99999999999999999999": 1},
    {"7": 101},
    {"7": -100.5},
    {str(token): 1 for token in range(301)},
]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("bias", BAD_LOGIT_BIAS)
async def test_bad_logit_bias_is_a_400_before_any_stream(proxy_client: AppClient, bias: dict, stream: bool) -> None:
    response = await proxy_client.http.post(CHAT, json=chat(logit_bias=bias, stream=stream))
    assert response.headers["content-type"].startswith("application/json")
    assert_openai_error(response, 400, param="logit_bias", code="invalid_value")


async def test_good_logit_bias_passes(proxy_client: AppClient) -> None:
    bias = {"50256": -100, "0": 100, "17": 2.5, **{str(token): 1 for token in range(1000, 1297)}}
    assert len(bias) == 300
    assert (await proxy_client.http.post(CHAT, json=chat(logit_bias=bias))).status_code == 200


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (CHAT, chat(max_tokens=HUGE), "max_tokens"),
        (CHAT, chat(max_tokens=2**31), "max_tokens"),
        (CHAT, chat(max_completion_tokens=HUGE), "max_completion_tokens"),
        (CHAT, chat(seed=2**63), "seed"),
        (CHAT, chat(seed=-(2**63) - 1), "seed"),
        (CHAT, chat(seed=HUGE), "seed"),
        (CHAT, chat(n=HUGE), "n"),
        (CHAT, chat(top_logprobs=HUGE, logprobs=True), "top_logprobs"),
        (CHAT, chat(user="u" * 65), "user"),
        (
            CHAT,
            {"model": "bench", "messages": [{"role": "assistant", "audio": {"id": "a", "expires_at": HUGE}}, *MSG]},
            "messages[0].audio.expires_at",
        ),
        (EMBED, {"model": "remote-embed", "input": "x", "dimensions": HUGE}, "dimensions"),
        (EMBED, {"model": "remote-embed", "input": [1, HUGE]}, "input[1]"),
        (EMBED, {"model": "remote-embed", "input": [1, -1]}, "input[1]"),
        (EMBED, {"model": "remote-embed", "input": [[1, 2], [3, HUGE]]}, "input[1][1]"),
        (EMBED, {"model": "remote-embed", "input": "x", "user": "u" * 65}, "user"),
    ],
)
async def test_numbers_out_of_range_are_a_400_naming_the_field(
    proxy_client: AppClient, path: str, body: dict, param: str
) -> None:
    assert_openai_error(await proxy_client.http.post(path, json=body), 400, param=param, code="invalid_value")


@pytest.mark.parametrize(
    "fields",
    [
        {"metadata": {f"k{i}": "v" for i in range(17)}},
        {"metadata": {"k" * 65: "v"}},
        {"metadata": {"k": "v" * 513}},
        {"safety_identifier": "s" * 65},
    ],
    ids=["17 pairs", "long key", "long value", "long safety_identifier"],
)
async def test_hint_strings_are_bounded_as_at_openai(proxy_client: AppClient, fields: dict) -> None:
    error = assert_openai_error(await proxy_client.http.post(CHAT, json=chat(**fields)), 400, code="invalid_value")
    assert error["param"].startswith(next(iter(fields)))
    largest = {
        "metadata": {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)},
        "safety_identifier": "s" * 64,
    }[next(iter(fields))]
    allowed = await proxy_client.http.post(CHAT, json=chat(**{next(iter(fields)): largest}))
    assert allowed.status_code == 200, allowed.text


async def test_bounds_admit_the_largest_legal_values(proxy_client: AppClient) -> None:
    body = chat(seed=2**63 - 1, user="u" * 64, max_tokens=2**31 - 1)
    assert (await proxy_client.http.post(CHAT, json=body)).status_code == 200
    assert (await proxy_client.http.post(CHAT, json=chat(seed=-(2**63)))).status_code == 200


def test_max_tokens_against_the_models_limits() -> None:
    request = ChatCompletionRequest(model="m", messages=[UserMessage(content="hi")], max_tokens=4097)
    with pytest.raises(InvalidRequest) as raised:
        check_chat(request, CapabilityProfile(chat=True, context_window=4096))
    assert raised.value.param == "max_tokens" and "4096" in raised.value.message
    assert raised.value.code == "context_length_exceeded"  # as the local model said it before
    check_chat(request, CapabilityProfile(chat=True, context_window=8192))
    request = ChatCompletionRequest(model="m", messages=[UserMessage(content="hi")], max_completion_tokens=9000)
    with pytest.raises(InvalidRequest) as raised:
        check_chat(request, CapabilityProfile(chat=True, context_window=8192, max_output_tokens=None))
    assert raised.value.param == "max_completion_tokens"
    with pytest.raises(InvalidRequest) as raised:
        check_chat(request, CapabilityProfile(chat=True, context_window=100_000, max_output_tokens=8192))
    assert raised.value.param == "max_completion_tokens"


def test_dimensions_against_the_models_vectors() -> None:
    profile = CapabilityProfile(embeddings=True, embedding_dimensions=8, embedding_shortening=True)
    check_embeddings(EmbeddingRequest(model="e", input="x", dimensions=4), profile)
    with pytest.raises(InvalidRequest) as raised:
        check_embeddings(EmbeddingRequest(model="e", input="x", dimensions=9), profile)
    assert raised.value.param == "dimensions"
