"""The PII detector: personal data in a text, as typed findings with offsets (issue 14).

Kinds (`Finding.kind`, detector "pii"):

- by pattern, validated (meshgate/guards/pii_patterns.py, pii_checksums.py, pii_address.py; about
  1 ms for 4,000 characters):
  `email`; `phone` (any country, by `phonenumbers`: +CC numbers and North American 3-3-4 groupings
  need a possible length, national numbers with a trunk 0 must be valid in one of GB, DE, FR, NL,
  AU, IN, IT, ES, IE, NZ, bare digit runs must be valid); `credit_card` (issuer prefix and Luhn); `iban`
  (country length and mod 97); `us_ssn` (never-issued areas, groups and serials rejected; nine bare
  digits only next to "SSN"-like words); `uk_nino` (HMRC's prefix rules); `ca_sin` (Canadian social
  insurance number: Luhn, and only next to "SIN"-like words); `ip_address` (v4 and v6, checked by
  `ipaddress`); `date_of_birth` (a date with "born", "DOB", "date of birth"... just before or after);
  `address` (house number + capitalised street name + street suffix, with unit, city, state, ZIP or
  UK postcode when they follow; PO boxes; APO/FPO/DPO; a UK postcode alone);
- by spaCy's small English model (meshgate/guards/pii_ner.py): `person`, `organization`,
  `location` (spaCy's GPE, LOC and FAC), with rules around it (meshgate/guards/pii_names.py): words
  that are no names ("SSN", "Python") dropped, firm names ("Wells, Adkins and Hughes", "Jones LLC")
  and names after a cue ("Dear ...", "Dr. ...") added. The model reads at most the first 16,000
  characters of a text (pii_ner.MAX_CHARS), in pieces of 2,000; the patterns read all of it.

Scores are in [0, 1]: each recogniser starts from how specific its shape is, words nearby ("call
me", "SSN", "IBAN") raise it and words that say "this is something else" ("order", "version") lower
it; findings under `min_score` are dropped.

Overlaps: a validated pattern wins over the model (an email's domain is not an organisation, a
street address's city is part of the address), then `merge_overlapping` keeps one span per stretch.
"""

from __future__ import annotations

from collections.abc import Iterable

from meshgate.guards import pii_ner
from meshgate.guards.findings import DEFAULT_CONTEXT, Finding, ScanContext, merge_overlapping
from meshgate.guards.pii_address import find_addresses
from meshgate.guards.pii_patterns import (
    Candidate,
    Recogniser,
    Scan,
    find_ca_sins,
    find_cards,
    find_dates_of_birth,
    find_emails,
    find_ibans,
    find_ip_addresses,
    find_phones,
    find_uk_ninos,
    find_us_ssns,
)

#: Pattern recognisers in the order they run; more specific shapes first (ties keep the earlier).
PATTERN_RECOGNISERS: dict[str, Recogniser] = {
    "email": find_emails,
    "iban": find_ibans,
    "credit_card": find_cards,
    "us_ssn": find_us_ssns,
    "uk_nino": find_uk_ninos,
    "ca_sin": find_ca_sins,
    "ip_address": find_ip_addresses,
    "date_of_birth": find_dates_of_birth,
    "address": find_addresses,
    "phone": find_phones,
}
NER_KINDS = ("person", "organization", "location")
#: Kinds whose pattern decides over another pattern's overlapping span: a card number is not a phone.
_PRIORITY = {kind: rank for rank, kind in enumerate(PATTERN_RECOGNISERS)}


def pii_kinds() -> tuple[str, ...]:
    """Every kind the detector can report."""
    return (*PATTERN_RECOGNISERS, *NER_KINDS)


class PiiDetector:
    """Personal data by validated patterns and, with `ner`, names, organisations and places."""

    name = "pii"

    def __init__(self, entities: Iterable[str] | None = None, ner: bool = True, min_score: float = 0.5) -> None:
        kinds = frozenset(pii_kinds() if entities is None else entities)
        unknown = kinds - set(pii_kinds())
        if unknown:
            raise ValueError(f"unknown PII kinds: {sorted(unknown)}; known: {list(pii_kinds())}")
        if not 0.0 <= min_score <= 1.0:
            raise ValueError("min_score must be within [0, 1]")
        self._recognisers = [(kind, fn) for kind, fn in PATTERN_RECOGNISERS.items() if kind in kinds]
        self._ner_kinds = frozenset(kind for kind in NER_KINDS if kind in kinds) if ner else frozenset()
        self.min_score = min_score

    @property
    def uses_model(self) -> bool:
        """With name kinds to find, the NER model runs."""
        return bool(self._ner_kinds)

    @property
    def kinds(self) -> tuple[str, ...]:
        return (*(kind for kind, _ in self._recognisers), *sorted(self._ner_kinds))

    def detect(self, text: str, context: ScanContext = DEFAULT_CONTEXT) -> list[Finding]:
        if not text:
            return []
        scan = Scan(text)
        patterns: list[Candidate] = []
        for _, recognise in self._recognisers:
            kept = [c for c in recognise(scan) if c.score >= self.min_score]
            scan.claimed.update((c.start, c.end) for c in kept)
            patterns.extend(kept)
        patterns = _resolve_patterns(patterns)
        entities: list[Candidate] = []
        if self._ner_kinds:
            entities = [
                c
                for c in pii_ner.find_entities(text, self._ner_kinds)
                if c.score >= self.min_score and not _overlaps_any(c, patterns)
            ]
        findings = [Finding(c.kind, c.start, c.end, round(c.score, 3), self.name) for c in (*patterns, *entities)]
        return merge_overlapping(findings)


def _resolve_patterns(candidates: list[Candidate]) -> list[Candidate]:
    """Among overlapping pattern matches the longer one wins ("+44 20 7946 0958" over the digits
    inside it), then the more specific kind (an IBAN over the card-like digits in it)."""
    ordered = sorted(candidates, key=lambda c: (-(c.end - c.start), _PRIORITY[c.kind], -c.score))
    kept: list[Candidate] = []
    for candidate in ordered:
        if not _overlaps_any(candidate, kept):
            kept.append(candidate)
    return sorted(kept, key=lambda c: c.start)


def _overlaps_any(candidate: Candidate, others: list[Candidate]) -> bool:
    return any(candidate.start < other.end and other.start < candidate.end for other in others)
