"""Secrets in text: provider API keys and tokens, private keys, credentials in URLs, JWTs, and
high-entropy strings next to a secret-like word.

Three tiers of certainty, reflected in the scores:

- fixed-prefix formats (``ghp_``, ``AKIA``, ``sk-ant-``, ``SG.``, ``-----BEGIN ... PRIVATE KEY-----``)
  score 0.9 to 0.99, higher still when the format carries a checksum that verifies (GitHub and npm
  tokens end in a CRC32 of their random part) or a structure that decodes (a JWT header with "alg");
- formats that are only a shape (a 40-character AWS secret key, a Telegram bot token, a Discord
  token) score 0.7 to 0.9 and some need a nearby word ("aws", "secret") to be reported at all;
- a high-entropy string scores 0.6 and is reported only when a secret-like word (password, token,
  api_key, secret, ...) sits just before it on the same line: entropy alone flags hashes, UUIDs and
  base64 blobs all day long.

Every regex is compiled once at import, anchored on a literal prefix where the format has one (the
regex engine then skips ahead with a fast substring search) and free of nested quantifiers, so a scan
is linear in the text. The patterns learn from Yelp's detect-secrets 1.5 plugins; nothing here
imports it.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from meshgate.guards.findings import DEFAULT_CONTEXT, Finding, ScanContext

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

#: Scores. A checksum or decodable structure is as sure as a pattern can be.
VERIFIED = 0.99
FIXED_PREFIX = 0.95
SHAPE_ONLY = 0.8
ENTROPY = 0.6

Validator = Callable[[re.Match[str]], float | None]
"""Given a match, the score to report, or None to drop it (a failed structural check)."""


@dataclass(frozen=True, slots=True)
class _Rule:
    kind: str
    pattern: re.Pattern[str]
    score: float
    #: The regex group whose span is the secret (0: the whole match).
    group: int | str = 0
    validate: Validator | None = None
    #: Literals one of which the text must contain for the rule to run at all: a substring test is
    #: far cheaper than a regex that has no literal prefix to skip ahead with.
    requires: tuple[str, ...] = ()
    #: The character before the match must not continue a token (what a leading \b would say, but a
    #: pattern that starts with a literal lets the regex engine skip ahead with a substring search,
    #: and one that starts with \b or a lookbehind tries every position: 50x slower).
    boundary: bool = False
    #: Lowercase literals to find in the lowercased text; the pattern is then matched (not searched)
    #: from each one, after walking back over `anchor_back` characters (a URL's scheme before "://").
    anchors: tuple[str, ...] = ()
    anchor_back: str = ""


def _base62(number: int, width: int) -> str:
    digits = ""
    while number:
        number, rest = divmod(number, 62)
        digits = _BASE62[rest] + digits
    return digits.rjust(width, "0")


def crc32_suffix(random_part: str) -> str:
    """The 6-character base62 CRC32 that GitHub and npm append to a token's 30 random characters."""
    return _base62(binascii.crc32(random_part.encode("ascii")), 6)


def _checksummed(match: re.Match[str]) -> float:
    """GitHub (ghp_...) and npm (npm_...) tokens: 30 random base62 characters, then their CRC32."""
    body = match.group("body")
    return VERIFIED if crc32_suffix(body[:30]) == body[30:] else 0.9


def _b64url_json(part: str) -> object:
    padded = part + "=" * (-len(part) % 4)
    return json.loads(base64.urlsafe_b64decode(padded.encode("ascii")).decode("utf-8"))


def _jwt(match: re.Match[str]) -> float | None:
    """A JWT only when its header decodes to a JSON object naming an "alg"."""
    try:
        header = _b64url_json(match.group("header"))
    except (ValueError, UnicodeDecodeError):
        return None
    return VERIFIED if isinstance(header, dict) and "alg" in header else None


def _discord(match: re.Match[str]) -> float | None:
    """A Discord bot token's first part is the base64 of the bot's numeric id."""
    first = match.group(0).split(".", 1)[0]
    try:
        decoded = base64.urlsafe_b64decode(first + "=" * (-len(first) % 4))
    except (ValueError, binascii.Error):
        return None
    return 0.9 if decoded.isdigit() else None


