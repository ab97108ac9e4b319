"""Typed errors of the knowledge banks, mapped by the APIs like every MeshError."""

from __future__ import annotations

from meshgate.errors import InvalidRequest, MeshError


class BankNotFound(MeshError):
    status = 404
    type = "invalid_request_error"
    default_code = "bank_not_found"
    kind = "not_found"

    def __init__(self, bank: str) -> None:
        super().__init__(f"The knowledge bank `{bank}` does not exist or you do not have access to it.", param="bank")


class DocumentNotFound(MeshError):
    status = 404
    type = "invalid_request_error"
    default_code = "document_not_found"
    kind = "not_found"

    def __init__(self, bank: str, document_id: str) -> None:
        super().__init__(f"The bank `{bank}` has no document `{document_id}`.", param="document_id")


class BankExists(MeshError):
    status = 409
    type = "invalid_request_error"
    default_code = "bank_exists"
    kind = "conflict"

    def __init__(self, bank: str) -> None:
        super().__init__(f"A knowledge bank named `{bank}` already exists.", param="name")


class InvalidKnowledgeRequest(InvalidRequest):
    default_code = "invalid_knowledge_request"
