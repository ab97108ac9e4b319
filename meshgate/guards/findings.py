"""What every detector returns, and the one interface detectors implement.

A detector looks at one text and returns typed findings with character offsets into that text. It
never logs or returns the matched value itself: callers slice the text when they must (redaction),
and everything that is recorded (usage, audit, metrics, the scan API) carries kinds, offsets and
scores only.

Detectors are synchronous and CPU-bound: the pipeline step calls them in a worker thread once a text
is long enough to matter, never on the event loop for work that grows with the text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

Direction = Literal["input", "output"]
#: Where a text came from: what the user typed, a tool's result, a retrieved document, the system
#: prompt, or the model's answer. Indirect injection is judged on "tool" and "document" texts.
Source = Literal["user", "tool", "document", "system", "assistant", "output"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing a detector found: `text[start:end]` is the span (the whole text for a classifier
    that judges all of it), `score` in [0, 1] how sure the detector is."""

    kind: str  # "email", "phone", "person", "aws_access_key", "injection", "hate", ...
    start: int
    end: int
    score: float
    detector: str  # the detector's name as policies use it: "pii", "secrets", "codenames", ...

    def as_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "start": self.start, "end": self.end, "score": self.score, "detector": self.detector}


@dataclass(frozen=True, slots=True)
class ScanContext:
    """What a detector may know about the text besides the text itself."""

    direction: Direction = "input"
    source: Source = "user"
    #: The call's system prompt, for the leakage check of answers ("the answer repeats it").
    system_prompt: str = ""


DEFAULT_CONTEXT = ScanContext()


class Detector(Protocol):
    """A named detector. `detect` must be thread-safe (it runs in worker threads) and must not log
    the text or the values it finds."""

    name: str

    def detect(self, text: str, context: ScanContext = DEFAULT_CONTEXT) -> list[Finding]: ...


def uses_model(detector: object) -> bool:
    """Whether a detector runs a model (NER, a classifier), so its work always goes to a worker
    thread; a detector says so with a `uses_model` attribute, patterns-only ones need none."""
    return bool(getattr(detector, "uses_model", False))


def merge_overlapping(findings: list[Finding]) -> list[Finding]:
    """Findings sorted by start, overlapping spans reduced to the longest (then highest-scored) one:
    what redaction needs, since one stretch of text gets one placeholder."""
    ordered = sorted(findings, key=lambda f: (f.start, -(f.end - f.start), -f.score))
    kept: list[Finding] = []
    for finding in ordered:
        if kept and finding.start < kept[-1].end:
            last = kept[-1]
            if (finding.end - finding.start, finding.score) > (last.end - last.start, last.score):
                kept[-1] = finding
            continue
        kept.append(finding)
    return kept
