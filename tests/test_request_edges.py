"""Edges of a request: a client that hangs up mid-body, oversized headers, very long echoed values."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from meshgate.app import MAX_HEADER_BYTES, MAX_HEADER_COUNT
from tests.conftest import AppClient


def _error(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text[:300]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert error["type"] == "invalid_request_error"
    return dict(error)


async def test_a_client_hanging_up_mid_body_is_a_499_logged_at_info(
    proxy_client: AppClient, proxy_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    counters = proxy_client.runtime.counters
    internal, gone = counters.errors[(500, "internal")], counters.errors[(499, "client_disconnected")]
    port = int(proxy_url.rsplit(":", 1)[1])
    caplog.set_level(logging.INFO)
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: meshgate\r\ncontent-type: application/json\r\n"
        + f"authorization: Bearer {proxy_client.key}\r\ncontent-length: 50000\r\n\r\n".encode()
        + b'{"model": "bench", "messages": ['
    )
    await writer.drain()
    await asyncio.sleep(0.2)  # the app is reading the body now
    writer.close()
    for _ in range(100):
        if counters.errors[(499, "client_disconnected")] > gone:
            break
        await asyncio.sleep(0.05)
    assert counters.errors[(499, "client_disconnected")] == gone + 1
    assert counters.errors[(500, "internal")] == internal
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
    assert not [r for r in caplog.records if r.exc_info]
    scraped = proxy_client.runtime.metrics.render().decode()
    assert 'meshgate_http_errors_total{kind="client_disconnected",status="499"}' in scraped


async def test_a_long_model_name_is_clipped_in_the_error_and_the_log(
    proxy_client: AppClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    name = "m" * 60_000  # the body limit of this client is 64 KiB
    response = await proxy_client.http.post(
        "/v1/chat/completions", json={"model": name, "messages": [{"role": "user", "content": "hi"}]}
    )
    error = _error(response, 404, "model_not_found")
    message = str(error["message"])
    assert len(message) < 1000 and "more characters" in message and message.startswith("The model `mmm")
    assert len(response.content) < 2000
    lines = [r.getMessage() for r in caplog.records]
    assert any("model_not_found" in line for line in lines)
    assert max(len(line) for line in lines) < 2000


async def test_too_many_headers_get_a_431(proxy_client: AppClient) -> None:
    headers = {f"x-extra-{i}": "1" for i in range(MAX_HEADER_COUNT + 1)}
    response = await proxy_client.http.get("/v1/models", headers=headers)
    _error(response, 431, "request_header_fields_too_large")
    assert response.headers["x-request-id"].startswith("req_")
    assert (await proxy_client.http.get("/v1/models", headers=dict(list(headers.items())[:20]))).status_code == 200


async def test_a_huge_header_gets_a_431_before_authentication(proxy_client: AppClient) -> None:
    counters = proxy_client.runtime.counters
    before = counters.errors[(431, "headers_too_large")]
    async with httpx.AsyncClient(transport=proxy_client.http._transport, base_url="http://meshgate.test") as anonymous:
        response = await anonymous.get("/v1/models", headers={"x-big": "a" * (MAX_HEADER_BYTES + 1)})
    _error(response, 431, "request_header_fields_too_large")
    assert counters.errors[(431, "headers_too_large")] == before + 1


async def test_caps_hold_behind_a_real_uvicorn_socket(proxy_client: AppClient, proxy_url: str) -> None:
    auth = {"authorization": f"Bearer {proxy_client.key}"}
    async with httpx.AsyncClient(base_url=proxy_url, timeout=30) as http:
        big = await http.get("/v1/models", headers={**auth, "x-big": "a" * 2_000_000})
        _error(big, 431, "request_header_fields_too_large")
        many = await http.get("/v1/models", headers=[*auth.items(), *((f"x-h{i}", "1") for i in range(5000))])
        _error(many, 431, "request_header_fields_too_large")
        assert (await http.get("/v1/models", headers=auth)).status_code == 200
