"""A document's data class, from the guards' detectors and its bank's default.

Runs in a worker thread (it reads the whole text). The pattern PII recognisers and the secrets
detector decide: names alone (the NER model) do not make a document sensitive, and the model would
cost ~5 ms per 2,000 characters on every page of a large ingest.

- a secret (API key, private key, connection string, ...) -> `restricted`
- a government id or a payment number (SSN, NINO, SIN, credit card, IBAN) -> `restricted`
- other personal data (email, phone, postal address, date of birth, IP address) -> `confidential`
- nothing -> the bank's default (which is also the floor: detectors only raise a class)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from meshgate.data_classes import stricter
from meshgate.guards.findings import Finding

RESTRICTED_PII = frozenset({"us_ssn", "uk_nino", "ca_sin", "credit_card", "iban"})
CONFIDENTIAL_PII = frozenset({"email", "phone", "address", "date_of_birth", "ip_address"})
#: Findings under this score do not classify (a weak guess must not lock a document away).
MIN_SCORE = 0.5


@dataclass(frozen=True)
class Classification:
    data_class: str
    #: Counts by finding kind (never values): why the class is what it is.
    reasons: dict[str, int] = field(default_factory=dict)


def _class_of(finding: Finding) -> str | None:
    if finding.detector == "secrets":
        return "restricted"
    if finding.kind in RESTRICTED_PII:
        return "restricted"
    if finding.kind in CONFIDENTIAL_PII:
        return "confidential"
    return None


class Classifier:
    def __init__(self) -> None:
        # Pattern recognisers only (see the module's docstring); built once per process.
        from meshgate.guards.pii import PiiDetector
        from meshgate.guards.registry import builtin

        self._pii = PiiDetector(ner=False)
        self._secrets = builtin("secrets")

    def classify(self, text: str, floor: str) -> Classification:
        findings = [f for f in (*self._pii.detect(text), *self._secrets.detect(text)) if f.score >= MIN_SCORE]
        found = stricter(floor, *(_class_of(f) for f in findings)) or floor
        reasons = Counter(f.kind for f in findings if _class_of(f) is not None)
        return Classification(found, dict(sorted(reasons.items())))
