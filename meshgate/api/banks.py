"""Knowledge banks over HTTP (issue 15).

    GET    /v1/banks                              banks the caller may use
    POST   /v1/banks                              create {name, team, embedder, index, data_class, acl, description}
    GET    /v1/banks/{bank}
    DELETE /v1/banks/{bank}
    POST   /v1/banks/{bank}/documents             multipart upload (one or more `file` parts, optional
                                                  `acl` field) or JSON {"text", "title", "source", "acl"}
                                                  or {"documents": [...]}
    GET    /v1/banks/{bank}/documents             ?limit=&after=
    GET    /v1/banks/{bank}/documents/{id}
    DELETE /v1/banks/{bank}/documents/{id}
    POST   /v1/banks/{bank}/search                {"query", "top_k", "filters", "read_all", "rerank"}

Who may do what is decided in meshgate/knowledge/access.py; what a reader sees of a bank is decided
per chunk by the document ACLs inside the index query. Document lists show a reader only documents
its ACLs grant (managers see all).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Annotated, Any

from msgspec import Meta, Struct
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from meshgate.api.bodies import decode_request, read_body
from meshgate.api.calls import runtime_of
from meshgate.api.multipart import read_form
from meshgate.api.responses import JSONBytesResponse
from meshgate.control.policy import ANONYMOUS, PermissionDenied, Principal
from meshgate.data_classes import DEFAULT_DATA_CLASS
from meshgate.errors import InvalidRequest, ServiceUnavailable
from meshgate.knowledge import access
from meshgate.knowledge.acl import AclError, parse_acl, readers_of
from meshgate.knowledge.errors import BankNotFound, DocumentNotFound
from meshgate.knowledge.index.base import Readers
from meshgate.knowledge.ingest import IngestItem
from meshgate.knowledge.records import DEFAULT_EMBEDDER, DEFAULT_INDEX, BankRecord
from meshgate.knowledge.service import MAX_TOP_K, KnowledgeService
from meshgate.protocol import RerankOptions

#: An upload (all files of one request) may be this big; documents are parsed in a worker.
MAX_UPLOAD_BYTES = 64 * 2**20

Name = Annotated[str, Meta(min_length=1, max_length=64)]
AclInput = (
    Annotated[str, Meta(max_length=8192)] | Annotated[list[Annotated[str, Meta(max_length=200)]], Meta(max_length=64)]
)


class CreateBank(Struct, forbid_unknown_fields=True):
    name: Name
    team: Name | None = None
    embedder: Name = DEFAULT_EMBEDDER
    index: Name = DEFAULT_INDEX
    data_class: Name = DEFAULT_DATA_CLASS
    acl: AclInput | None = None
    description: Annotated[str, Meta(max_length=2000)] = ""


class TextDocument(Struct, forbid_unknown_fields=True):
    text: Annotated[str, Meta(min_length=1, max_length=MAX_UPLOAD_BYTES)]
    title: Annotated[str, Meta(max_length=500)] | None = None
    source: Annotated[str, Meta(min_length=1, max_length=1000)] | None = None
    #: markdown, html, text or csv: how to read the text (default: text).
    format: Annotated[str, Meta(max_length=16)] = "text"
    acl: AclInput | None = None


class AddDocuments(Struct, forbid_unknown_fields=True):
    """One document (`text`, ...) or many (`documents`, with a default `acl`)."""

    documents: Annotated[list[TextDocument], Meta(min_length=1, max_length=1000)] | None = None
    text: Annotated[str, Meta(min_length=1, max_length=MAX_UPLOAD_BYTES)] | None = None
    title: Annotated[str, Meta(max_length=500)] | None = None
    source: Annotated[str, Meta(min_length=1, max_length=1000)] | None = None
    format: Annotated[str, Meta(max_length=16)] = "text"
    acl: AclInput | None = None

    def items(self) -> tuple[list[TextDocument], Any]:
        """The documents and the ACL of those that name none."""
        if self.documents is not None:
            if self.text is not None or self.title is not None or self.source is not None or self.format != "text":
                raise InvalidRequest(
                    "Send either `documents` or one document's `text`, not both.",
                    param="documents",
                    code="invalid_body",
                )
            return self.documents, self.acl
        if self.text is None:
            raise InvalidRequest("Missing required parameter: 'text'.", param="text", code="missing_required_parameter")
        return [TextDocument(self.text, self.title, self.source, self.format, self.acl)], None


class SearchRequest(Struct, forbid_unknown_fields=True):
    query: Annotated[str, Meta(min_length=1, max_length=8192)]
    top_k: Annotated[int, Meta(ge=1, le=MAX_TOP_K)] = 5
    filters: dict[str, Any] | None = None
    #: Admins only: read every document regardless of ACLs (audited).
    read_all: bool = False
    #: true (rerank the top 20 fused chunks), {"top_n": n}, false; default: mesh.yaml knowledge.rerank.
    rerank: bool | RerankOptions | None = None


_SUFFIX = {"markdown": ".md", "html": ".html", "text": ".txt", "csv": ".csv"}


def _principal(request: Request) -> Principal:
    principal = getattr(request.state, "principal", None)
    return principal if isinstance(principal, Principal) else ANONYMOUS


def _service(request: Request) -> KnowledgeService:
    service = runtime_of(request).knowledge
    if service is None:
        raise ServiceUnavailable("Knowledge banks are not available: the server has not started them.")
    return service


def _acl(value: Any, param: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    try:
        return parse_acl(value)
    except AclError as exc:
        raise InvalidRequest(f"{param}: {exc}", param=param, code="invalid_acl") from None


async def _bank(request: Request) -> tuple[KnowledgeService, BankRecord, Principal]:
    service = _service(request)
    principal = _principal(request)
    bank = await service.bank(request.path_params["bank"])
    try:
        access.require_read(principal, bank)
    except PermissionDenied:
        # Whether a bank exists is not told to a key that may not use it.
        raise BankNotFound(bank.name) from None
    return service, bank, principal


async def list_banks(request: Request) -> Response:
    service = _service(request)
    principal = _principal(request)
    visible = []
    for bank in await service.banks():
        try:
            access.require_read(principal, bank)
        except PermissionDenied:
            continue
        visible.append(bank.public())
    return JSONBytesResponse({"object": "list", "data": visible})


async def create_bank(request: Request) -> Response:
    service = _service(request)
    body = await decode_request(request, CreateBank, runtime_of(request).settings.max_body_bytes)
    principal = _principal(request)
    access.require_create(principal, body.team)
    bank = await service.create_bank(
        body.name,
        team=body.team,
        embedder=body.embedder,
        index_kind=body.index,
        data_class=body.data_class,
        acl=_acl(body.acl, "acl") or ("public",),
        description=body.description,
        actor=principal.key_id,
    )
    return JSONBytesResponse(bank.public(), status_code=201)


async def get_bank(request: Request) -> Response:
    _, bank, _ = await _bank(request)
    return JSONBytesResponse(bank.public())


async def delete_bank(request: Request) -> Response:
    service, bank, principal = await _bank(request)
    access.require_manage(principal, bank)
    counts = await service.delete_bank(bank.name, actor=principal.key_id)
    return JSONBytesResponse({"name": bank.name, "object": "knowledge.bank", "deleted": True, **counts})


def _constant(data: bytes) -> Callable[[], bytes]:
    return lambda: data


def _text_items(docs: list[TextDocument], default_acl: tuple[str, ...] | None) -> list[IngestItem]:
    items = []
    for doc in docs:
        data = doc.text.encode()
        if doc.format not in _SUFFIX:
            raise InvalidRequest(
                f"format: {doc.format!r} is not one of {', '.join(_SUFFIX)}", param="format", code="invalid_format"
            )
        source = doc.source or f"text:{hashlib.sha256(data).hexdigest()[:16]}"
        filename = (doc.title or "text") + _SUFFIX[doc.format]
        acl = _acl(doc.acl, "acl") or default_acl
        items.append(IngestItem(source, filename, _constant(data), title=doc.title, acl=acl))
    return items


async def add_documents(request: Request) -> Response:
    service, bank, principal = await _bank(request)
    access.require_manage(principal, bank)
    content_type = request.headers.get("content-type", "")
    if content_type.lower().startswith("multipart/form-data"):
        form = await read_form(await read_body(request, MAX_UPLOAD_BYTES), content_type)
        if not form.files:
            raise InvalidRequest(
                "The upload has no file part (send files as `file` fields).", param="file", code="no_files"
            )
        acl = _acl(form.fields.get("acl"), "acl")
        one = len(form.files) == 1
        items = [
            IngestItem(
                source=(form.fields.get("source") if one else None) or f"upload:{upload.filename}",
                filename=upload.filename,
                read=_constant(upload.data),
                content_type=upload.content_type,
                title=form.fields.get("title") if one else None,
            )
            for upload in form.files
        ]
        report = await service.ingest(bank.name, items, acl, actor=principal.key_id)
    else:
        body = await decode_request(request, AddDocuments, MAX_UPLOAD_BYTES)
        docs, default_acl = body.items()
        items = _text_items(docs, _acl(default_acl, "acl"))
        report = await service.ingest(bank.name, items, None, actor=principal.key_id)
    summary = report.summary()
    status = 201 if summary["added"] or summary["updated"] else 200
    if summary["failed"] and not (
        summary["added"] or summary["updated"] or summary["unchanged"] or summary["duplicates"]
    ):
        status = 422
    return JSONBytesResponse(
        {"object": "knowledge.ingest", **summary, "documents": [o.public() for o in report.outcomes]},
        status_code=status,
    )


def _readable(principal: Principal, acl: tuple[str, ...]) -> bool:
    return readers_of(principal).may_read(acl)


async def list_documents(request: Request) -> Response:
    service, bank, principal = await _bank(request)
    try:
        limit = min(int(request.query_params.get("limit", "100")), 1000)
    except ValueError:
        raise InvalidRequest("limit: must be an integer", param="limit") from None
    after = request.query_params.get("after", "")
    manager = access.may_manage(principal, bank)
    docs = await service.documents(bank.name, limit=limit, after=after)
    data = [doc.public() for doc in docs if manager or _readable(principal, doc.acl)]
    return JSONBytesResponse(
        {"object": "list", "data": data, "has_more": len(docs) == limit, "last_id": docs[-1].id if docs else None}
    )


async def get_document(request: Request) -> Response:
    service, bank, principal = await _bank(request)
    doc = await service.document(bank.name, request.path_params["document_id"])
    if not (access.may_manage(principal, bank) or _readable(principal, doc.acl)):
        raise DocumentNotFound(bank.name, doc.id)
    return JSONBytesResponse(doc.public())


async def delete_document(request: Request) -> Response:
    service, bank, principal = await _bank(request)
    access.require_manage(principal, bank)
    removed = await service.delete_document(bank.name, request.path_params["document_id"], actor=principal.key_id)
    return JSONBytesResponse({"id": removed[0], "object": "knowledge.document", "deleted": True, "removed": removed})


async def search(request: Request) -> Response:
    service, bank, principal = await _bank(request)
    body = await decode_request(request, SearchRequest, runtime_of(request).settings.max_body_bytes)
    if body.read_all:
        access.require_read_all(principal, bank)
        await service.audit_read_all(bank.name, principal.key_id, len(body.query))
        readers = Readers.everyone()
    else:
        readers = readers_of(principal)
    retrieved = await service.retrieve(
        bank.name, body.query, readers, body.top_k, body.filters, request.state.request_id, body.rerank
    )
    # Reranked hits keep their fused `score` (comparable across queries) and add `rerank_score`.
    reranked = retrieved.rerank_scores
    data = [
        {**hit.public(), "rerank_score": reranked[hit.chunk.chunk_id]} if reranked else hit.public()
        for hit in retrieved.hits
    ]
    return JSONBytesResponse({"object": "list", "data": data})


ROUTES = [
    Route("/v1/banks", list_banks, methods=["GET"]),
    Route("/v1/banks", create_bank, methods=["POST"]),
    Route("/v1/banks/{bank}", get_bank, methods=["GET"]),
    Route("/v1/banks/{bank}", delete_bank, methods=["DELETE"]),
    Route("/v1/banks/{bank}/documents", add_documents, methods=["POST"]),
    Route("/v1/banks/{bank}/documents", list_documents, methods=["GET"]),
    Route("/v1/banks/{bank}/documents/{document_id}", get_document, methods=["GET"]),
    Route("/v1/banks/{bank}/documents/{document_id}", delete_document, methods=["DELETE"]),
    Route("/v1/banks/{bank}/search", search, methods=["POST"]),
]
