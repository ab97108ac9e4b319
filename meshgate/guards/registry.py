"""Detectors by the names policies use: the built-in ones and those mesh.yaml defines.

Built-in detectors are made on first use (the NER model and the classifiers load then, once per
process); a mesh.yaml detector is built when the configuration loads, so a bad pattern or schema is
a configuration error, never a failure at request time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import replace

from meshgate.guards.config import DetectorSpec
from meshgate.guards.findings import DEFAULT_CONTEXT, Detector, Finding, ScanContext, uses_model


def _pii() -> Detector:
    from meshgate.guards.pii import PiiDetector

    return PiiDetector()


def _secrets() -> Detector:
    from meshgate.guards.secrets import SecretsDetector

    return SecretsDetector()


def _injection() -> Detector:
    from meshgate.guards.injection import InjectionDetector

    return InjectionDetector()


def _injection_lexical() -> Detector:
    from meshgate.guards.injection import InjectionDetector

    return InjectionDetector(embeddings=False)


def _moderation() -> Detector:
    from meshgate.guards.moderation import ModerationDetector

    return ModerationDetector()


def _leakage() -> Detector:
    from meshgate.guards.filters import LeakageDetector

    return LeakageDetector()


BUILTIN: dict[str, Callable[[], Detector]] = {
    "pii": _pii,
    "secrets": _secrets,
    "injection": _injection,
    "moderation": _moderation,
    "leakage": _leakage,
}

#: Built-in detectors in another configuration, by the names the engine asks for (never a policy's).
LEXICAL_INJECTION = "injection:lexical"
VARIANTS: dict[str, Callable[[], Detector]] = {LEXICAL_INJECTION: _injection_lexical}

_shared: dict[str, Detector] = {}
_shared_lock = threading.Lock()


def builtin(name: str) -> Detector:
    """The process's one instance of a built-in detector (models load once, whatever the reloads)."""
    found = _shared.get(name)
    if found is None:
        with _shared_lock:
            found = _shared.get(name)
            if found is None:
                found = _shared[name] = (BUILTIN.get(name) or VARIANTS[name])()
    return found


def build_custom(spec: DetectorSpec) -> Detector:
    """A detector from its mesh.yaml entry; ValueError says what is wrong with it."""
    options = spec.options()
    if spec.kind in ("regex", "words"):
        from meshgate.guards.custom import build_custom_detector

        return build_custom_detector({"name": spec.name, "kind": spec.kind, **options})
    from meshgate.guards import filters

    if spec.kind == "deny":
        return filters.DenyListDetector(spec.name, _strings(options, "words"))
    if spec.kind == "competitors":
        return filters.CompetitorDetector(spec.name, _strings(options, "names"))
    if spec.kind == "allow_domains":
        return filters.AllowListDetector(spec.name, _strings(options, "domains"))
    if spec.kind == "json_schema":
        schema = options.get("schema")
        if not isinstance(schema, dict):
            raise ValueError("`schema` must be a JSON schema (a mapping)")
        return filters.JsonSchemaDetector(spec.name, schema)
    if spec.kind == "pii":
        from meshgate.guards.pii import PiiDetector

        return _Renamed(spec.name, PiiDetector(entities=options.get("entities"), ner=bool(options.get("ner", True))))
    if spec.kind == "moderation":
        from meshgate.guards.moderation import ModerationDetector

        return _Renamed(spec.name, ModerationDetector(categories=options.get("categories")))
    raise ValueError(f"unknown detector kind `{spec.kind}`")


def _strings(options: dict[str, object], field: str) -> list[str]:
    value = options.get(field)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"`{field}` must be a non-empty list of strings")
    return list(value)


class _Renamed:
    """A configured variant of a built-in detector under its own name."""

    def __init__(self, name: str, inner: Detector) -> None:
        self.name = name
        self.inner = inner

    @property
    def uses_model(self) -> bool:
        return uses_model(self.inner)

    def detect(self, text: str, context: ScanContext = DEFAULT_CONTEXT) -> list[Finding]:
        return [replace(finding, detector=self.name) for finding in self.inner.detect(text, context)]


class Detectors:
    """The detectors of one configuration, by name."""

    def __init__(self, specs: Iterable[DetectorSpec]) -> None:
        self._custom: dict[str, Detector] = {spec.name: build_custom(spec) for spec in specs}
        self._cheap: dict[str, bool] = {}

    def get(self, name: str) -> Detector:
        found = self._custom.get(name)
        return found if found is not None else builtin(name)

    def cheap(self, name: str) -> bool:
        """Whether a detector is patterns only (no model): cheap enough for a short text on the loop."""
        found = self._cheap.get(name)
        if found is None:
            found = self._cheap[name] = not uses_model(self.get(name))
        return found

    def names(self) -> list[str]:
        return [*BUILTIN, *self._custom]