def _telegram(match: re.Match[str]) -> float:
    # Bot tokens issued since 2017 start their secret half with "AA"; older ones are shape-only.
    return 0.9 if match.group("secret").startswith("AA") else 0.7


_PLACEHOLDER_PASSWORDS = frozenset(
    {"password", "passwd", "pass", "pwd", "secret", "changeme", "example", "user", "username", "pw", "mypassword"}
)


def _real_password(value: str) -> bool:
    """False for the passwords documentation writes: ``password``, ``***``, ``<password>``, ``${PASS}``."""
    lowered = value.lower()
    if lowered in _PLACEHOLDER_PASSWORDS or value[0] in "$<{%*[(" or set(value) <= {"x", "X", "*", "."}:
        return False
    return not (lowered.startswith("your") or lowered.startswith("my_") or "password" in lowered)


def _url_credentials(match: re.Match[str]) -> float | None:
    return FIXED_PREFIX if _real_password(match.group("password")) else None


def _url_credentials_other(match: re.Match[str]) -> float | None:
    return 0.85 if _real_password(match.group("password")) else None


# Lookarounds stand in for \b where a token's alphabet includes "-" or "_" (which \b treats unevenly).
_TOKEN_END = r"(?![A-Za-z0-9_\-])"
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_DB_SCHEMES = r"postgres(?:ql)?|mysql|mariadb|mongodb(?:\+srv)?|rediss?|amqps?|mssql|sqlserver|clickhouse|cockroachdb"


def _token(
    kind: str, pattern: str, score: float, *, validate: Validator | None = None, requires: tuple[str, ...] = ()
) -> _Rule:
    """A rule for a token that starts with a literal: no leading \\b in the pattern (see `boundary`)."""
    return _Rule(kind, re.compile(pattern + _TOKEN_END), score, validate=validate, requires=requires, boundary=True)


_URL_SCHEME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789+.-"

