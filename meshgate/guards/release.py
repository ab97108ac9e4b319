"""Running a call a reviewer approved while it was held on input (the model was not called yet).

The held request runs through the same pipeline as any call, as the key that sent it (limits,
budgets, routing and the other guards apply as usual), not streamed, marked released so its review
rules flag instead of holding it again. The review queue stores the answer once (reviews.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from msgspec import structs

from meshgate.control.policy import ANONYMOUS, PermissionDenied, Principal
from meshgate.gateway.pipeline import Call, Pipeline
from meshgate.guards.reviews import Release, Review
from meshgate.guards.step import RELEASED
from meshgate.protocol import ChatCompletionRequest


def make_release(pipeline: Callable[[], Pipeline], principal_of: Callable[[str], Principal | None] | None) -> Release:
    """`principal_of(key_id)` finds the submitting key (None: authentication is off)."""

    async def release(review: Review) -> dict[str, Any]:
        principal = ANONYMOUS if principal_of is None else principal_of(review.key_id or "")
        if principal is None:
            raise PermissionDenied(
                f"The key that sent review {review.id} is no longer active: its held request is not run."
            )
        request = msgspec.convert(review.request, ChatCompletionRequest)
        request = structs.replace(request, stream=None, stream_options=None)
        call = Call(endpoint="chat.completions", request=request, headers={}, principal=principal)
        call.notes[RELEASED] = True
        return await pipeline().complete(call)

    return release
