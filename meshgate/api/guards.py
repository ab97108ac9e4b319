"""Detection as a service: the gateway's own detectors for applications and evaluation tools.

`POST /v1/guards/scan {"text", "detectors"}` -> `{"findings": [{"kind", "start", "end", "score",
"detector"}]}`, offsets in characters (Unicode code points) of `text`; and `POST /v1/moderations` in
OpenAI's schema. Neither logs or echoes the text or what was found in it. Detectors run in the
guards' worker threads; the text is bounded by the body limit.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from msgspec import Meta, Struct
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from meshgate.api.bodies import decode_request
from meshgate.api.calls import runtime_of
from meshgate.api.responses import JSONBytesResponse
from meshgate.control.policy import Policy
from meshgate.errors import InvalidRequest
from meshgate.guards.engine import run_in_guard_worker
from meshgate.guards.findings import Finding, ScanContext
from meshgate.guards.registry import Detectors

DEFAULT_DETECTORS = ("pii", "secrets", "injection")
MODERATION_MODEL = "meshgate-moderation-1"

#: OpenAI's moderation subcategories, scored from the top-level categories the moderation detector
#: names (`ModerationDetector.openai_scores`): a parent's score where the parent implies them
#: (`/graphic`, `/intent`, `/instructions`), the weaker of two parents (`/threatening`); `illicit`
#: and `sexual/minors` are not modelled and score 0.
OPENAI_SUBCATEGORIES: dict[str, tuple[str, ...]] = {
    "harassment/threatening": ("harassment", "violence"),
    "hate/threatening": ("hate", "violence"),
    "illicit": (),
    "illicit/violent": (),
    "self-harm/intent": ("self-harm",),
    "self-harm/instructions": ("self-harm",),
    "sexual/minors": (),
    "violence/graphic": ("violence",),
}

Text = Annotated[str, Meta(max_length=1_000_000)]


class ScanRequest(Struct, forbid_unknown_fields=True):
    text: Text
    detectors: Annotated[list[Annotated[str, Meta(min_length=1, max_length=64)]], Meta(max_length=32)] | None = None
    #: What the text is: a prompt (`input`) or an answer (`output`); and where it came from.
    direction: Literal["input", "output"] = "input"
    source: Literal["user", "tool", "document", "system", "assistant", "output"] = "user"
    #: For `leakage`: the system prompt an answer must not repeat.
    system_prompt: Text = ""
    #: Findings scored below this are left out.
    min_score: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.0


class TextInput(Struct, tag="text", tag_field="type", forbid_unknown_fields=True):
    text: Text


class ImageInput(Struct, tag="image_url", tag_field="type", forbid_unknown_fields=True):
    image_url: dict[str, Any]


class ModerationRequest(Struct, forbid_unknown_fields=True):
    #: A text, a list of texts, or OpenAI's multi-modal list of `{"type": "text", "text"}` items.
    input: Text | Annotated[list[Text | TextInput | ImageInput], Meta(min_length=1, max_length=64)]
    model: str | None = None


def _detectors(request: Request) -> Detectors:
    return runtime_of(request).config.guard_engine.detectors


def _authorize(request: Request, detector: str) -> None:
    principal = getattr(request.state, "principal", None)
    if principal is not None:
        Policy.authorize(principal, "guard", detector, "use")


async def scan(request: Request) -> Response:
    runtime = runtime_of(request)
    body = await decode_request(request, ScanRequest, runtime.settings.max_body_bytes)
    detectors = _detectors(request)
    names = list(dict.fromkeys(body.detectors or DEFAULT_DETECTORS))
    known = set(detectors.names())
    for index, name in enumerate(names):
        if name not in known:
            raise InvalidRequest(
                f"detectors[{index}]: no detector `{name}` (known: {', '.join(sorted(known))}).",
                param=f"detectors[{index}]",
                code="unknown_detector",
            )
        _authorize(request, name)
    context = ScanContext(body.direction, body.source, body.system_prompt)

    def work() -> list[Finding]:
        found: list[Finding] = []
        for name in names:
            found.extend(detectors.get(name).detect(body.text, context))
        return found

    findings = await run_in_guard_worker(work)
    findings = sorted((f for f in findings if f.score >= body.min_score), key=lambda f: (f.start, f.end, f.detector))
    return JSONBytesResponse({"object": "guards.scan", "findings": [f.as_dict() for f in findings]})


def _texts(body: ModerationRequest) -> list[str]:
    if isinstance(body.input, str):
        return [body.input]
    texts: list[str] = []
    for index, item in enumerate(body.input):
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, TextInput):
            texts.append(item.text)
        else:
            raise InvalidRequest(
                f"input[{index}]: images are not moderated by {MODERATION_MODEL}; send text.",
                param=f"input[{index}]",
                code="unsupported_input",
            )
    return texts


async def moderations(request: Request) -> Response:
    runtime = runtime_of(request)
    body = await decode_request(request, ModerationRequest, runtime.settings.max_body_bytes)
    _authorize(request, "moderation")
    texts = _texts(body)
    detector = _detectors(request).get("moderation")
    threshold = float(getattr(detector, "threshold", 0.5))

    def work() -> list[dict[str, float]]:
        return [detector.openai_scores(text) for text in texts]  # type: ignore[attr-defined]

    all_scores = await run_in_guard_worker(work)
    results = []
    for parents_scores in all_scores:
        scores = dict(parents_scores)
        for name, parents in OPENAI_SUBCATEGORIES.items():
            scores[name] = min((parents_scores.get(p, 0.0) for p in parents), default=0.0)
        scores = dict(sorted(scores.items()))
        flags = {name: score >= threshold for name, score in scores.items()}
        results.append(
            {
                "flagged": any(flags.values()),
                "categories": flags,
                "category_scores": {name: round(float(score), 6) for name, score in scores.items()},
                "category_applied_input_types": {name: ["text"] for name in scores},
            }
        )
    return JSONBytesResponse(
        {"id": f"modr-{uuid.uuid4().hex}", "model": body.model or MODERATION_MODEL, "results": results}
    )


ROUTES = [
    Route("/v1/guards/scan", scan, methods=["POST"]),
    Route("/v1/moderations", moderations, methods=["POST"]),
]
