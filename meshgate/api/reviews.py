"""The review queue over HTTP: the client fetches a held call's answer (`GET /v1/reviews/{id}`), and
reviewers list, open, approve, reject and label items under /admin/reviews.

The auth middleware requires `admin:reviews:read|write` for /admin/reviews; each route also checks
`review:<guard>:read|decide` through the policy layer, so a grant can narrow a reviewer to some
guards. A client sees only the items its own key submitted (reviewers and admins see all); any
other id is a 404 like an unknown one, so ids cannot be probed.

The store is `runtime.reviews` (a ReviewStore the runtime builds on its database); the function
that releases an approved call held on input is `app.state.review_release` (None: not available).
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from msgspec import Meta, Struct
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from meshgate.api.bodies import decode_json, read_body
from meshgate.api.calls import runtime_of
from meshgate.api.responses import JSONBytesResponse
from meshgate.control.grants import allowed
from meshgate.control.policy import ANONYMOUS, Policy, Principal
from meshgate.errors import InvalidRequest, ServiceUnavailable
from meshgate.guards.reviews import (
    NOTE_MAX,
    Release,
    Review,
    ReviewNotFound,
    ReviewStore,
    check_status,
)

T = TypeVar("T")

NO_RELEASE_MESSAGE = "The call was approved, but this server cannot run it now; try again later."


class Decision(Struct, forbid_unknown_fields=True):
    label: Annotated[str, Meta(max_length=40)] | None = None
    note: Annotated[str, Meta(max_length=NOTE_MAX)] | None = None


class Labelling(Struct, forbid_unknown_fields=True):
    label: Annotated[str, Meta(min_length=1, max_length=40)]
    note: Annotated[str, Meta(max_length=NOTE_MAX)] | None = None


def client_body(review: Review, message: str | None = None) -> dict[str, Any]:
    """What the client that submitted a held call sees: the answer once approved and released."""
    body: dict[str, Any] = {
        "object": "review",
        "review_id": review.id,
        "status": review.status,
        "response": review.response if review.released else None,
    }
    if message is not None:
        body["message"] = message
    elif review.status == "pending":
        body["message"] = "The call is waiting for a reviewer."
    elif review.status == "rejected":
        body["message"] = "A reviewer declined to release this answer."
    return body


def _store(request: Request) -> ReviewStore:
    store = getattr(runtime_of(request), "reviews", None)
    if not isinstance(store, ReviewStore):
        raise ServiceUnavailable("The review queue is not available on this server.")
    return store


def _principal(request: Request) -> Principal:
    principal = getattr(request.state, "principal", None)
    return principal if isinstance(principal, Principal) else ANONYMOUS


def _may_fetch(principal: Principal, review: Review) -> bool:
    """The submitting key, and whoever may read reviews of this guard. Samples are not the
    client's business: their call was answered already."""
    if review.status == "sampled":
        return False
    return principal.key_id == review.key_id or allowed(principal.grants, "review", review.guard, "read")


async def fetch_review(request: Request) -> Response:
    """GET /v1/reviews/{id}: status, and the answer once approved (an approved call held on input is
    run on its first fetch)."""
    review_id = request.path_params["review_id"]
    store = _store(request)
    principal = _principal(request)
    review = await store.find(review_id)
    if review is None or not _may_fetch(principal, review):
        raise ReviewNotFound(review_id)
    if review.status == "approved" and review.response is None and review.direction == "input":
        release: Release | None = getattr(request.app.state, "review_release", None)
        if release is None:
            return JSONBytesResponse(client_body(review, NO_RELEASE_MESSAGE))
        review = await store.release(review_id, release, actor=principal.key_id)
    return JSONBytesResponse(client_body(review))


async def list_reviews(request: Request) -> Response:
    """GET /admin/reviews?status=pending&limit=50&offset=0"""
    principal = _principal(request)
    if not any(g.allows("review", g.pattern, "read") for g in principal.grants):
        # No review grant at all: refused like any missing grant (403) naming the one it lacks.
        Policy.authorize(principal, "review", "*", "read")
    status = check_status(request.query_params.get("status") or None)
    limit = _int_param(request, "limit", 50)
    offset = _int_param(request, "offset", 0)
    store = _store(request)
    items = await store.list(status, limit=limit, offset=offset)
    visible = [r for r in items if allowed(principal.grants, "review", r.guard, "read")]
    return JSONBytesResponse({"object": "list", "data": [r.summary() for r in visible], "counts": await store.counts()})


async def show_review(request: Request) -> Response:
    """GET /admin/reviews/{id}: the whole item, with the held request and response."""
    review = await _readable(request)
    return JSONBytesResponse(review.full())


async def approve_review(request: Request) -> Response:
    return await _decide(request, approve=True)


async def reject_review(request: Request) -> Response:
    return await _decide(request, approve=False)


async def label_review(request: Request) -> Response:
    """POST /admin/reviews/{id}/label {"label", "note"}: label a sampled (or decided) item."""
    review = await _readable(request)
    Policy.authorize(_principal(request), "review", review.guard, "decide")
    body = await _body(request, Labelling)
    if body is None:
        raise InvalidRequest("Missing required parameter: 'label'.", param="label", code="missing_required_parameter")
    labelled = await _store(request).label(review.id, body.label, _principal(request).key_id, body.note)
    return JSONBytesResponse(labelled.summary())


async def _decide(request: Request, approve: bool) -> Response:
    """POST /admin/reviews/{id}/approve|reject with an optional {"label", "note"}."""
    review = await _readable(request)
    Policy.authorize(_principal(request), "review", review.guard, "decide")
    body = await _body(request, Decision) or Decision()
    decided = await _store(request).decide(review.id, approve, _principal(request).key_id, body.label, body.note)
    return JSONBytesResponse(decided.summary())


async def _readable(request: Request) -> Review:
    """The item at the path, if the caller may read reviews of its guard (404 otherwise: a
    reviewer narrowed to some guards learns nothing of the others)."""
    review_id = request.path_params["review_id"]
    review = await _store(request).find(review_id)
    if review is None or not allowed(_principal(request).grants, "review", review.guard, "read"):
        raise ReviewNotFound(review_id)
    return review


async def _body(request: Request, schema: type[T]) -> T | None:
    """The JSON body, or None when it is empty (the body of a decision is optional)."""
    raw = await read_body(request, runtime_of(request).settings.max_body_bytes)
    if not raw.strip():
        return None
    return decode_json(raw, schema)


def _int_param(request: Request, name: str, default: int) -> int:
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    if not text.isdigit():
        raise InvalidRequest(f"{name} must be a whole number", param=name, code="invalid_value")
    return int(text)


ROUTES = [
    Route("/v1/reviews/{review_id}", fetch_review, methods=["GET"]),
    Route("/admin/reviews", list_reviews, methods=["GET"]),
    Route("/admin/reviews/{review_id}", show_review, methods=["GET"]),
    Route("/admin/reviews/{review_id}/approve", approve_review, methods=["POST"]),
    Route("/admin/reviews/{review_id}/reject", reject_review, methods=["POST"]),
    Route("/admin/reviews/{review_id}/label", label_review, methods=["POST"]),
]
