"""The answers guards give instead of the model's: a block, a failed guard, a call held for review.

They are typed errors like every other refusal, so each API (OpenAI, Anthropic, Responses) renders
them in its own schema, once. A message names the guard and what was found (detector and kinds),
never the matched text.
"""

from __future__ import annotations

from typing import Any, ClassVar

from meshgate.errors import MeshError

REVIEW_HEADER = "x-meshgate-review-id"


class GuardBlocked(MeshError):
    status = 400
    type = "invalid_request_error"
    default_code = "guard_blocked"
    kind = "guard_blocked"

    def __init__(self, message: str, *, guard: str, detector: str) -> None:
        super().__init__(message)
        self.guard = guard
        self.detector = detector


class GuardFailed(GuardBlocked):
    """A detector failed and its guard fails closed: the call is blocked, not let through unchecked."""

    status = 503
    type = "server_error"
    kind = "guard_failed"


class ReviewHeld(MeshError):
    """Not a failure: the call waits for a reviewer (202). Rendered as the review object itself, in
    every API, with the review's id in a header."""

    status = 202
    type = "review"
    default_code = "review_pending"
    kind = "review_held"
    #: Rendered as body() by every API, not wrapped in its error schema.
    verbatim: ClassVar[bool] = True

    def __init__(self, review_id: str, guard: str, direction: str) -> None:
        what = "request" if direction == "input" else "answer"
        super().__init__(
            f"The guard `{guard}` holds this {what} for human review. Fetch the answer with "
            f"GET /v1/reviews/{review_id} once a reviewer has approved it."
        )
        self.review_id = review_id
        self.guard = guard

    def body(self) -> dict[str, Any]:
        return {"object": "review", "review_id": self.review_id, "status": "pending", "message": self.message}

    def headers(self) -> dict[str, str]:
        return {REVIEW_HEADER: self.review_id}
