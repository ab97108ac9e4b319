"""Reversible redaction: values out, stable placeholders in, values back in the answer.

The model sees `<EMAIL_1>`, `<PERSON_2>`: the same value gets the same placeholder within one call
(a conversation sent again gets the same numbering, since values are numbered in order of first
appearance), so the model can still refer to "the same person". The client gets its original values
back, also in streams where a placeholder arrives split over several chunks (`StreamRestorer`), and
in tool-call arguments (JSON-escaped there). The mapping lives in the call only: it is never logged,
stored or sent anywhere.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

from meshgate.guards.findings import Finding

#: A placeholder as the vault writes it: `<KIND_N>`.
PLACEHOLDER = re.compile(r"<([A-Z][A-Z0-9_]*)_(\d+)>")
#: The longest placeholder prefix a stream may hold back while it waits for the rest.
MAX_PLACEHOLDER = 48


class Vault:
    """The placeholders of one call and the values they stand for."""

    def __init__(self) -> None:
        self._by_value: dict[tuple[str, str], str] = {}
        self._by_placeholder: dict[str, str] = {}
        self._counts: dict[str, int] = {}

    def __bool__(self) -> bool:
        return bool(self._by_placeholder)

    def __len__(self) -> int:
        return len(self._by_placeholder)

    def placeholder(self, kind: str, value: str) -> str:
        label = re.sub(r"[^A-Z0-9]+", "_", kind.upper()).strip("_") or "REDACTED"
        key = (label, value)
        found = self._by_value.get(key)
        if found is None:
            number = self._counts.get(label, 0) + 1
            self._counts[label] = number
            found = f"<{label}_{number}>"
            self._by_value[key] = found
            self._by_placeholder[found] = value
        return found

    def redact(self, text: str, findings: Iterable[Finding]) -> str:
        """`text` with each finding's span replaced by its placeholder. Findings must not overlap
        (see findings.merge_overlapping)."""
        pieces: list[str] = []
        at = 0
        for finding in sorted(findings, key=lambda f: f.start):
            if finding.start < at:
                continue
            pieces.append(text[at : finding.start])
            pieces.append(self.placeholder(finding.kind, text[finding.start : finding.end]))
            at = finding.end
        pieces.append(text[at:])
        return "".join(pieces)

    def restore(self, text: str, json_string: bool = False) -> str:
        """`text` with every placeholder of this vault replaced by its value; placeholders the vault
        does not know (the model made one up) stay as they are. Inside a JSON string (tool-call
        arguments) the value is escaped so the arguments stay valid JSON."""
        if not self._by_placeholder or "<" not in text:
            return text

        def value(match: re.Match[str]) -> str:
            original = self._by_placeholder.get(match.group(0))
            if original is None:
                return match.group(0)
            return json.dumps(original)[1:-1] if json_string else original

        return PLACEHOLDER.sub(value, text)


def mask(text: str, findings: Iterable[Finding]) -> str:
    """One-way redaction (of what a model wrote itself): each span becomes `[KIND]`."""
    pieces: list[str] = []
    at = 0
    for finding in sorted(findings, key=lambda f: f.start):
        if finding.start < at:
            continue
        pieces.append(text[at : finding.start])
        pieces.append(f"[{finding.kind.upper()}]")
        at = finding.end
    pieces.append(text[at:])
    return "".join(pieces)


def pending_placeholder_start(text: str) -> int:
    """Where a placeholder that may still be completed by later text begins, or len(text): the tail
    a stream must hold back (`<`, `<EMA`, `<EMAIL_1` are held; `<b>` or `< 3` are not)."""
    start = text.rfind("<", max(0, len(text) - MAX_PLACEHOLDER))
    if start < 0 or ">" in text[start:]:
        return len(text)
    tail = text[start + 1 :]
    if re.fullmatch(r"[A-Z][A-Z0-9_]*\d*|", tail):
        return start
    return len(text)


class StreamRestorer:
    """Restores placeholders in a stream of text pieces: a piece that ends inside a possible
    placeholder keeps that tail until the next piece (or the end) decides it."""

    def __init__(self, vault: Vault, json_string: bool = False) -> None:
        self.vault = vault
        self.json_string = json_string
        self._held = ""

    def feed(self, piece: str) -> str:
        text = self._held + piece
        cut = pending_placeholder_start(text)
        self._held = text[cut:]
        return self.vault.restore(text[:cut], self.json_string)

    def finish(self) -> str:
        text, self._held = self._held, ""
        return self.vault.restore(text, self.json_string)
