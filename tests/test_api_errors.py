"""Bad input gets a precise error in OpenAI's schema, is counted, and never leaks internals."""

from __future__ import annotations

import json

import pytest

from tests.broken_provider import SECRET_DETAIL
from tests.conftest import AppClient

CHAT = "/v1/chat/completions"


def assert_openai_error(response, status: int, *, param: str | None = None, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    assert response.headers["x-request-id"].startswith("req_")
    return error


async def test_malformed_json(proxy_client: AppClient) -> None:
    response = await proxy_client.http.post(
        CHAT, content=b'{"model": "bench", "messages": [', headers={"content-type": "application/json"}
    )
    error = assert_openai_error(response, 400, code="invalid_json")
    assert "parse the JSON body" in error["message"]


async def test_empty_body(proxy_client: AppClient) -> None:
    response = await proxy_client.http.post(CHAT, content=b"", headers={"content-type": "application/json"})
    assert_openai_error(response, 400, code="invalid_json")


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "model", "missing_required_parameter"),
        ({"model": "bench"}, "messages", "missing_required_parameter"),
        ({"model": "bench", "messages": []}, "messages", "invalid_value"),
        (
            {"model": "bench", "messages": [{"role": "user", "content": 5}]},
            "messages[0].content",
            "invalid_value",
        ),
        (
            {"model": "bench", "messages": [{"role": "wizard", "content": "x"}]},
            "messages[0].role",
            "invalid_value",
        ),
        (
            {"model": "bench", "messages": [{"role": "user", "content": "x"}], "temperature": 3},
            "temperature",
            "invalid_value",
        ),
        (
            {"model": "bench", "messages": [{"role": "user", "content": "x"}], "max_tokens": "ten"},
            "max_tokens",
            "invalid_value",
        ),
        (
            {"model": "bench", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
            "max_tokens",
            "invalid_value",
        ),
        (
            {"model": "bench", "messages": [{"role": "user", "content": "x"}], "frobnicate": True},
            "frobnicate",
            "unknown_parameter",
        ),
        (
            {"model": "bench", "messages": [{"role": "user", "content": [{"type": "text", "txt": "x"}]}]},
            "messages[0].content[0].txt",
            "unknown_parameter",
        ),
    ],
)
async def test_schema_violations_name_the_field(proxy_client: AppClient, body: dict, param: str, code: str) -> None:
    response = await proxy_client.http.post(CHAT, json=body)
    error = assert_openai_error(response, 400, param=param, code=code)
    assert param.split(".")[-1].split("[")[0] in error["message"]


async def test_not_an_object(proxy_client: AppClient) -> None:
    response = await proxy_client.http.post(CHAT, json=[1, 2])
    assert_openai_error(response, 400, code="invalid_body")


async def test_unknown_model_is_404(proxy_client: AppClient) -> None:
    response = await proxy_client.http.post(
        CHAT, json={"model": "nope", "messages": [{"role": "user", "content": "x"}]}
    )
    error = assert_openai_error(response, 404, param="model", code="model_not_found")
    assert "`nope`" in error["message"]
    response = await proxy_client.http.get("/v1/models/nope")
    assert_openai_error(response, 404, code="model_not_found")


async def test_embedding_model_on_chat_route(proxy_client: AppClient) -> None:
    response = await proxy_client.http.post(
        CHAT, json={"model": "remote-embed", "messages": [{"role": "user", "content": "x"}]}
    )
    assert_openai_error(response, 400, param="model", code="model_not_supported")


async def test_oversized_body_is_413(proxy_client: AppClient) -> None:
    big = "x" * (70 * 1024)
    response = await proxy_client.http.post(
        CHAT, json={"model": "bench", "messages": [{"role": "user", "content": big}]}
    )
    assert_openai_error(response, 413, code="request_too_large")


async def test_oversized_chunked_body_is_413(proxy_client: AppClient) -> None:
    async def chunks():
        yield b'{"model": "bench", "messages": [{"role": "user", "content": "'
        for _ in range(100):
            yield b"y" * 1024
        yield b'"}]}'

    response = await proxy_client.http.post(CHAT, content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    assert_openai_error(response, 413)


async def test_wrong_content_type_is_415(proxy_client: AppClient) -> None:
    response = await proxy_client.http.post(
        CHAT, content=b"model=bench", headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert_openai_error(response, 415)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
    ],
)
async def test_unsupported_parameters_are_400_not_ignored(proxy_client: AppClient, extra: dict, param: str) -> None:
    body = {"model": "bench", "messages": [{"role": "user", "content": "hi"}], **extra}
    if param == "tools":
        body["model"] = "broken"  # a profile without tools
    response = await proxy_client.http.post(CHAT, json=body)
    assert_openai_error(response, 400, param=param, code="unsupported_parameter")


async def test_image_for_text_model_is_400(proxy_client: AppClient) -> None:
    body = {
        "model": "bench",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            }
        ],
    }
    response = await proxy_client.http.post(CHAT, json=body)
    error = assert_openai_error(response, 400, param="messages[0].content[1]", code="unsupported_parameter")
    assert "image" in error["message"]


async def test_unknown_route_and_method(proxy_client: AppClient) -> None:
    assert_openai_error(await proxy_client.http.get("/v1/nothing-here"), 404)
    assert_openai_error(await proxy_client.http.get(CHAT), 405)


async def test_internal_error_never_leaks(proxy_client: AppClient) -> None:
    response = await proxy_client.http.post(
        CHAT, json={"model": "broken", "messages": [{"role": "user", "content": "x"}]}
    )
    error = assert_openai_error(response, 500)
    assert SECRET_DETAIL not in response.text
    assert "Traceback" not in response.text
    assert response.headers["x-request-id"] in error["message"]


async def test_internal_error_mid_stream_is_an_error_event(proxy_client: AppClient) -> None:
    body = {"model": "broken", "messages": [{"role": "user", "content": "x"}], "stream": True}
    async with proxy_client.http.stream("POST", CHAT, json=body) as response:
        assert response.status_code == 200
        lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
    assert SECRET_DETAIL not in "".join(lines)
    assert json.loads(lines[0][6:])["choices"][0]["delta"]["content"] == "partial"
    assert json.loads(lines[-1][6:])["error"]["type"] == "server_error"
    assert "data: [DONE]" not in lines


async def test_errors_are_counted(proxy_client: AppClient) -> None:
    counters = proxy_client.app.state.counters
    before = counters.errors[(404, "model_not_found")]
    await proxy_client.http.post(CHAT, json={"model": "nope", "messages": [{"role": "user", "content": "x"}]})
    assert counters.errors[(404, "model_not_found")] == before + 1


async def test_every_response_has_a_request_id(proxy_client: AppClient) -> None:
    ids = set()
    for path in ("/healthz", "/v1/models", "/openapi.json", "/nope"):
        response = await proxy_client.http.get(path)
        ids.add(response.headers["x-request-id"])
    assert len(ids) == 4
