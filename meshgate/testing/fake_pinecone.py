"""A fake Pinecone index (data plane): a real HTTP server on loopback, for tests.

It speaks the wire format of Pinecone's data-plane REST API (version 2025-10, as its OpenAPI and the
protobuf definitions of the official clients describe it): JSON in camelCase, the key in `Api-Key`,
the version in `X-Pinecone-API-Version`, and errors as `{"code": <gRPC code>, "message", "details": []}`.

    POST   /vectors/upsert            {vectors: [{id, values, sparseValues, metadata}], namespace} -> {upsertedCount}
    POST   /query                     {namespace, topK, filter, includeValues, includeMetadata, vector,
                                       sparseVector, id} -> {matches: [{id, score, values, metadata}], namespace, usage}
    POST   /vectors/delete            {ids | deleteAll | filter, namespace} -> {}
    GET    /vectors/fetch             ?ids=..&ids=..&namespace= -> {vectors: {id: record}, namespace, usage}
    POST   /vectors/fetch_by_metadata {namespace, filter, limit, paginationToken}
                                      -> {vectors, namespace, usage, pagination}
    GET    /vectors/list              ?namespace=&prefix=&limit=&paginationToken=
                                      -> {vectors: [{id}], pagination, namespace, usage}
    POST   /describe_index_stats      {filter} -> {namespaces: {ns: {vectorCount}}, dimension, indexFullness,
                                       totalVectorCount, metric, vectorType}
    DELETE /namespaces/{namespace}    -> {} (404 when the namespace does not exist)

One index of a fixed `dimension` and `metric` (`dotproduct` takes sparse values, as on Pinecone).
Filters: `$eq $ne $gt $gte $lt $lte $in $nin $exists $and $or`; a bare value means `$eq`; a list
metadata value matches `$eq`/`$in` when any element does and `$ne`/`$nin` when none does; a record
without the field matches only `$ne`, `$nin` and `$exists: false`. Metadata values are strings,
numbers, booleans or lists of strings (no null, no objects), at most 40 KB per record.

Errors: 401 without the right key, 400 for a body the API rejects (unknown fields, wrong types or
dimensions, bad filters, topK out of range), 404 for an unknown namespace on delete. `fail_next`
makes the next requests answer a given status (429, 5xx) with Pinecone's error body.
Writes are visible at once (real Pinecone is eventually consistent).
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from meshgate.testing.fake_server import FakeServer

API_VERSION = "2025-10"
DEFAULT_NAMESPACE = "__default__"
MAX_METADATA_BYTES = 40960
MAX_TOP_K = 10000
MAX_TOP_K_WITH_DATA = 1000
MAX_UPSERT = 1000
MAX_SPARSE = 2048
#: gRPC status codes of Pinecone's error bodies, by HTTP status.
GRPC_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 409: 6, 429: 8, 500: 2, 502: 14, 503: 14, 504: 4}

UPSERT_FIELDS = {"vectors", "namespace"}
VECTOR_FIELDS = {"id", "values", "sparseValues", "metadata"}
QUERY_FIELDS = {
    "namespace",
    "topK",
    "filter",
    "includeValues",
    "includeMetadata",
    "vector",
    "sparseVector",
    "id",
    "queries",
    "scanFactor",
    "maxCandidates",
}
DELETE_FIELDS = {"ids", "deleteAll", "namespace", "filter"}
FETCH_BY_METADATA_FIELDS = {"namespace", "filter", "limit", "paginationToken"}
STATS_FIELDS = {"filter"}
COMPARISONS = {"$gt", "$gte", "$lt", "$lte"}
OPERATORS = {"$eq", "$ne", "$in", "$nin", "$exists", *COMPARISONS}


class BadRequest(Exception):
    pass


@dataclass
class Record:
    id: str
    values: list[float]
    sparse: dict[str, list[Any]] | None
    metadata: dict[str, Any]

    def as_json(self, values: bool = True, metadata: bool = True) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.id}
        if values:
            body["values"] = self.values
            if self.sparse is not None:
                body["sparseValues"] = self.sparse
        if metadata and self.metadata:
            body["metadata"] = self.metadata
        return body


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    query: list[tuple[str, str]] = field(default_factory=list)


# -- filters -----------------------------------------------------------------------------------


def _scalar(value: Any) -> bool:
    return isinstance(value, str | bool) or (isinstance(value, int | float) and math.isfinite(value))


def validate_filter(flt: Any) -> None:
    """Raise BadRequest for a filter Pinecone would reject."""
    if not isinstance(flt, dict):
        raise BadRequest("Invalid filter: the filter must be a JSON object")
    for key, condition in flt.items():
        if key in ("$and", "$or"):
            if not isinstance(condition, list) or not condition:
                raise BadRequest(f"Invalid filter: {key} takes a non-empty array of filters")
            for part in condition:
                validate_filter(part)
        elif key.startswith("$"):
            raise BadRequest(f"Invalid filter: unknown operator {key} at the top level")
        elif isinstance(condition, dict):
            if not condition:
                raise BadRequest(f"Invalid filter: empty condition for field {key}")
            for operator, operand in condition.items():
                if operator not in OPERATORS:
                    raise BadRequest(f"Invalid filter: unknown operator {operator} for field {key}")
                if operator in ("$in", "$nin"):
                    if not isinstance(operand, list) or not all(_scalar(item) for item in operand):
                        raise BadRequest(f"Invalid filter: {operator} takes an array of strings, numbers or booleans")
                    if len(operand) > 10000:
                        raise BadRequest(f"Invalid filter: {operator} takes at most 10000 values")
                elif operator == "$exists":
                    if not isinstance(operand, bool):
                        raise BadRequest("Invalid filter: $exists takes a boolean")
                elif operator in COMPARISONS:
                    if isinstance(operand, bool) or not isinstance(operand, int | float):
                        raise BadRequest(f"Invalid filter: {operator} takes a number")
                elif not _scalar(operand):
                    raise BadRequest(f"Invalid filter: {operator} takes a string, number or boolean")
        elif not _scalar(condition):
            raise BadRequest(f"Invalid filter: the value of field {key} must be a string, number or boolean")


_MISSING = object()


def _condition(value: Any, operator: str, operand: Any) -> bool:
    if operator == "$exists":
        return bool((value is not _MISSING) == operand)
    if value is _MISSING:
        return operator in ("$ne", "$nin")
    items = value if isinstance(value, list) else [value]
    if operator == "$eq":
        return operand in items
    if operator == "$ne":
        return operand not in items
    if operator == "$in":
        return any(item in operand for item in items)
    if operator == "$nin":
        return not any(item in operand for item in items)
    numbers = [item for item in items if isinstance(item, int | float) and not isinstance(item, bool)]
    if operator == "$gt":
        return any(item > operand for item in numbers)
    if operator == "$gte":
        return any(item >= operand for item in numbers)
    if operator == "$lt":
        return any(item < operand for item in numbers)
    return any(item <= operand for item in numbers)  # $lte


def filter_matches(metadata: Mapping[str, Any], flt: Mapping[str, Any] | None) -> bool:
    """Whether a record's metadata passes a (validated) Pinecone filter."""
    if not flt:
        return True
    for key, condition in flt.items():
        if key == "$and":
            if not all(filter_matches(metadata, part) for part in condition):
                return False
        elif key == "$or":
            if not any(filter_matches(metadata, part) for part in condition):
                return False
        else:
            conditions = condition if isinstance(condition, dict) else {"$eq": condition}
            value = metadata.get(key, _MISSING)
            if not all(_condition(value, operator, operand) for operator, operand in conditions.items()):
                return False
    return True


