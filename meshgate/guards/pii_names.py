"""Rules around spaCy's small model for names, organisations and places: what it tags that is no
name ("SSN", "Python"), what kind a firm name is ("Wells, Adkins and Hughes", "Jones LLC"), and the
names that words around them announce ("Dear ...", "my name is ...", "Dr. ...") when the model
misses them. Pure functions over the text: no model here.
"""

from __future__ import annotations

import re

from meshgate.guards.pii_patterns import Candidate

#: Capitalised words prompts use that the small model takes for organisations or places: the
#: acronyms of the PII itself, of computing, and programming languages.
NOT_NAMES = frozenset(
    word
    for line in (
        "SSN SSNs DOB D.O.B. MAC IP IPs NI NINO IBAN SIN PIN ID IDs URL URLs API APIs CPU GPU RAM USB PDF CSV",
        "JSON XML YAML HTML HTTP HTTPS SQL FAQ ETA ASAP FYI TBD OK PS AM PM UTC GMT ISBN UUID SKU VAT EIN TIN ZIP",
        "W-2 LLM LLMs AI ML NLP CLI SDK OS VPN DNS SSH TLS SSL",
        "EUR USD GBP JPY CHF CAD AUD CNY INR SEK NOK DKK PLN",
        "Python JavaScript TypeScript Java Rust Kotlin Golang Ruby Perl Scala Haskell Linux Unix Docker",
        "Kubernetes Markdown LaTeX Regex WiFi Wi-Fi Bluetooth Email E-mail Phone Tel Fax Card",
    )
    for word in line.split(" ")
)
COMPANY_SUFFIX = (
    r"(?:Inc\.?|Incorporated|LLC|L\.L\.C\.|Ltd\.?|Limited|PLC|plc|Corp\.?|Corporation|Company|Co\.|Group|"
    r"Holdings|Partners|Associates|LLP|LP|GmbH(?: & Co\. KG)?|AG|KG|KGaA|SE|e\.V\.|S\.A\.S?\.?|SA|SAS|SARL|"
    r"S\.A\.R\.L\.|S\.p\.A\.|S\.r\.l\.|S\.L\.|B\.V\.|BV|N\.V\.|NV|VOF|Pty Ltd|Oy|AB|ASA|"
    r"(?:and|&|et|und|en) (?:Sons|Fils|Söhne|Zonen))"
)
_NAME_WORD = r"[A-Z][\w'\u2019-]+"
#: "Wells, Adkins and Hughes", "Martin & Kemp": three or more capitalised words listed with commas
#: and a last "and", or two joined by "&" ("Smith and Jones" alone is as often two people).
_FIRM = re.compile(
    rf"(?<![\w]){_NAME_WORD}(?:, {_NAME_WORD})+,? (?:and|&|et|und|en) {_NAME_WORD}(?![\w])"
    rf"|(?<![\w]){_NAME_WORD} & {_NAME_WORD}(?![\w])"
)
#: One to four capitalised words and a company suffix: "Jones LLC", "Müller Schmidt GmbH".
_WITH_SUFFIX = re.compile(rf"(?<![\w])(?:[A-Z][\w'\u2019.&-]* ){{1,4}}{COMPANY_SUFFIX}(?![\w])")
#: Words a capitalised run may start with that are no part of a name: sentence openers and roles.
_LEADING_WORDS = re.compile(
    r"(?:(?:The|A|An|At|To|From|For|With|By|Of|In|On|Our|Your|My|Their|His|Her|Send|Contact|Call|Ask|Email|Dear|"
    r"Hi|Hello|Please|Thanks|Regards|Summary|Note|Employer|Employee|Applicant|Patient|Company|Customer|Client|"
    r"Vendor|Supplier|Payee|Beneficiary|Account|Holder|Name|Manager|Director|Officer|Agent|User),? )+"
)
#: Name particles and hyphenated parts the small model cuts a name at: "Loes van den Hoek-van der
#: Brink", "Jayden van de Plas", "Denis-Gilbert Gomez".
_NAME_TAIL = re.compile(
    r"(?:(?:[ -](?:van|von|de|der|den|du|da|di|del|della|dos|das|la|le|ten|ter|bin|ibn|al))+[ -][A-Z][\w'\u2019]*"
    r"|-[A-Z][\w'\u2019]*)+"
)
_NEXT_NAME = re.compile(r" [A-Z][\w'\u2019-]+")
_ENDS_WITH_PARTICLE = re.compile(r" (?:van|von|de|der|den|du|da|di|del|della|dos|das|la|le|ten|ter|bin|ibn|al)$")
_HYPHENATED = re.compile(r"[A-Z][a-z]+-[A-Z][a-z]+")
_WORD_BEFORE = re.compile(r"[A-Z][a-z]+ $")
#: Words that announce a person's name right after them.
_PERSON_CUE = re.compile(
    r"(?:\b(?:Mr|Mrs|Ms|Mx|Miss|Dr|Prof|Sir|Dame)\.? |\bDear |\b[Mm]y name is |\bI'm |\bI am |"
    r"\b(?:Regards|Sincerely|Thanks|Cheers),\s*)"
    r"((?:[A-Z][a-z'\u2019-]+ ){1,2}[A-Z][a-z'\u2019-]+)(?![\w])"
)
RULE_SCORE = 0.8