_RULES: tuple[_Rule, ...] = (
    _Rule(
        "private_key",
        # The whole block; a truncated one (no END line) runs to the end of its base64 body.
        re.compile(
            r"-----BEGIN (?P<label>(?:RSA |DSA |EC |OPENSSH |ENCRYPTED |PGP |SSH2 ENCRYPTED )?"
            r"PRIVATE KEY(?: BLOCK)?)-----"
            r"(?:[\s\S]{0,16384}?-----END (?P=label)-----|[A-Za-z0-9+/=\s:,\-]{0,16384}[A-Za-z0-9+/=])"
        ),
        VERIFIED,
    ),
    _Rule(
        "private_key",
        re.compile(r"PuTTY-User-Key-File-[23]: [^\n]*(?:\n[^\n]*){0,80}?\nPrivate-MAC: [0-9a-f]+"),
        VERIFIED,
    ),
    _token("aws_access_key", r"A(?:KIA|SIA|BIA|CCA|3T[A-Z0-9])[A-Z0-9]{16}", FIXED_PREFIX),
    _Rule(
        "aws_secret_key",
        # 40 base64 characters after a key name that says AWS or secret, within the same line.
        re.compile(
            r"(?:aws|secret)[^\n]{0,40}?[=:>\s\"'`](?P<secret>(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=]))",
            re.IGNORECASE,
        ),
        0.85,
        "secret",
        anchors=("aws", "secret"),
    ),
    _token("github_token", r"gh[pousr]_(?P<body>[A-Za-z0-9]{36})", 0.9, validate=_checksummed),
    _token("github_token", r"github_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59}", VERIFIED),
    _token(
        "gitlab_token",
        r"gl(?:pat|dt|rt|ptt|ft|soat|cbt|oas)-[A-Za-z0-9_\-]{20,64}(?:\.[0-9a-z]{2}\.[0-9a-z]{7,10})?",
        FIXED_PREFIX,
    ),
    _token("slack_token", r"xox[abposre]-[0-9]{6,}-[A-Za-z0-9\-]{8,}", FIXED_PREFIX),
    _Rule(
        "slack_webhook",
        re.compile(
            r"https://hooks\.slack\.com/(?:services|workflows|triggers)/T[A-Za-z0-9_]+/[A-Za-z0-9_]+/[A-Za-z0-9_]+"
        ),
        FIXED_PREFIX,
    ),
    _token("stripe_key", r"sk_live_[0-9a-zA-Z]{24,99}", FIXED_PREFIX),
    _token("stripe_key", r"rk_live_[0-9a-zA-Z]{24,99}", FIXED_PREFIX),
    _token("stripe_key", r"[sr]k_test_[0-9a-zA-Z]{24,99}", 0.85),
    # Publishable keys are public by design: reported, but below a default blocking threshold.
    _token("stripe_key", r"pk_live_[0-9a-zA-Z]{24,99}", 0.6),
    _token("anthropic_api_key", r"sk-ant-(?:api|admin|sid)\d{2}-[A-Za-z0-9_\-]{80,120}", VERIFIED),
    _token("openai_api_key", r"sk-[A-Za-z0-9_\-]{0,40}T3BlbkFJ[A-Za-z0-9_\-]{20,}", VERIFIED),
    _token("openai_api_key", r"sk-(?:proj|svcacct|admin)-[A-Za-z0-9_\-]{40,200}", FIXED_PREFIX),
    # Legacy sk-<48>: other providers (DeepSeek, Moonshot, ...) copied the shape, hence the lower score.
    _token("openai_api_key", r"sk-[A-Za-z0-9]{32,64}", 0.8),
    _token("google_api_key", r"AIza[0-9A-Za-z_\-]{35}", FIXED_PREFIX),
    _Rule("azure_storage_key", re.compile(r"AccountKey=(?P<secret>[A-Za-z0-9+/]{86}==)"), VERIFIED, "secret"),
    _Rule(
        "azure_storage_key",
        re.compile(
            r"(?:azure|storage|account_?key)[^\n]{0,40}?(?P<secret>(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{86}==)", re.I
        ),
        0.85,
        "secret",
        anchors=("azure", "storage", "accountkey", "account_key"),
    ),
    _Rule(
        "azure_sas_token",
        re.compile(r"[?&]sig=(?P<secret>[A-Za-z0-9%+/]{43,}(?:%3D|=)*)"),
        0.8,
        "secret",
        anchors=("sig=",),
        anchor_back="?&",
    ),
    _token("twilio_api_key", r"SK[0-9a-f]{32}", 0.85),
    _token("twilio_account_sid", r"AC[0-9a-f]{32}", 0.7),
    _token("sendgrid_api_key", r"SG\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43}", VERIFIED),
    _token("npm_token", r"npm_(?P<body>[A-Za-z0-9]{36})", 0.9, validate=_checksummed),
    _Rule(
        "npm_token",
        re.compile(r":_authToken=(?P<secret>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"),
        0.9,
        "secret",
    ),
    _token("pypi_token", r"pypi-AgE(?:IcHlwaS5vcmc|NdGVzdC5weXBpLm9yZw)[A-Za-z0-9_\-]{50,}", VERIFIED),
    _token(
        "discord_token",
        r"[MNO][A-Za-z0-9_\-]{23,25}\.[A-Za-z0-9_\-]{6}\.[A-Za-z0-9_\-]{27,38}",
        0.9,
        validate=_discord,
        requires=(".",),
    ),
    _Rule(
        "discord_webhook",
        re.compile(r"https://(?:ptb\.|canary\.)?discord(?:app)?\.com/api/webhooks/\d{15,20}/[A-Za-z0-9_\-]{60,70}"),
        FIXED_PREFIX,
    ),
    _Rule(
        "telegram_bot_token",
        re.compile(r"\d{8,10}:(?P<secret>[A-Za-z0-9_\-]{35})" + _TOKEN_END),
        0.9,
        validate=_telegram,
        boundary=True,
        anchors=(":",),
        anchor_back="0123456789",
    ),
    _token("mailgun_api_key", r"key-[0-9a-f]{32}", 0.85),
    _token("square_token", r"sq0(?:atp|csp|idp)-[0-9A-Za-z_\-]{22,43}", FIXED_PREFIX),
    _token("shopify_token", r"shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}", VERIFIED),
    _token("heroku_api_key", r"HRKU-[A-Za-z0-9_\-]{58,64}", FIXED_PREFIX),
    _Rule(
        "heroku_api_key",
        re.compile(
            r"heroku[^\n]{0,40}?(?P<secret>\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b)", re.I
        ),
        0.8,
        "secret",
        anchors=("heroku",),
    ),
    _token("digitalocean_token", r"do[por]_v1_[a-f0-9]{64}", VERIFIED),
    _token("huggingface_token", r"hf_[A-Za-z]{34}", 0.9),
    _token("huggingface_token", r"api_org_[A-Za-z]{34}", 0.9),
    _Rule(
        "connection_string",
        re.compile(
            rf"(?:{_DB_SCHEMES})://(?P<user>[^\s:/@\"'`]*):(?P<password>[^\s@/\"'`]+)@[^\s\"'`<>]+",
            re.IGNORECASE,
        ),
        FIXED_PREFIX,
        validate=_url_credentials,
        anchors=("://",),
        anchor_back=_URL_SCHEME_CHARS,
    ),
    _Rule(
        "basic_auth_url",
        re.compile(
            rf"(?!(?:{_DB_SCHEMES})://)[a-z][a-z0-9+.\-]{{1,20}}://(?P<user>[^\s:/@\"'`]+):"
            r"(?P<password>[^\s@/\"'`]+)@[^\s\"'`<>/]+",
            re.IGNORECASE,
        ),
        0.85,
        validate=_url_credentials_other,
        anchors=("://",),
        anchor_back=_URL_SCHEME_CHARS,
    ),
    _token(
        "jwt",
        r"(?P<header>eyJ[A-Za-z0-9_\-]{10,})\.eyJ[A-Za-z0-9_\-]{2,}\.[A-Za-z0-9_\-]*",
        VERIFIED,
        validate=_jwt,
    ),
)


