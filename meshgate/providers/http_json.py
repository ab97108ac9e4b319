"""What the providers that speak JSON over HTTP to a remote API share (anthropic, gemini, cohere).

`HttpUpstreamConfig` checks `base_url`; `JsonUpstream` owns the model's aiohttp session (one per
model, its connection limit and timeouts from the config), posts JSON, iterates an SSE response as
(event, data) pairs, maps transport failures to typed errors (a timeout is a 504, anything else a
502); `retry_after` reads Retry-After; `ChunkTranslator` builds the OpenAI chunks of one stream.
Each provider keeps its own request and answer translation and its error mapping by status.
"""

from __future__ import annotations

import asyncio
import math
import time
from abc import abstractmethod
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

import aiohttp
from pydantic import SecretStr, field_validator

from meshgate.errors import MeshError, UpstreamError, UpstreamTimeout
from meshgate.providers import connectors
from meshgate.providers.base import (
    CallContext,
    CapabilityProfile,
    Model,
    ModelConfig,
    ProviderContext,
    chunk_dict,
    new_completion_id,
)


class HttpUpstreamConfig(ModelConfig):
    """The checks of a remote JSON API's config; each provider declares the fields, with its own defaults."""

    if TYPE_CHECKING:  # declared by each provider, in its own place in mesh.yaml's documentation
        model: str
        api_key: SecretStr
        base_url: str
        timeout: float | None
        connect_timeout: float
        read_timeout: float
        max_connections: int

    @field_validator("base_url", check_fields=False)
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")


def parse_retry_after(value: str | None) -> int:
    """Whole seconds (at least 1) from a Retry-After value in seconds; 1 when it is missing or bad."""
    try:
        seconds = float(value) if value is not None else 1.0
    except ValueError:
        return 1
    return max(1, math.ceil(seconds)) if math.isfinite(seconds) else 1


def retry_after(headers: Any) -> int:
    return parse_retry_after(headers.get("retry-after") if headers is not None else None)


class JsonUpstream(Model):
    """A model served by a remote JSON API over one aiohttp session."""

    config: HttpUpstreamConfig
    headers: dict[str, str]

    def __init__(self, config: HttpUpstreamConfig, profile: CapabilityProfile, context: ProviderContext) -> None:
        super().__init__(config, profile)
        self.total_timeout = config.timeout or context.request_timeout
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        # The pool is shared with the other models calling the same origin (connectors.py).
        self.session = connectors.session(
            self.config.base_url,
            self.config.max_connections,
            aiohttp.ClientTimeout(
                total=self.total_timeout, sock_connect=self.config.connect_timeout, sock_read=self.config.read_timeout
            ),
        )

    async def close(self) -> None:
        if self.session is not None:
            await connectors.close(self.session)
            self.session = None

    def describe(self) -> dict[str, Any]:
        return {"upstream_model": self.config.model}

    def _transport_error(self, exc: BaseException) -> MeshError:
        if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
            return UpstreamTimeout(f"The upstream of `{self.name}` did not answer in time", provider=self.provider)
        if isinstance(exc, aiohttp.ClientConnectorError):
            return UpstreamError(
                f"The upstream of `{self.name}` is unreachable at {self.config.base_url}", provider=self.provider
            )
        return UpstreamError(
            f"The connection to the upstream of `{self.name}` failed: {type(exc).__name__}", provider=self.provider
        )

    @abstractmethod
    async def _status_error(self, response: aiohttp.ClientResponse) -> MeshError:
        """The typed error for an answer of HTTP status 400 or more."""

    async def post_json(self, url: str, payload: dict[str, Any]) -> bytes:
        """The body of a successful answer to `payload` POSTed to `url`; failures raise typed errors."""
        assert self.session is not None, "start() first"
        try:
            async with self.session.post(url, json=payload, headers=self.headers) as response:
                if response.status >= 400:
                    raise await self._status_error(response)
                return await response.read()
        except MeshError:
            raise
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._transport_error(exc) from None

    async def sse_events(
        self, url: str, payload: dict[str, Any], headers: dict[str, str] | None = None, *, last_unended: bool = True
    ) -> AsyncGenerator[tuple[str, str], None]:
        """The (event, data) pairs of the SSE answer to `payload` POSTed to `url`.

        `last_unended` passes on a last event the stream ends without its blank line. Close the
        iterator (contextlib.aclosing) when leaving it early, so that the response closes then.
        """
        assert self.session is not None, "start() first"
        try:
            async with self.session.post(url, json=payload, headers=headers or self.headers) as response:
                if response.status >= 400:
                    raise await self._status_error(response)
                event = ""
                data: list[str] = []
                async for raw in response.content:
                    line = raw.decode("utf-8").rstrip("\r\n")
                    if line:
                        field, _, value = line.partition(":")
                        value = value[1:] if value.startswith(" ") else value
                        if field == "event":
                            event = value
                        elif field == "data":
                            data.append(value)
                        continue
                    if data:
                        yield event, "\n".join(data)
                    event, data = "", []
                if data and last_unended:
                    yield event, "\n".join(data)
        except MeshError:
            raise
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._transport_error(exc) from None


class ChunkTranslator:
    """The state every stream translator has: the chunk id, its creation time, the call to report to."""

    def __init__(self, name: str, call: CallContext) -> None:
        self.name = name
        self.call = call
        self.id = new_completion_id()
        self.created = int(time.time())

    def _chunk(self, delta: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
        return chunk_dict(self.id, self.name, self.created, delta, **extra)