# -- the server --------------------------------------------------------------------------------


class FakePinecone(FakeServer):
    """`with FakePinecone(dimension=8, api_key="pc-test") as fake: fake.base_url`."""

    thread_name = "fake-pinecone"

    def __init__(self, dimension: int, api_key: str = "pc-test-key", metric: str = "dotproduct") -> None:
        super().__init__(required_key=api_key)
        self.dimension, self.metric = dimension, metric
        self.namespaces: dict[str, dict[str, Record]] = {}
        self.failures: list[tuple[int, float | None]] = []

    def fail_next(self, status: int, times: int = 1, retry_after: float | None = None) -> None:
        """Answer the next `times` requests with `status` (and a Retry-After header when given)."""
        self.failures.extend([(status, retry_after)] * times)

    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=4 * 1024 * 1024)
        app.router.add_post("/vectors/upsert", self.upsert)
        app.router.add_post("/query", self.query)
        app.router.add_post("/vectors/delete", self.delete)
        app.router.add_get("/vectors/fetch", self.fetch)
        app.router.add_post("/vectors/fetch_by_metadata", self.fetch_by_metadata)
        app.router.add_get("/vectors/list", self.list_ids)
        app.router.add_post("/describe_index_stats", self.stats)
        app.router.add_get("/describe_index_stats", self.stats)
        app.router.add_delete("/namespaces/{namespace}", self.delete_namespace)
        return app

    @staticmethod
    def error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
        body = {"code": GRPC_CODES.get(status, 2), "message": message, "details": []}
        return web.json_response(body, status=status, headers=headers)

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        raw = await request.read()
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = _INVALID
        self.state.requests.append(
            Recorded(request.method, request.path, dict(request.headers), body, list(request.query.items()))
        )
        if request.headers.get("Api-Key") != self.state.required_key:
            return self.error(401, "Invalid API Key")
        if self.failures:
            status, retry_after = self.failures.pop(0)
            headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
            message = "Too many requests. Please retry shortly." if status == 429 else "Internal error"
            return self.error(status, message, headers)
        if body is _INVALID:
            return self.error(400, "Failed to deserialize the JSON body into the target type")
        try:
            return await handler(request)
        except BadRequest as exc:
            return self.error(400, str(exc))

    # -- helpers -------------------------------------------------------------------------------

    @staticmethod
    async def _body(request: web.Request) -> Any:
        """The request's JSON body (the middleware checked it parses; aiohttp caches the bytes)."""
        raw = await request.read()
        return json.loads(raw) if raw else {}

    @staticmethod
    def _fields(body: Any, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise BadRequest("Failed to deserialize the JSON body into the target type: expected an object")
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise BadRequest(f"Failed to deserialize the JSON body into the target type: unknown field `{unknown[0]}`")
        return body

    @staticmethod
    def _namespace(value: Any) -> str:
        if value is None or value == "":
            return DEFAULT_NAMESPACE
        if not isinstance(value, str):
            raise BadRequest("namespace must be a string")
        return value

    def _dense(self, values: Any, what: str) -> list[float]:
        if not isinstance(values, list) or not all(
            isinstance(item, int | float) and not isinstance(item, bool) for item in values
        ):
            raise BadRequest(f"{what} must be an array of numbers")
        if len(values) != self.dimension:
            raise BadRequest(
                f"Vector dimension {len(values)} does not match the dimension of the index {self.dimension}"
            )
        return [float(item) for item in values]

    def _sparse(self, value: Any) -> dict[str, list[Any]]:
        if self.metric != "dotproduct":
            raise BadRequest("Sparse values are supported only for indexes using the dotproduct metric")
        if not isinstance(value, dict) or set(value) != {"indices", "values"}:
            raise BadRequest("sparse values must be an object with indices and values")
        indices, values = value["indices"], value["values"]
        if not isinstance(indices, list) or not isinstance(values, list) or len(indices) != len(values):
            raise BadRequest("Sparse vector indices and values must have the same length")
        if not all(isinstance(index, int) and not isinstance(index, bool) and 0 <= index < 2**32 for index in indices):
            raise BadRequest("Sparse vector indices must be unsigned 32-bit integers")
        if len(set(indices)) != len(indices):
            raise BadRequest("Sparse vector indices must be unique")
        if len(indices) > MAX_SPARSE:
            raise BadRequest(f"Sparse vector has {len(indices)} non-zero values; the limit is {MAX_SPARSE}")
        if not all(isinstance(item, int | float) and not isinstance(item, bool) for item in values):
            raise BadRequest("Sparse vector values must be numbers")
        return {"indices": list(indices), "values": [float(item) for item in values]}

    @staticmethod
    def _metadata(value: Any) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise BadRequest("metadata must be an object")
        for key, item in value.items():
            if key.startswith("$"):
                raise BadRequest(f"Metadata key {key} must not start with $")
            if isinstance(item, list):
                if not all(isinstance(element, str) for element in item):
                    raise BadRequest(f"Metadata value for key {key} must be a list of strings")
            elif item is None or not _scalar(item):
                raise BadRequest(f"Metadata value for key {key} must be a string, number, boolean or list of strings")
        if len(json.dumps(value).encode()) > MAX_METADATA_BYTES:
            raise BadRequest(f"Metadata size exceeds the limit of {MAX_METADATA_BYTES} bytes per vector")
        return dict(value)

    def _score(self, record: Record, dense: list[float] | None, sparse: dict[str, list[Any]] | None) -> float:
        score = 0.0
        if dense is not None:
            if self.metric == "euclidean":
                return -math.dist(record.values, dense)
            dot = sum(a * b for a, b in zip(record.values, dense, strict=True))
            if self.metric == "cosine":
                norms = math.hypot(*record.values) * math.hypot(*dense)
                return dot / norms if norms else 0.0
            score = dot
        if sparse is not None and record.sparse is not None:
            weights = dict(zip(record.sparse["indices"], record.sparse["values"], strict=True))
            score += sum(
                weights.get(index, 0.0) * value
                for index, value in zip(sparse["indices"], sparse["values"], strict=True)
            )
        return score

    @staticmethod
    def _page(items: list[Any], token: Any, limit: int) -> tuple[list[Any], dict[str, str] | None]:
        start = 0
        if token:
            try:
                start = int(base64.urlsafe_b64decode(str(token).encode()).decode())
            except ValueError as exc:
                raise BadRequest("Invalid pagination token") from exc
        page = items[start : start + limit]
        if start + limit < len(items):
            return page, {"next": base64.urlsafe_b64encode(str(start + limit).encode()).decode()}
        return page, None

    # -- endpoints -----------------------------------------------------------------------------

    async def upsert(self, request: web.Request) -> web.Response:
        body = self._fields(await self._body(request), UPSERT_FIELDS)
        vectors = body.get("vectors")
        if not isinstance(vectors, list) or not vectors:
            raise BadRequest("vectors: at least one vector is required")
        if len(vectors) > MAX_UPSERT:
            raise BadRequest(f"Upsert request has {len(vectors)} vectors; the limit is {MAX_UPSERT}")
        namespace = self._namespace(body.get("namespace"))
        records = []
        for vector in vectors:
            self._fields(vector, VECTOR_FIELDS)
            record_id = vector.get("id")
            if not isinstance(record_id, str) or not record_id:
                raise BadRequest("Vector id must be a non-empty string")
            values = self._dense(vector.get("values"), "values")
            if not any(values):
                raise BadRequest("Dense vectors must contain at least one non-zero value.")
            sparse = self._sparse(vector["sparseValues"]) if vector.get("sparseValues") is not None else None
            records.append(Record(record_id, values, sparse, self._metadata(vector.get("metadata"))))
        store = self.namespaces.setdefault(namespace, {})
        for record in records:  # validated first: a rejected request writes nothing
            store[record.id] = record
        return web.json_response({"upsertedCount": len(records)})

    async def query(self, request: web.Request) -> web.Response:
        body = self._fields(await self._body(request), QUERY_FIELDS)
        top_k = body.get("topK")
        if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= MAX_TOP_K:
            raise BadRequest(f"topK must be an integer between 1 and {MAX_TOP_K}")
        include_values = bool(body.get("includeValues", False))
        include_metadata = bool(body.get("includeMetadata", False))
        if (include_values or include_metadata) and top_k > MAX_TOP_K_WITH_DATA:
            raise BadRequest(f"topK must be at most {MAX_TOP_K_WITH_DATA} when including values or metadata")
        if body.get("queries"):
            raise BadRequest("queries is deprecated: send vector or id")
        namespace = self._namespace(body.get("namespace"))
        store = self.namespaces.get(namespace, {})
        dense: list[float] | None = None
        if body.get("vector") is not None:
            if body.get("id") is not None:
                raise BadRequest("Send either vector or id, not both")
            dense = self._dense(body["vector"], "vector")
        elif body.get("id") is not None:
            found = store.get(str(body["id"]))
            if found is None:
                return web.json_response(
                    {"matches": [], "namespace": body.get("namespace") or "", "usage": {"readUnits": 1}}
                )
            dense = found.values
        sparse = self._sparse(body["sparseVector"]) if body.get("sparseVector") is not None else None
        if dense is None:
            raise BadRequest("A query needs a dense vector (vector) or a record id (id)")
        flt = body.get("filter")
        if flt is not None:
            validate_filter(flt)
        scored = [
            (self._score(record, dense, sparse), record)
            for record in store.values()
            if filter_matches(record.metadata, flt)
        ]
        scored.sort(key=lambda item: (-item[0], item[1].id))
        matches = []
        for score, record in scored[:top_k]:
            match = record.as_json(values=include_values, metadata=include_metadata)
            match["score"] = score
            if not include_values:
                match["values"] = []
            matches.append(match)
        return web.json_response(
            {"results": [], "matches": matches, "namespace": body.get("namespace") or "", "usage": {"readUnits": 5}}
        )

    async def delete(self, request: web.Request) -> web.Response:
        body = self._fields(await self._body(request), DELETE_FIELDS)
        ids, delete_all, flt = body.get("ids"), bool(body.get("deleteAll", False)), body.get("filter")
        if sum([ids is not None, delete_all, flt is not None]) != 1:
            raise BadRequest("Exactly one of ids, deleteAll and filter must be given")
        namespace = self._namespace(body.get("namespace"))
        store = self.namespaces.get(namespace)
        if store is None:
            return self.error(404, f"Namespace not found: {namespace}")
        if ids is not None:
            if not isinstance(ids, list) or not all(isinstance(item, str) for item in ids) or len(ids) > 1000:
                raise BadRequest("ids must be an array of at most 1000 strings")
            for record_id in ids:
                store.pop(record_id, None)
        elif delete_all:
            store.clear()
        else:
            validate_filter(flt)
            for record_id in [key for key, record in store.items() if filter_matches(record.metadata, flt)]:
                del store[record_id]
        return web.json_response({})

    async def fetch(self, request: web.Request) -> web.Response:
        ids = request.query.getall("ids", [])
        if not ids:
            raise BadRequest("ids: at least one id is required")
        if any(" " in record_id for record_id in ids):
            raise BadRequest("ids must not contain spaces")
        namespace = self._namespace(request.query.get("namespace"))
        store = self.namespaces.get(namespace, {})
        vectors = {record_id: store[record_id].as_json() for record_id in ids if record_id in store}
        return web.json_response(
            {"vectors": vectors, "namespace": request.query.get("namespace", ""), "usage": {"readUnits": 1}}
        )

    async def fetch_by_metadata(self, request: web.Request) -> web.Response:
        body = self._fields(await self._body(request), FETCH_BY_METADATA_FIELDS)
        flt = body.get("filter")
        if flt is not None:
            validate_filter(flt)
        limit = body.get("limit", 100)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 10000:
            raise BadRequest("limit must be an integer between 1 and 10000")
        store = self.namespaces.get(self._namespace(body.get("namespace")), {})
        matching = [store[key] for key in sorted(store) if filter_matches(store[key].metadata, flt)]
        page, pagination = self._page(matching, body.get("paginationToken"), limit)
        answer: dict[str, Any] = {
            "vectors": {record.id: record.as_json() for record in page},
            "namespace": body.get("namespace") or "",
            "usage": {"readUnits": 1},
        }
        if pagination:
            answer["pagination"] = pagination
        return web.json_response(answer)

    async def list_ids(self, request: web.Request) -> web.Response:
        try:
            limit = int(request.query.get("limit", "100"))
        except ValueError as exc:
            raise BadRequest("limit must be an integer") from exc
        if not 1 <= limit <= 100:
            raise BadRequest("limit must be between 1 and 100")
        prefix = request.query.get("prefix", "")
        store = self.namespaces.get(self._namespace(request.query.get("namespace")), {})
        ids = [key for key in sorted(store) if key.startswith(prefix)]
        page, pagination = self._page(ids, request.query.get("paginationToken"), limit)
        answer: dict[str, Any] = {
            "vectors": [{"id": record_id} for record_id in page],
            "namespace": request.query.get("namespace", ""),
            "usage": {"readUnits": 1},
        }
        if pagination:
            answer["pagination"] = pagination
        return web.json_response(answer)

    async def stats(self, request: web.Request) -> web.Response:
        body = self._fields(await self._body(request), STATS_FIELDS) if request.method == "POST" else {}
        flt = body.get("filter")
        if flt is not None:
            validate_filter(flt)
        namespaces = {
            name: {"vectorCount": sum(1 for record in store.values() if filter_matches(record.metadata, flt))}
            for name, store in self.namespaces.items()
            if store  # a namespace whose last record went is gone, as on Pinecone
        }
        return web.json_response(
            {
                "namespaces": namespaces,
                "dimension": self.dimension,
                "indexFullness": 0.0,
                "totalVectorCount": sum(len(store) for store in self.namespaces.values()),
                "metric": self.metric,
                "vectorType": "dense",
            }
        )

    async def delete_namespace(self, request: web.Request) -> web.Response:
        namespace = request.match_info["namespace"]
        if self.namespaces.pop(namespace, None) is None:
            return self.error(404, f"Namespace not found: {namespace}")
        return web.json_response({})


_INVALID = object()