def _rule_matches(rule: _Rule, text: str, lowered: str) -> Iterator[re.Match[str]]:
    if rule.requires and not any(literal in text for literal in rule.requires):
        return
    if not rule.anchors:
        for match in rule.pattern.finditer(text):
            if rule.boundary and match.start() > 0 and text[match.start() - 1] in _TOKEN_CHARS:
                continue
            yield match
        return
    starts: set[int] = set()
    for anchor in rule.anchors:
        at = lowered.find(anchor)
        while at >= 0:
            start = at
            while rule.anchor_back and start > 0 and at - start < 20 and lowered[start - 1] in rule.anchor_back:
                start -= 1
            starts.add(start)
            at = lowered.find(anchor, at + 1)
    last_end = -1
    for start in sorted(starts):
        if rule.boundary and start > 0 and text[start - 1] in _TOKEN_CHARS:
            continue
        anchored = rule.pattern.match(text, start)
        if anchored is not None and anchored.start(rule.group) >= last_end:
            last_end = anchored.end(rule.group)
            yield anchored


# --- high-entropy strings next to a secret-like word -------------------------------------------

#: Secret-like words, found by substring search in the ASCII-lowercased text ("pass" covers password,
#: passwd, passphrase; "auth" covers Authorization, auth_token; "key" covers api_key, apikey, key=).
SECRET_WORDS = ("pass", "pwd", "secret", "token", "key", "credential", "auth")
# The base64 and hex alphabets, plus the symbols people put in passwords.
# "=" may end a candidate (base64 padding) but not start one, so NAME=value splits at the "=".
_CANDIDATE = re.compile(
    r"(?<![\w+/\-.!#$%&*@^~?])[\w+/\-.!#$%&*@^~?][\w+/\-=.!#$%&*@^~?]{15,255}(?![\w+/\-=!#$%&*@^~?])", re.ASCII
)
#: A capitalised or lowercase run of 3+ letters; random base62 has few of them (26/62 per character).
_WORDISH = re.compile(r"[A-Z]?[a-z]{3,}")
_HEX = frozenset("0123456789abcdefABCDEF")
#: How far before a candidate (on its line) a secret-like word may sit.
KEYWORD_WINDOW = 48


def shannon_entropy(value: str) -> float:
    """Bits per character of `value` over its own symbol frequencies."""
    counts: dict[str, int] = {}
    for char in value:
        counts[char] = counts.get(char, 0) + 1
    length = len(value)
    return -sum(n / length * math.log2(n / length) for n in counts.values())


