"""Chunk-index backends by name: `build_index(kind, options, data_dir)` with the options of mesh.yaml's
`knowledge.indexes.<kind>`. Backends are imported only when built, so pymilvus (and its gRPC stack)
loads only in a deployment that uses Milvus."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from meshgate.errors import ConfigError
from meshgate.knowledge.index.base import ChunkIndex

INDEX_KINDS = ("embedded", "milvus", "pgvector", "pinecone")

#: Options each kind accepts: required ones, then optional ones.
_OPTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "embedded": ((), ("path",)),
    "milvus": (("uri",), ("token", "collection_prefix", "index_type")),
    "pgvector": (("url",), ("max_scan_tuples", "ef_search")),
    "pinecone": (("host", "api_key"), ("namespace_prefix", "max_retries", "timeout", "stats_ttl")),
}


def _checked(kind: str, options: Mapping[str, Any]) -> dict[str, Any]:
    where = f"knowledge.indexes.{kind}"
    required, optional = _OPTIONS[kind]
    unknown = sorted(set(options) - set(required) - set(optional))
    if unknown:
        allowed = ", ".join([*required, *optional]) or "none"
        raise ConfigError(f"{where}.{unknown[0]}: unknown option (allowed: {allowed})")
    for name in required:
        value = options.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise ConfigError(f"{where}.{name}: required for the {kind} index")
    return dict(options)


def _embedded(options: dict[str, Any], data_dir: Path) -> ChunkIndex:
    from meshgate.knowledge.index.embedded import EmbeddedIndex

    path = Path(options["path"]) if options.get("path") else data_dir / "knowledge" / "index.sqlite"
    return EmbeddedIndex(path)


def _milvus(options: dict[str, Any], data_dir: Path) -> ChunkIndex:
    from meshgate.knowledge.index.milvus import MilvusIndex

    return MilvusIndex(
        str(options["uri"]),
        token=options.get("token"),
        collection_prefix=str(options.get("collection_prefix", "meshgate_")),
        index_type=str(options.get("index_type", "AUTOINDEX")),
    )


def _pgvector(options: dict[str, Any], data_dir: Path) -> ChunkIndex:
    from meshgate.knowledge.index.pgvector import PgVectorIndex

    return PgVectorIndex(
        str(options["url"]),
        max_scan_tuples=int(options.get("max_scan_tuples", 100_000)),
        ef_search=int(options.get("ef_search", 100)),
    )


def _pinecone(options: dict[str, Any], data_dir: Path) -> ChunkIndex:
    from meshgate.knowledge.index.pinecone import PineconeIndex

    extra: dict[str, Any] = {}
    if "max_retries" in options:
        extra["max_retries"] = int(options["max_retries"])
    for name in ("timeout", "stats_ttl"):
        if name in options:
            extra[name] = float(options[name])
    return PineconeIndex(
        str(options["host"]),
        str(options["api_key"]),
        namespace_prefix=str(options.get("namespace_prefix", "")),
        **extra,
    )


_BUILDERS: dict[str, Callable[[dict[str, Any], Path], ChunkIndex]] = {
    "embedded": _embedded,
    "milvus": _milvus,
    "pgvector": _pgvector,
    "pinecone": _pinecone,
}


def build_index(kind: str, options: Mapping[str, Any], data_dir: Path) -> ChunkIndex:
    """The (unopened) chunk index of this kind; ConfigError for an unknown kind or a missing option."""
    if kind not in _BUILDERS:
        raise ConfigError(f"knowledge index `{kind}`: unknown kind (one of: {', '.join(INDEX_KINDS)})")
    checked = _checked(kind, options or {})
    try:
        return _BUILDERS[kind](checked, Path(data_dir))
    except (TypeError, ValueError) as exc:  # an option of the wrong type (int("many"))
        raise ConfigError(f"knowledge.indexes.{kind}: {exc}") from None
    except ImportError as exc:
        raise ConfigError(
            f"knowledge index `{kind}` needs a package that is not installed ({exc.name}): {exc}"
        ) from None
