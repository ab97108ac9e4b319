"""Detectors an operator declares in mesh.yaml: a regex or a word list, optionally with context words.

```yaml
detectors:
  - {name: codenames, kind: regex, pattern: "Project (Heron|Falcon)", flags: [ignorecase]}
  - {name: products, kind: words, words: [Heron, Falcon], ignore_case: true,
     context: [launch, roadmap], context_window: 40}
```

A finding's `kind` and `detector` are both the spec's `name`, so a policy names what it acts on.
Scores: `score` (default 0.6) for a bare match, `context_score` (default 0.9) when one of the
`context` words occurs within `context_window` characters (default 50) before or after the match.

Python's `re` has no timeout, and a pattern such as ``(a+)+b`` backtracks exponentially. Rather than
a timeout (a thread that cannot be stopped), the design bounds the work: a spec's pattern is rejected
when it nests a quantifier inside a quantified group (the shape behind catastrophic backtracking),
and a detector scans at most `max_text_chars` characters (default 100,000) of a text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from meshgate.guards.findings import DEFAULT_CONTEXT, Detector, Finding, ScanContext
from meshgate.names import NAME_RULE, valid_name

DEFAULT_SCORE = 0.6
DEFAULT_CONTEXT_SCORE = 0.9
DEFAULT_CONTEXT_WINDOW = 50
DEFAULT_MAX_TEXT_CHARS = 100_000

_FLAGS = {"ignorecase": re.IGNORECASE, "multiline": re.MULTILINE, "dotall": re.DOTALL}
# A group with a variable quantifier inside, itself repeated a variable number of times: (a+)+,
# (\w*)*, (x+y?){2,}. Fixed counts ((\d{2})+, (a+){3}) cannot blow up and pass.
_VARIABLE = r"(?:[+*]|\{\d*,\d*\})"
_NESTED_QUANTIFIER = re.compile(rf"\((?:[^()\\]|\\.)*?{_VARIABLE}(?:[^()\\]|\\.)*\){_VARIABLE}")
_KNOWN_FIELDS = {
    "regex": {
        "name",
        "kind",
        "pattern",
        "flags",
        "score",
        "context",
        "context_window",
        "context_score",
        "max_text_chars",
    },
    "words": {
        "name",
        "kind",
        "words",
        "ignore_case",
        "score",
        "context",
        "context_window",
        "context_score",
        "max_text_chars",
    },
}


@dataclass(frozen=True, slots=True)
class _ContextRule:
    words: re.Pattern[str] | None
    window: int
    score: float
    context_score: float

    def score_at(self, text: str, start: int, end: int) -> float:
        if self.words is None:
            return self.score
        # Before and after the match, never inside it: a term that contains a context word does not
        # raise its own score.
        before = self.words.search(text, max(0, start - self.window), start)
        after = before or self.words.search(text, end, min(len(text), end + self.window))
        return self.context_score if after is not None else self.score


class PatternDetector:
    """Findings for every match of one compiled pattern, scored by the context rule."""

    def __init__(self, name: str, pattern: re.Pattern[str], context: _ContextRule, max_text_chars: int) -> None:
        self.name = name
        self._pattern = pattern
        self._context = context
        self._max_text_chars = max_text_chars

    def detect(self, text: str, context: ScanContext = DEFAULT_CONTEXT) -> list[Finding]:
        scanned = text[: self._max_text_chars]
        return [
            Finding(self.name, m.start(), m.end(), self._context.score_at(scanned, m.start(), m.end()), self.name)
            for m in self._pattern.finditer(scanned)
            if m.end() > m.start()  # an empty match marks nothing
        ]


def word_pattern(words: Iterable[str], ignore_case: bool) -> re.Pattern[str]:
    """Whole-word alternation, longest first so "Project Heron" wins over "Project". Lookarounds, not
    \\b, so that a term ending in a non-word character ("C++") still matches as a whole word."""
    alternation = "|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternation})(?!\w)", re.IGNORECASE if ignore_case else 0)


def build_custom_detector(spec: dict[str, object]) -> Detector:
    """A detector from one mesh.yaml entry; ValueError naming the field when the entry is wrong."""
    if not isinstance(spec, dict):
        raise ValueError("a custom detector must be a mapping with name, kind and pattern or words")
    name = spec.get("name")
    if not isinstance(name, str) or not valid_name(name):
        raise ValueError(f"custom detector field 'name' is not valid ({NAME_RULE}), got {name!r}")
    kind = spec.get("kind")
    if kind not in _KNOWN_FIELDS:
        raise ValueError(f"custom detector {name!r}: field 'kind' must be 'regex' or 'words', got {kind!r}")
    unknown = set(spec) - _KNOWN_FIELDS[str(kind)]
    if unknown:
        raise ValueError(f"custom detector {name!r}: unknown field(s) {sorted(unknown)} for kind {kind!r}")
    score = _probability(spec, name, "score", DEFAULT_SCORE)
    context = _context_rule(spec, name, score)
    max_chars = spec.get("max_text_chars", DEFAULT_MAX_TEXT_CHARS)
    if not isinstance(max_chars, int) or isinstance(max_chars, bool) or max_chars < 1:
        raise ValueError(f"custom detector {name!r}: field 'max_text_chars' must be a positive integer")
    pattern = _regex(spec, name) if kind == "regex" else _words(spec, name)
    return PatternDetector(name, pattern, context, max_chars)


def _probability(spec: dict[str, object], name: str, field: str, default: float) -> float:
    value = spec.get(field, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ValueError(f"custom detector {name!r}: field {field!r} must be a number between 0 and 1, got {value!r}")
    return float(value)


def _string_list(spec: dict[str, object], name: str, field: str) -> list[str]:
    value = spec.get(field)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"custom detector {name!r}: field {field!r} must be a non-empty list of non-empty strings")
    return [v.strip() for v in value]


def _regex(spec: dict[str, object], name: str) -> re.Pattern[str]:
    source = spec.get("pattern")
    if not isinstance(source, str) or not source:
        raise ValueError(f"custom detector {name!r}: field 'pattern' must be a non-empty string")
    flags = 0
    if "flags" in spec:
        for flag in _string_list(spec, name, "flags"):
            if flag.lower() not in _FLAGS:
                raise ValueError(f"custom detector {name!r}: field 'flags' has {flag!r}; known: {sorted(_FLAGS)}")
            flags |= _FLAGS[flag.lower()]
    if _NESTED_QUANTIFIER.search(source):
        raise ValueError(
            f"custom detector {name!r}: field 'pattern' nests a quantifier inside a repeated group, which can "
            "backtrack catastrophically; rewrite it without the nesting"
        )
    try:
        return re.compile(source, flags)
    except re.error as error:
        raise ValueError(f"custom detector {name!r}: field 'pattern' is not a valid regex: {error}") from None


def _words(spec: dict[str, object], name: str) -> re.Pattern[str]:
    ignore_case = spec.get("ignore_case", True)
    if not isinstance(ignore_case, bool):
        raise ValueError(f"custom detector {name!r}: field 'ignore_case' must be true or false")
    return word_pattern(_string_list(spec, name, "words"), ignore_case)


def _context_rule(spec: dict[str, object], name: str, score: float) -> _ContextRule:
    context_score = _probability(spec, name, "context_score", max(score, DEFAULT_CONTEXT_SCORE))
    window = spec.get("context_window", DEFAULT_CONTEXT_WINDOW)
    if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= 10_000:
        raise ValueError(f"custom detector {name!r}: field 'context_window' must be an integer from 1 to 10000")
    words = word_pattern(_string_list(spec, name, "context"), ignore_case=True) if "context" in spec else None
    if words is None and ("context_window" in spec or "context_score" in spec):
        raise ValueError(f"custom detector {name!r}: 'context_window'/'context_score' need field 'context'")
    return _ContextRule(words, window, score, context_score)
