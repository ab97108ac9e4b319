"""The `cache:` block of mesh.yaml: a gateway-wide default and, per model, overrides of it.

```yaml
cache:
  mode: exact            # off | exact | semantic; the default for every model
  ttl: 1h                # 90s | 30m | 1h | 2d | seconds
models:
  - name: chat
    cache: {mode: semantic, threshold: 0.95}   # overrides only the fields it sets
```

This module imports nothing from meshgate, so the configuration loader can use it freely.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """ "90s", "30m", "1h", "2d", "250ms" or a number of seconds -> seconds (float)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 90s, 30m, 1h, 2d or a number of seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise ValueError(f"{value!r} is not a duration (write 90s, 30m, 1h, 2d or a number of seconds)")
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


class CacheConfig(BaseModel):
    """The effective cache configuration of one model (the default merged with its override)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["off", "exact", "semantic"] = "off"
    #: How long an answer is served from the cache, in seconds ("1h" in YAML).
    ttl: float = 3600.0
    #: Semantic mode: the cosine similarity over which the last user turn counts as the same question.
    threshold: float = Field(default=0.95, gt=0.0, le=1.0)
    #: Whose answers may be shared: every key of a team ("team") or only the calling key ("key").
    scope: Literal["team", "key"] = "team"
    #: The embedding model of the semantic mode (a model name of mesh.yaml).
    embedder: str = "local-embed"
    #: In-process backend bounds.
    max_entries: int = Field(default=10_000, gt=0)
    max_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    #: Cache also nondeterministic requests (temperature > 0 without a seed, n > 1).
    nondeterministic: bool = False
    #: Where entries live; read from the top-level block only (one store per gateway). `auto`:
    #: Redis when the `redis_url` setting is set, else SQLite (`<data dir>/cache.sqlite3`).
    backend: Literal["auto", "memory", "sqlite", "redis"] = "auto"
    #: SQLite backend, top-level block only: "on-hit" writes an entry to the file when it first
    #: serves a hit (and at a clean shutdown), holding it in process until then (bounded by
    #: `max_entries` / `max_bytes`); "always" writes every entry within about 50 ms.
    persist: Literal["on-hit", "always"] = "on-hit"

    @field_validator("mode", mode="before")
    @classmethod
    def _mode(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `off` as false: `mode: off` means what it says.
        return "off" if value is False else value

    @field_validator("ttl", mode="before")
    @classmethod
    def _ttl(cls, value: Any) -> float:
        return parse_duration(value)

    def merged(self, override: Mapping[str, Any] | CacheConfig | None) -> CacheConfig:
        """This config with the fields `override` sets replaced (a per-model block over the
        default); validated, so an unknown field or a bad value raises pydantic.ValidationError."""
        if override is None:
            return self
        if isinstance(override, CacheConfig):
            fields = override.model_dump(include=override.model_fields_set)
        else:
            fields = CacheConfig.model_validate(dict(override)).model_dump(include=set(override))
        return CacheConfig.model_validate({**self.model_dump(), **fields})

    @property
    def enabled(self) -> bool:
        return self.mode != "off"
