"""The cache step (ORDER_CACHE: after authorization, routing, limits, budgets and input guards; last
before the model).

before: decide whether the call may use the cache, look it up, and on a hit hand the stored answer
to the pipeline (`call.replay`), which serves it instead of calling the model. On a miss it asks the
pipeline to keep the fresh answer (`call.keep_answer`).
after: on a hit, the call cost nothing upstream (tokens and cost 0) and saved what the original
call cost; on a miss, a complete successful answer is stored, in the background.

Request headers: `Cache-Control: no-cache` skips the lookup (the answer is still stored);
`no-store` skips both; `x-meshgate-cache-ttl` shortens the entry's life; `x-meshgate-cache-scope:
key` narrows sharing to the calling key; `x-meshgate-cache-nondeterministic: true` opts a sampled
request in. Response header `x-meshgate-cache`: hit | semantic-hit | miss | bypass.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from meshgate.cache.backends import Candidates, Entry
from meshgate.cache.config import CacheConfig, parse_duration
from meshgate.cache.key import (
    Tenant,
    context_digest,
    deterministic,
    guard_digest,
    last_user_text,
    request_digest,
)
from meshgate.cache.semantic import best_match, embed
from meshgate.cache.service import ResponseCache, backend_for
from meshgate.errors import InvalidRequest, StartupError
from meshgate.gateway.pipeline import ORDER_CACHE, Call, Step
from meshgate.protocol import ChatCompletionRequest
from meshgate.providers.base import EmbeddingModel, Model

log = logging.getLogger("meshgate.cache")

RESULT_HEADER = "x-meshgate-cache"
TTL_HEADER = "x-meshgate-cache-ttl"
SCOPE_HEADER = "x-meshgate-cache-scope"
OPT_IN_HEADER = "x-meshgate-cache-nondeterministic"
DEPLOYMENT_HEADER = "x-meshgate-deployment"

#: The longest last user turn the semantic mode embeds (the embedder takes 256 tokens at most); it
#: also bounds the guard's work on the event loop.
MAX_SEMANTIC_CHARS = 2000

_PLAN = "cache.plan"
_HIT = "cache.hit"

_NOTHING: tuple[bytes | None, Candidates] = (None, Candidates())

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


@dataclass(slots=True)
class _Plan:
    """What `after` needs to store a miss."""

    tenant: Tenant
    entry_id: str
    ttl: float
    bucket: str | None = None
    guard: str = ""
    vector: np.ndarray | None = None


def _directives(value: str | None) -> set[str]:
    if not value:
        return set()
    return {part.strip().split("=", 1)[0].lower() for part in value.split(",")}


_NO_HEADERS: Mapping[str, str] = {}


def _cache_headers(headers: Mapping[str, str]) -> Mapping[str, str]:
    """`headers`, or an empty mapping when none of them speaks to the cache (most calls): one pass
    over the raw names instead of a scan of them per header the cache reads."""
    raw = getattr(headers, "raw", None)  # Starlette's Headers: lowercase names, as ASGI sends them
    if not isinstance(raw, list):
        return headers
    for name, _ in raw:
        if name == b"cache-control" or name.startswith(b"x-meshgate-cache"):
            return headers
    return _NO_HEADERS


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in ("1", "true", "yes", "on")


def _complete(answer: Any, stream: bool) -> bool:
    """Whether the answer ended normally (every choice finished): only those are stored."""
    if stream:
        if not isinstance(answer, list):
            return False
        return any(
            choice.get("finish_reason") for chunk in answer for choice in chunk.get("choices") or () if choice
        ) and not any("error" in chunk for chunk in answer)
    if not isinstance(answer, dict):
        return False
    choices = answer.get("choices") or []
    return bool(choices) and all(choice.get("finish_reason") for choice in choices)


class CacheStep(Step):
    name = "cache"
    order = ORDER_CACHE

    def __init__(
        self,
        cache_config_for: Callable[[str], CacheConfig],
        cache: ResponseCache,
        lookup: Callable[[str], Model | None],
    ) -> None:
        """`cache_config_for` and `lookup` (a model by name: the embedder) are read per call, so a
        reloaded mesh.yaml changes modes, thresholds and models of the running cache."""
        self.config_for = cache_config_for
        self.cache = cache
        self.lookup = lookup

    def check(self, names: Iterable[str]) -> None:
        """Every model in semantic mode has an embedding model to embed with (at startup)."""
        for name in names:
            config = self.config_for(name)
            if config.mode == "semantic" and not isinstance(self.lookup(config.embedder), EmbeddingModel):
                raise StartupError(
                    f"model `{name}`: cache mode semantic needs the embedding model `{config.embedder}` "
                    "(cache.embedder), which is not an embedding model of mesh.yaml"
                )

    async def before(self, call: Call) -> None:
        request = call.request
        if not isinstance(request, ChatCompletionRequest) or call.replay is not None:
            return  # an earlier step answered already (a grounded call that abstained)
        config = self.config_for(call.model_name)
        if config.mode == "off":
            return
        headers = _cache_headers(call.headers)
        directives = _directives(headers.get("cache-control"))
        if "no-store" in directives or not (
            config.nondeterministic or deterministic(request) or _truthy(headers.get(OPT_IN_HEADER))
        ):
            call.cache = call.response_headers[RESULT_HEADER] = "bypass"
            return
        ttl = config.ttl
        if (asked := headers.get(TTL_HEADER)) is not None:
            try:
                ttl = min(ttl, parse_duration(asked))
            except ValueError as exc:
                raise InvalidRequest(f"{TTL_HEADER}: {exc}", param=TTL_HEADER) from None
        principal = call.principal
        team = str(getattr(principal, "team", "") or "")
        key_id = str(getattr(principal, "key_id", "") or "")
        narrow = config.scope == "key" or (headers.get(SCOPE_HEADER) or "").strip().lower() == "key"
        tenant = Tenant(team, key_id if narrow else "", key_id)
        prefix = tenant.prefix(call.model_name)
        data_class = call.ctx.data_class
        plan = _Plan(tenant, f"{prefix}:{request_digest(request, call.stream, data_class)}", ttl)
        text = last_user_text(request) if config.mode == "semantic" else None
        if text is not None and len(text) > MAX_SEMANTIC_CHARS:
            text = None  # a document, not a question to paraphrase: exact only
        embedder = self.lookup(config.embedder) if text is not None else None
        if text is not None and isinstance(embedder, EmbeddingModel):
            plan.bucket = f"{prefix}:{context_digest(request, call.stream, data_class)}"
            plan.guard = guard_digest(text)
        look = "no-cache" not in directives
        try:
            value, candidates = await self.cache.backend.lookup(plan.entry_id, plan.bucket) if look else _NOTHING
            if value is not None:
                return self._hit(call, value, "hit")
            if plan.bucket is not None:
                assert text is not None and isinstance(embedder, EmbeddingModel)
                plan.vector = await embed(embedder, text, call.request_id)
                if look:
                    match = best_match(candidates, plan.vector, plan.guard, config.threshold)
                    if match is not None and (value := await self.cache.backend.get(match.entry_id)) is not None:
                        return self._hit(call, value, "semantic-hit")
        except Exception as exc:  # the cache never fails a call: it answers as if it were off
            log.warning("cache: lookup failed (%s: %s)", type(exc).__name__, exc)
            call.cache = call.response_headers[RESULT_HEADER] = "bypass"
            return
        call.cache = call.response_headers[RESULT_HEADER] = "miss" if look else "bypass"
        call.keep_answer = True
        call.notes[_PLAN] = plan

    def _hit(self, call: Call, value: bytes, kind: str) -> None:
        stored = _decode(value)
        body = stored["body"]
        # Replayed as a fresh answer: its own id and time; what it says is the stored answer's.
        fresh = {"id": f"chatcmpl-{call.request_id}", "created": int(time.time())}
        if isinstance(body, list):
            for chunk in body:
                chunk.update(fresh)
        else:
            body.update(fresh)
        call.replay = body
        call.cache = call.response_headers[RESULT_HEADER] = kind
        call.cache_hit = True
        call.notes[_HIT] = stored
        call.response_headers[DEPLOYMENT_HEADER] = stored.get("deployment") or "cache"
        call.ctx.prompt_tokens = int(stored.get("prompt_tokens") or 0)

    async def after(self, call: Call) -> None:
        if call.cache_hit:
            stored = call.notes.get(_HIT) or {}
            # Nothing went upstream: no tokens, no cost; the original call's cost was saved.
            if call.error is None:
                call.cost_saved_usd = float(stored.get("cost_usd") or 0.0)
            call.prompt_tokens = call.completion_tokens = 0
            call.cost_usd = 0.0
            return
        plan: _Plan | None = call.notes.pop(_PLAN, None)
        if plan is None or call.error is not None or call.status != 200 or not _complete(call.answer, call.stream):
            return
        now = time.time()
        value = _encode(
            {
                "body": call.answer,
                "deployment": call.ctx.deployment,
                "cost_usd": call.cost_usd,
                "prompt_tokens": call.prompt_tokens,
                "completion_tokens": call.completion_tokens,
                "created": now,
                # The knowledge-bank documents a grounded answer was built from (the knowledge
                # step's notes): `meshgate erase` removes the entries built from an erased document.
                "documents": (call.notes.get("knowledge") or {}).get("documents") or [],
            }
        )
        self.cache.store(
            Entry(
                id=plan.entry_id,
                value=value,
                team=plan.tenant.team,
                creator=plan.tenant.creator,
                model=call.model_name,
                created=now,
                expires=now + plan.ttl,
                bucket=plan.bucket if plan.vector is not None else None,
                vector=plan.vector.astype(np.float32).tobytes() if plan.vector is not None else None,
                guard=plan.guard,
            )
        )


def build_cache_step(
    cache_config_for: Callable[[str], CacheConfig],
    default: CacheConfig,
    models: Mapping[str, Model],
    lookup: Callable[[str], Model | None],
    data_dir: Path,
    redis_url: str = "",
) -> CacheStep | None:
    """The cache step, or None when no model caches at startup (then the pipeline does no cache work
    at all; turning the cache on for the first time takes a restart). `default` (the top-level
    block) picks the backend and bounds the in-process one."""
    if not any(cache_config_for(name).enabled for name in models):
        return None
    step = CacheStep(cache_config_for, ResponseCache(backend_for(default, data_dir, redis_url)), lookup)
    step.check(models)
    return step
