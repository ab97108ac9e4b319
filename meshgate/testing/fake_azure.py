"""A fake Azure OpenAI resource on loopback: the fake OpenAI upstream behind Azure's URLs and auth.

`POST /openai/deployments/{deployment}/chat/completions?api-version=...` (and `/embeddings`) with
the resource key in `api-key` or an Entra token as `Authorization: Bearer`. A missing api-version
is a 404 as Azure answers it, a wrong credential a 401 with Azure's error body. What passes is
answered by fake_openai's handlers, whose behaviours the body's `model` picks (see there); a 429
carries `Retry-After: 7`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from meshgate.testing.fake_openai import FakeOpenAI, FakeState, build_fake_app


class AppServedFake(FakeOpenAI):
    """FakeOpenAI's background-thread server serving the app that `_app()` builds."""

    def _app(self) -> web.Application:
        return build_fake_app(self.state)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        runner = web.AppRunner(self._app(), handle_signals=False, access_log=None)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, self.host, self.port)
        loop.run_until_complete(site.start())
        server = getattr(site, "_server", None)
        if self.port == 0 and server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]
        self._runner = runner
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()


@dataclass
class AzureCall:
    deployment: str
    operation: str
    query: dict[str, str]
    headers: dict[str, str]


@dataclass
class AzureState:
    api_key: str | None = None
    entra_token: str | None = None
    calls: list[AzureCall] = field(default_factory=list)


def _azure_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def build_fake_azure_app(state: FakeState, azure: AzureState) -> web.Application:
    app = build_fake_app(state)
    openai_handlers: dict[str, Any] = {}
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        if route.method == "POST" and info.get("path") in ("/v1/chat/completions", "/v1/embeddings"):
            openai_handlers[str(info["path"]).rsplit("/", 1)[1]] = route.handler

    def handler(operation: str) -> Any:
        async def azure_handler(request: web.Request) -> web.StreamResponse:
            deployment = request.match_info["deployment"]
            azure.calls.append(AzureCall(deployment, operation, dict(request.query), dict(request.headers)))
            if "api-version" not in request.query:
                return _azure_error(404, "404", "Resource not found")
            key, bearer = request.headers.get("api-key"), request.headers.get("authorization")
            allowed = (azure.api_key is not None and key == azure.api_key) or (
                azure.entra_token is not None and bearer == f"Bearer {azure.entra_token}"
            )
            if not allowed:
                return _azure_error(
                    401,
                    "401",
                    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide "
                    "a valid key for an active subscription and use a correct regional API endpoint for your "
                    "resource.",
                )
            response: web.StreamResponse = await openai_handlers[operation](request)
            if response.status == 429 and not response.prepared:
                response.headers["retry-after"] = "7"  # Azure says when to come back
            return response

        return azure_handler

    app.router.add_post("/openai/deployments/{deployment}/chat/completions", handler("completions"))
    app.router.add_post("/openai/deployments/{deployment}/embeddings", handler("embeddings"))
    return app


class FakeAzure(AppServedFake):
    """`with FakeAzure(api_key=..., entra_token=...) as fake: fake.endpoint`."""

    def __init__(self, api_key: str | None = None, entra_token: str | None = None) -> None:
        super().__init__()
        self.azure = AzureState(api_key=api_key, entra_token=entra_token)

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def calls(self) -> list[AzureCall]:
        return self.azure.calls

    def _app(self) -> web.Application:
        return build_fake_azure_app(self.state, self.azure)
