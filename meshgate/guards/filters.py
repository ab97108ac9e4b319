"""Output filters: checks an operator puts on what the model answers.

- `DenyListDetector`: terms that must not appear (whole words, case-insensitive), kind "denied_term";
- `AllowListDetector`: an allow list of domains; every URL whose host is neither an allowed domain nor
  a subdomain of one is a finding, kind "unlisted_domain" (an answer may link only where the operator
  allows: the useful meaning of an allow list for free text, where "words outside a list" would flag
  nearly every word);
- `CompetitorDetector`: competitor names and their aliases, whole words, case-insensitive, kind
  "competitor";
- `JsonSchemaDetector`: a structured answer must parse as JSON and validate against a schema; one
  finding, kind "schema_violation", spanning the whole text. Which paths failed is told only by
  `violations()`, never in the finding;
- `LeakageDetector`: the answer repeats the system prompt (`ScanContext.system_prompt`), kind
  "system_prompt_leak", span the repeated stretch of the answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from meshgate.guards.custom import word_pattern
from meshgate.guards.findings import DEFAULT_CONTEXT, Finding, ScanContext


class DenyListDetector:
    """Every whole-word occurrence of a denied term."""

    def __init__(self, name: str, words: Iterable[str], *, ignore_case: bool = True, score: float = 1.0) -> None:
        terms = [w.strip() for w in words if w.strip()]
        if not terms:
            raise ValueError(f"deny list {name!r} needs at least one word")
        self.name = name
        self._pattern = word_pattern(terms, ignore_case)
        self._score = score

    def detect(self, text: str, context: ScanContext = DEFAULT_CONTEXT) -> list[Finding]:
        return [
            Finding("denied_term", m.start(), m.end(), self._score, self.name) for m in self._pattern.finditer(text)
        ]


class CompetitorDetector:
    """Competitor names and aliases: a list of names, or a mapping of a name to its aliases."""

    def __init__(self, name: str, names: Iterable[str] | Mapping[str, Sequence[str]], *, score: float = 0.9) -> None:
        terms: list[str] = []
        if isinstance(names, Mapping):
            for canonical, aliases in names.items():
                terms.append(canonical)
                terms.extend(aliases)
        else:
            terms.extend(names)
        terms = [t.strip() for t in terms if t.strip()]
        if not terms:
            raise ValueError(f"competitor detector {name!r} needs at least one name")
        self.name = name
        self._pattern = word_pattern(terms, ignore_case=True)
        self._score = score

    def detect(self, text: str, context: ScanContext = DEFAULT_CONTEXT) -> list[Finding]:
        return [Finding("competitor", m.start(), m.end(), self._score, self.name) for m in self._pattern.finditer(text)]


# A URL with a scheme, or a bare "www." host. The host is what the allow list judges.
_URL = re.compile(
    r"(?:\b[a-zA-Z][a-zA-Z0-9+.\-]{1,15}://(?:[^\s/@\"'<>]+@)?|(?<![\w.\-])(?=www\.))"
    r"(?P<host>[A-Za-z0-9](?:[A-Za-z0-9\-]{0,62}\.)*[A-Za-z0-9\-]{1,63})(?::\d{1,5})?"
    r"(?:[/?#][^\s\"'<>()\[\]]*)?"
)


class AllowListDetector:
    """URLs whose host is not an allowed domain or one of its subdomains."""

    def __init__(self, name: str, domains: Iterable[str], *, score: float = 0.9) -> None:
        self.name = name
        self._allowed = frozenset(d.strip().lower().lstrip(".") for d in domains if d.strip())
        self._score = score

    def allows(self, host: str) -> bool:
        labels = host.lower().rstrip(".").split(".")
        return any(".".join(labels[i:]) in self._allowed for i in range(len(labels)))

    def detect(self, text: str, context: ScanContext = DEFAULT_CONTEXT) -> list[Finding]:
        findings: list[Finding] = []
        for match in _URL.finditer(text):
            if self.allows(match.group("host")):
                continue
            end = match.end()
            while end > match.start() and text[end - 1] in ".,;:!?":  # sentence punctuation after a URL
                end -= 1
            findings.append(Finding("unlisted_domain", match.start(), end, self._score, self.name))
        return findings


# --- JSON schema ---------------------------------------------------------------------------------

_FENCE = re.compile(r"^\s*```(?:json)?\s*\n(?P<body>[\s\S]*?)\n\s*```\s*$")
_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


def _is_type(value: object, name: str) -> bool:
    if name in ("integer", "number") and isinstance(value, bool):
        return False  # JSON true is not a number, though Python's bool is an int
    if name == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _TYPES.get(name, ()))


def schema_violations(value: Any, schema: Mapping[str, Any], path: str = "$") -> list[str]:
    """Paths that break the schema, each with the keyword that failed (never the value). The common
    subset of JSON Schema: type, enum, const, properties, required, additionalProperties, items,
    minItems/maxItems, minLength/maxLength, minimum/maximum, pattern."""
    errors: list[str] = []
    expected = schema.get("type")
    if expected is not None:
        names = [expected] if isinstance(expected, str) else list(expected)
        if not any(_is_type(value, n) for n in names):
            return [f"{path}: type"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: enum")
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: const")
    if isinstance(value, dict):
        properties: Mapping[str, Any] = schema.get("properties", {})
        errors.extend(f"{path}.{key}: required" for key in schema.get("required", []) if key not in value)
        for key, item in value.items():
            if key in properties:
                errors.extend(schema_violations(item, properties[key], f"{path}.{key}"))
            elif schema.get("additionalProperties") is False:
                errors.append(f"{path}.{key}: additionalProperties")
            elif isinstance(schema.get("additionalProperties"), dict):
                errors.extend(schema_violations(item, schema["additionalProperties"], f"{path}.{key}"))
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(f"{path}: minItems")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{path}: maxItems")
        if isinstance(schema.get("items"), dict):
            for index, item in enumerate(value):
                errors.extend(schema_violations(item, schema["items"], f"{path}[{index}]"))
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(f"{path}: minLength")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{path}: maxLength")
        if "pattern" in schema and re.search(schema["pattern"], value) is None:
            errors.append(f"{path}: pattern")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: minimum")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: maximum")
    return errors


class JsonSchemaDetector:
    """The answer must be JSON (a ```json fence around it is tolerated) valid against `schema`.

    The common subset is implemented here: the `jsonschema` package is not among meshgate's
    dependencies (nor installed with them), and the subset covers what structured outputs use."""

    def __init__(self, name: str, schema: Mapping[str, Any], *, score: float = 1.0) -> None:
        if not isinstance(schema, Mapping):
            raise ValueError(f"json schema detector {name!r}: the schema must be a mapping")
        self.name = name
        self.schema = schema
        self._score = score

    def violations(self, text: str) -> list[str]:
        """What failed, by path and keyword ("$.items[2].price: minimum"), or ["$: not JSON"]."""
        fenced = _FENCE.match(text)
        try:
            value = json.loads(fenced.group("body") if fenced else text)
        except ValueError:
            return ["$: not JSON"]
        return schema_violations(value, self.schema)

    def detect(self, text: str, context: ScanContext = DEFAULT_CONTEXT) -> list[Finding]:
        if not self.violations(text):
            return []
        return [Finding("schema_violation", 0, len(text), self._score, self.name)]


# --- system prompt leakage -----------------------------------------------------------------------

_WORD = re.compile(r"\w+")


class LeakageDetector:
    """The answer repeats the system prompt.

    Both texts become lowercase word sequences (so whitespace, case and punctuation changes do not
    hide a copy); every 8-word shingle of the system prompt goes into a set; the answer's shingles
    that are in the set form runs, runs at most `max_gap` words apart are joined, and a run of at
    least `min_run_words` words is a finding spanning that stretch of the answer. A shared common
    phrase is one or two shingles, far below the run length. Linear in both texts.

    Score: 0.8 for a run of `min_run_words`, rising to 0.99 as the run covers half of the system
    prompt or more."""

    name = "leakage"

    def __init__(
        self, *, shingle: int = 8, min_run_words: int = 14, min_prompt_words: int = 20, max_gap: int = 3
    ) -> None:
        self._shingle = shingle
        self._min_run_words = min_run_words
        self._min_prompt_words = min_prompt_words
        self._max_gap = max_gap

    def detect(self, text: str, context: ScanContext = DEFAULT_CONTEXT) -> list[Finding]:
        n = self._shingle
        prompt_words = [w.lower() for w in _WORD.findall(context.system_prompt)]
        if len(prompt_words) < max(self._min_prompt_words, n):
            return []
        shingles = {tuple(prompt_words[i : i + n]) for i in range(len(prompt_words) - n + 1)}
        matches = list(_WORD.finditer(text))
        words = [m.group(0).lower() for m in matches]
        hits = [i for i in range(len(words) - n + 1) if tuple(words[i : i + n]) in shingles]
        findings: list[Finding] = []
        for first, last in self._runs(hits):
            covered = last - first  # words in the run
            if covered < self._min_run_words:
                continue
            share = min(1.0, covered / len(prompt_words))
            score = round(min(0.99, 0.8 + 0.38 * share), 3)
            findings.append(
                Finding("system_prompt_leak", matches[first].start(), matches[last - 1].end(), score, self.name)
            )
        return findings

    def _runs(self, hits: list[int]) -> list[tuple[int, int]]:
        """[first word, one past the last word) of each stretch of matching shingles."""
        runs: list[tuple[int, int]] = []
        for start in hits:
            end = start + self._shingle
            if runs and start <= runs[-1][1] + self._max_gap:
                runs[-1] = (runs[-1][0], max(runs[-1][1], end))
            else:
                runs.append((start, end))
        return runs
