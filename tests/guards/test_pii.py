"""The PII detector: every kind at its exact offsets, checksums that reject, hard negatives that stay
quiet, spaCy loaded only when names are asked for, thread safety, and long texts bounded."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from meshgate.guards import pii_ner
from meshgate.guards.findings import Finding
from meshgate.guards.pii import PiiDetector, pii_kinds

PATTERNS = PiiDetector(ner=False)


@pytest.fixture(scope="module")
def with_ner() -> PiiDetector:
    detector = PiiDetector()
    detector.detect("Warm-up for Alice Smith in Paris.")  # the one model load of this module
    return detector


def spans(findings: list[Finding]) -> set[tuple[str, int, int]]:
    return {(f.kind, f.start, f.end) for f in findings}


def at(text: str, value: str, kind: str) -> tuple[str, int, int]:
    start = text.index(value)
    return (kind, start, start + len(value))


@pytest.mark.parametrize(
    ("text", "value", "kind"),
    [
        ("Write to jane.doe+news@example.co.uk today.", "jane.doe+news@example.co.uk", "email"),
        ("Call me at (415) 555-2671 tonight.", "(415) 555-2671", "phone"),
        ("Our London desk: +44 20 7946 0958.", "+44 20 7946 0958", "phone"),
        ("Fax 0049 30 901820 please", "0049 30 901820", "phone"),
        ("Pay with 4111 1111 1111 1111 now", "4111 1111 1111 1111", "credit_card"),
        ("Card 378282246310005 on file", "378282246310005", "credit_card"),
        ("IBAN GB82 WEST 1234 5698 7654 32 for the transfer", "GB82 WEST 1234 5698 7654 32", "iban"),
        ("Send it to DE89370400440532013000.", "DE89370400440532013000", "iban"),
        ("My SSN is 536-22-8814.", "536-22-8814", "us_ssn"),
        ("ssn 536228814 on the form", "536228814", "us_ssn"),
        ("NI number AB 12 34 56 C here", "AB 12 34 56 C", "uk_nino"),
        ("Her SIN is 131 144 123.", "131 144 123", "ca_sin"),
        ("Ping 192.168.10.254 first.", "192.168.10.254", "ip_address"),
        ("Client 2001:db8:85a3::8a2e:370:7334 connected.", "2001:db8:85a3::8a2e:370:7334", "ip_address"),
        ("I was born on March 3, 1985 in a small town.", "March 3, 1985", "date_of_birth"),
        ("DOB: 1985-03-03", "1985-03-03", "date_of_birth"),
        ("Ship to 1600 Pennsylvania Avenue NW, Washington, DC 20500.",
         "1600 Pennsylvania Avenue NW, Washington, DC 20500", "address"),
        ("I live at 42 Baker Street Apt. 3B, please visit.", "42 Baker Street Apt. 3B", "address"),
        ("Our office is at 10 Downing Street, London SW1A 2AA.", "10 Downing Street, London SW1A 2AA", "address"),
        ("Postcode: EC1A 1BB", "EC1A 1BB", "address"),
    ],
)  # fmt: skip
def test_each_pattern_kind_at_its_offsets(text: str, value: str, kind: str) -> None:
    assert at(text, value, kind) in spans(PATTERNS.detect(text))


def test_names_organisations_places(with_ner: PiiDetector) -> None:
    text = "Barack Obama met executives of Microsoft in Paris last week."
    found = spans(with_ner.detect(text))
    assert at(text, "Barack Obama", "person") in found
    assert at(text, "Microsoft", "organization") in found
    assert at(text, "Paris", "location") in found


def test_an_email_domain_is_not_an_organisation(with_ner: PiiDetector) -> None:
    text = "Mail john@google.com or john.smith@microsoft.com about it."
    found = with_ner.detect(text)
    assert {f.kind for f in found} == {"email"}
    assert len(found) == 2


def test_an_address_is_one_finding_not_a_location_inside_it(with_ner: PiiDetector) -> None:
    text = "Deliver to 350 Fifth Avenue, New York, NY 10118 tomorrow."
    found = with_ner.detect(text)
    assert spans(found) == {at(text, "350 Fifth Avenue, New York, NY 10118", "address")}


@pytest.mark.parametrize(
    "text",
    [
        "Card 4111 1111 1111 1112 was declined.",  # Luhn fails
        "IBAN GB83 WEST 1234 5698 7654 32 is wrong.",  # mod 97 fails
        "IBAN DE89370400440532013 is too short.",  # wrong length for DE
        "SSN 000-12-3456 is a placeholder",
        "SSN 666-12-3456 is never issued",
        "SSN 912-12-3456 is never issued",
        "SSN 123-00-4567 has group 00",
        "SSN 123-45-0000 has serial 0000",
        "NI number DA 12 34 56 C uses a prefix never issued",
        "SIN 131 144 124 fails Luhn",
        "SIN 046 454 286 starts with 0, never issued",
        "The host 999.12.3.4 is not an address",
    ],
)
def test_checksum_and_range_failures_are_rejected(text: str) -> None:
    assert PATTERNS.detect(text) == []


@pytest.mark.parametrize(
    "text",
    [
        "Upgrade to version 2.14.3 before Friday.",
        "Build 1.4.22.7 fixed it.",
        "Order #4829113377 shipped on 2024-03-15.",
        "Your ticket number is 100234567.",
        "The meeting is on March 3, 2025 at 14:30.",
        "The invoice dated 03/15/2024 totals $12,400.00.",
        "Device MAC 00:1a:2b:3c:4d:5e, session 3f2c1a9e-8b7d-4c6e-9f1a-2b3c4d5e6f70.",
        "ISBN 978-3-16-148410-0 is out of print.",
        "Listen on port 8080 and retry at 09:45:00.",
        "Sales grew 12.5% to $4,200,000 this quarter.",
        "In C++, std::vector and a::b are types.",
        "Tracking 1Z9999999999999999 is in transit.",
        "Born to run sold 6 million copies by 2024-01-01.",
    ],
)
def test_hard_negatives_are_not_flagged(text: str) -> None:
    assert PATTERNS.detect(text) == []


def test_context_words_raise_the_score() -> None:
    plain = PATTERNS.detect("then 415-555-2671 and more")
    told = PATTERNS.detect("call me at 415-555-2671 and more")
    assert len(plain) == len(told) == 1
    assert told[0].score > plain[0].score
    assert all(0.0 <= f.score <= 1.0 for f in (*plain, *told))


def test_words_of_another_thing_lower_the_score_under_the_minimum() -> None:
    assert PATTERNS.detect("order id 415-555-2671") == []


def test_entities_and_min_score_select() -> None:
    text = "Mail a@example.com, call 415-555-2671."
    assert {f.kind for f in PiiDetector(entities=["phone"], ner=False).detect(text)} == {"phone"}
    assert PiiDetector(ner=False, min_score=0.99).detect("then 415-555-2671 and more") == []
    with pytest.raises(ValueError, match="unknown PII kinds"):
        PiiDetector(entities=["passport_of_mars"])


def test_kinds_are_the_issue_names() -> None:
    required = {"email", "phone", "credit_card", "iban", "us_ssn", "uk_nino", "ip_address", "date_of_birth"}
    required |= {"address", "person", "organization", "location"}
    assert required <= set(pii_kinds())
    found = PATTERNS.detect("a@example.com")
    assert found[0].detector == "pii"


def test_ner_off_never_imports_spacy() -> None:
    code = (
        "import sys\n"
        "from meshgate.guards.pii import PiiDetector\n"
        "found = PiiDetector(ner=False).detect('Alice Smith, alice@example.com, 415-555-2671')\n"
        "assert [f.kind for f in found] == ['email', 'phone'], found\n"
        "assert 'spacy' not in sys.modules\n"
        "found = PiiDetector(entities=['email']).detect('Alice Smith, alice@example.com')\n"
        "assert 'spacy' not in sys.modules, 'no NER kind asked: no model'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_detect_from_several_threads(with_ner: PiiDetector) -> None:
    texts = [
        f"Patient Maria Garcia, born 1980-0{i % 9 + 1}-12, phone 415-555-26{i:02d}, lives in Chicago."
        for i in range(24)
    ]
    expected = [with_ner.detect(t) for t in texts]
    with ThreadPoolExecutor(max_workers=6) as pool:
        got = list(pool.map(with_ner.detect, texts * 3))
    assert got == expected * 3
    assert all({"person", "date_of_birth", "phone"} <= {f.kind for f in found} for found in got)


def test_a_long_text_is_bounded_for_the_model(with_ner: PiiDetector) -> None:
    filler = "The committee reviewed the plan and agreed on the next steps. " * 4000  # ~250k characters
    text = "Angela Merkel spoke first. " + filler + "Email angela@example.org. Emmanuel Macron spoke last."
    found = with_ner.detect(text)
    assert at(text, "Angela Merkel", "person") in spans(found)
    assert at(text, "angela@example.org", "email") in spans(found)  # patterns read everything
    assert all(f.end <= pii_ner.MAX_CHARS for f in found if f.kind == "person")
    pieces = list(pii_ner.pieces(text))
    assert sum(len(p) for _, p in pieces) <= pii_ner.MAX_CHARS
    assert all(len(p) <= pii_ner.PIECE_CHARS for _, p in pieces)
    assert "".join(p for _, p in pieces) == text[: sum(len(p) for _, p in pieces)]


def test_firm_names_cues_and_name_particles(with_ner: PiiDetector) -> None:
    text = "Send the invoice to James Brown at Barron, Johns and Martinez."
    assert at(text, "Barron, Johns and Martinez", "organization") in spans(with_ner.detect(text))
    two_people = "I spoke with Benjamin Alves and Sian Edwards about the merger."
    assert {f.kind for f in with_ner.detect(two_people)} == {"person"}  # "X and Y" alone is no firm
    text = "Regards, Jayden van de Plas, Sitters & Volcke"
    found = spans(with_ner.detect(text))
    assert at(text, "Jayden van de Plas", "person") in found
    assert at(text, "Sitters & Volcke", "organization") in found


def test_role_words_and_acronyms_are_no_names(with_ner: PiiDetector) -> None:
    text = "Beneficiary IBAN: GB82 WEST 1234 5698 7654 32, SSN and DOB on file, paid in EUR."
    assert {f.kind for f in with_ner.detect(text)} == {"iban"}


def test_gazetteer_evidence_without_the_model() -> None:
    from meshgate.guards import pii_gazetteer

    text = "Forwarded by Rosalind Quigley to Jordan Street and Morgan Stanley Bank, then to Marcus T. Vell."
    pairs = {text[c.start : c.end] for c in pii_gazetteer.first_last_pairs(text, len(text))}
    assert pairs == {"Rosalind Quigley", "Marcus T. Vell"}  # a street and a bank are no people
    firm = "Signed: Martin Brunet S.A."
    assert pii_gazetteer.first_last_pairs(firm, len(firm)) == []  # a company suffix follows
    assert pii_gazetteer.looks_like_person("Priscilla Oyelaran")
    assert not pii_gazetteer.looks_like_person("Hope Valley Clinic")
    assert (
        pii_gazetteer.is_place("Paraguay") and pii_gazetteer.is_place("Ohio") and not pii_gazetteer.is_place("Python")
    )
    shipped = "Crates went from Trinidad and Tobago to New Mexico."
    found = {shipped[c.start : c.end] for c in pii_gazetteer.regions_in(shipped, len(shipped))}
    assert found == {"Trinidad and Tobago", "New Mexico"}


def test_first_names_and_places_correct_the_model(with_ner: PiiDetector) -> None:
    text = "Timesheets were signed off by Priscilla Oyelaran before the audit."
    assert at(text, "Priscilla Oyelaran", "person") in spans(with_ner.detect(text))
    text = "Our suppliers ship from Bosnia and Herzegovina and from Uruguay."
    found = spans(with_ner.detect(text))
    assert at(text, "Bosnia and Herzegovina", "location") in found
    assert at(text, "Uruguay", "location") in found
    text = "The loan came from the Bank of Ireland last spring."
    assert all(f.kind != "location" for f in with_ner.detect(text))  # a country inside a firm's name


def test_the_name_lists_are_checked_against_the_manifest(tmp_path: Path) -> None:
    from meshgate.guards import pii_gazetteer, textclassifier

    directory = textclassifier.data_dir()
    copy = tmp_path / "data"
    copy.mkdir()
    (copy / "MANIFEST.json").write_bytes((directory / "MANIFEST.json").read_bytes())
    (copy / pii_gazetteer.DATA_FILE).write_bytes((directory / pii_gazetteer.DATA_FILE).read_bytes() + b" ")
    with pytest.raises(textclassifier.ModelFileError):
        textclassifier.load_json(pii_gazetteer.DATA_FILE, copy)