def plausible(value: str) -> bool:
    """A name has a capital letter and no digit, and is not one of NOT_NAMES."""
    stripped = value.strip()
    return (
        len(stripped) > 1
        and any(ch.isupper() for ch in stripped)
        and not any(ch.isdigit() for ch in stripped)
        and stripped not in NOT_NAMES
    )


def relabel(text: str, start: int, end: int, kind: str) -> str:
    """The model's kind, corrected where the shape says organisation: a company suffix, or two
    capitalised words joined by a hyphen with no name before or after them ("Hewlett-Packard", but
    not "David-Franck Petitjean")."""
    value = text[start:end]
    if re.search(rf"(?<![\w]){COMPANY_SUFFIX}$", value):
        return "organization"
    if (
        _HYPHENATED.fullmatch(value)
        and not _WORD_BEFORE.search(text, max(0, start - 20), start)
        and not _NEXT_NAME.match(text, end)
    ):
        return "organization"
    return kind


def tidy(text: str, start: int, end: int, kind: str) -> tuple[int, int] | None:
    """The span of a tagged entity without leading role or sentence words ("Beneficiary IBAN" ->
    "IBAN", then dropped as no name), and for a person with the particles and hyphenated parts the
    model cut off; None when nothing plausible is left."""
    lead = _LEADING_WORDS.match(text, start, end)
    if lead is not None:
        start = lead.end()
    if end <= start or not plausible(text[start:end]):
        return None
    if kind == "person":
        if _ENDS_WITH_PARTICLE.search(text, start, end):
            following = _NEXT_NAME.match(text, end)  # "Loes van den" + " Hoek"
            if following is not None:
                end = following.end()
        tail = _NAME_TAIL.match(text, end)
        if tail is not None:
            end = tail.end()
        if " " not in text[start:end]:
            # "Denis-Gilbert" tagged alone: the surname after it belongs to the name.
            following = _NEXT_NAME.match(text, end)
            if following is not None and "-" in text[start:end]:
                end = following.end()
    return start, end


def rule_entities(text: str, limit: int, tagged: list[Candidate]) -> list[Candidate]:
    """Names after a cue, firm names and names with a company suffix, in `text[:limit]`; a firm
    never starts inside a person's name, announced by a cue or `tagged` by the model ("Regards,
    Louise Taylor, Allen, Bailey and Farmer")."""
    cued = [Candidate("person", m.start(1), m.end(1), RULE_SCORE) for m in _PERSON_CUE.finditer(text, 0, limit)]
    found = list(cued)
    people = cued + [c for c in tagged if c.kind == "person"]
    for pattern in (_FIRM, _WITH_SUFFIX):
        for match in pattern.finditer(text, 0, limit):
            start = match.start()
            for person in people:
                if person.start <= start < person.end:
                    start = person.end
            while start < match.end() and text[start] in ", ":
                start += 1
            lead = _LEADING_WORDS.match(text, start, match.end())
            if lead is not None:
                start = lead.end()
            if match.end() - start > 3 and (pattern is _WITH_SUFFIX or _FIRM.fullmatch(text, start, match.end())):
                found.append(Candidate("organization", start, match.end(), RULE_SCORE))
    return found


def combine(tagged: list[Candidate], rules: list[Candidate]) -> list[Candidate]:
    """Rule entities, and the model's where no rule entity overlaps them (the rule knows the kind)."""
    kept = list(rules)
    for candidate in tagged:
        if not any(candidate.start < r.end and r.start < candidate.end for r in rules):
            kept.append(candidate)
    return kept