def looks_random(value: str) -> bool:
    """A random token (base64 or hex alphabet, or a password with symbols), not an identifier, path or word.

    The threshold scales with the length (a 20-character string cannot reach the 4.5 bits a random
    64-character base64 string has) and letters must mix with digits: ``refresh_token_lifetime`` and
    ``SomeLongClassName`` have entropy too."""
    stripped = value.rstrip("=")
    length = len(stripped)
    if length < 16 or "://" in value or stripped.count(".") > 2 or "=" in stripped:
        return False  # too short, a URL, a dotted name, or key=value (base64 has "=" only at the end)
    separators = sum(stripped.count(c) for c in "_.-/")
    if separators >= 3 and separators > 0.1 * length:
        return False  # words joined by separators: self._CRAM_MD5_AUTH, a UUID, a path
    if sum(len(word) for word in _WORDISH.findall(stripped)) > 0.5 * length:
        return False  # mostly words: UpdatedSampleSubnetID2, getAccessTokenForUser
    if stripped.startswith("eyJ") and stripped.count(".") != 2:
        return False  # base64 of a JSON object that is not a JWT: a pagination cursor, not a secret
    has_digit = any(c.isdigit() for c in stripped)
    has_alpha = any(c.isalpha() for c in stripped)
    if not (has_digit and has_alpha):
        return False
    entropy = shannon_entropy(stripped)
    if set(stripped) <= _HEX:
        return length >= 20 and entropy >= 0.8 * math.log2(min(length, 16))  # hex tops out at 4 bits
    if not (any(c.isupper() for c in stripped) and any(c.islower() for c in stripped)):
        return False  # a base64 secret mixes cases; all-lower strings are names, hex-like ids or words
    return entropy >= 0.78 * math.log2(min(length, 64))


def _high_entropy(text: str, lowered: str, covered: list[tuple[int, int]]) -> Iterator[Finding]:
    """Candidates are looked for only just after a secret-like word: the words are rare, so this
    costs far less than testing every long token of the text."""
    word_ends: set[int] = set()
    for word in SECRET_WORDS:
        at = lowered.find(word)
        while at >= 0:
            word_ends.add(at + len(word))
            at = lowered.find(word, at + 1)
    seen: set[int] = set()
    for word_end in sorted(word_ends):
        line_end = text.find("\n", word_end)
        stop = min(len(text) if line_end < 0 else line_end, word_end + KEYWORD_WINDOW + 256)
        for match in _CANDIDATE.finditer(text, word_end, stop):
            start, end = match.span()
            if start > word_end + KEYWORD_WINDOW:
                break
            if start in seen or any(s < end and start < e for s, e in covered):
                continue
            seen.add(start)
            if "-----" in text[word_end:start]:
                continue  # the body of a PEM block (public key, certificate) after its "KEY-----" line
            if looks_random(match.group(0)):
                yield Finding("high_entropy_string", start, end, ENTROPY, SecretsDetector.name)


def _ascii_lower(text: str) -> str:
    """`text` lowercased without changing any offset (str.lower turns "İ" into two characters)."""
    lowered = text.lower()
    return lowered if len(lowered) == len(text) else text.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class SecretsDetector:
    """API keys, tokens, private keys, credentials in URLs, JWTs and keyword-adjacent random strings."""

    name = "secrets"

    def detect(self, text: str, context: ScanContext = DEFAULT_CONTEXT) -> list[Finding]:
        findings: list[Finding] = []
        lowered = _ascii_lower(text)
        for rule in _RULES:
            for match in _rule_matches(rule, text, lowered):
                score: float | None = rule.score
                if rule.validate is not None:
                    score = rule.validate(match)
                if score is None:
                    continue
                start, end = match.span(rule.group)
                findings.append(Finding(rule.kind, start, end, score, self.name))
        findings = _drop_contained(findings)
        findings.extend(_high_entropy(text, lowered, [(f.start, f.end) for f in findings]))
        findings.sort(key=lambda f: (f.start, f.end))
        return findings


def _drop_contained(findings: list[Finding]) -> list[Finding]:
    """One finding per secret: a span inside another's (a JWT inside a connection string, a generic
    ``sk-`` inside an ``sk-proj-`` key) is dropped for the enclosing, more specific one."""
    ordered = sorted(findings, key=lambda f: (f.start, -(f.end - f.start), -f.score))
    kept: list[Finding] = []
    for finding in ordered:
        if any(k.start <= finding.start and finding.end <= k.end for k in kept):
            continue
        kept.append(finding)
    return kept
