"""Words near a match that make it more (or less) likely to be the PII it looks like.

"call me at" before ten digits makes them a phone number, "order" before them an order number.
The windows are small and looked up in the lowered text once per match, so the cost stays linear.
"""

from __future__ import annotations

import re

#: Characters before (and after) a match searched for its context words.
WINDOW_BEFORE = 48
WINDOW_AFTER = 24
#: Added to a match's score when a supporting word is near, subtracted for a contradicting one.
BOOST = 0.2
PENALTY = 0.35


def _words(*words: str) -> re.Pattern[str]:
    return re.compile(r"(?<![a-z])(?:" + "|".join(words) + r")(?![a-z])")


SUPPORTING: dict[str, re.Pattern[str]] = {
    "email": _words("e-?mail", "mail", "contact", "reach", "write to", "inbox"),
    "phone": _words(
        "phone", "call", "calls", "tel", "telephone", "mobile", "cell", "text me", "text", "sms", "whatsapp",
        "fax", "dial", "ring", "number", "contact", "reach", "landline", "hotline",
    ),
    "credit_card": _words("card", "credit", "debit", "visa", "mastercard", "amex", "american express", "discover",
                          "payment", "pay", "charge", "charged", "cc", "pan"),
    "iban": _words("iban", "account", "bank", "transfer", "wire", "sepa", "payee", "beneficiary"),
    "us_ssn": _words("ssn", "ssns", "social security", "social", "ss#", "taxpayer", "tin"),
    "uk_nino": _words("national insurance", "nino", "ni number", "ni no", "insurance number", "hmrc"),
    "ca_sin": _words("sin", "social insurance", "canada", "canadian"),
    "ip_address": _words("ip", "ipv4", "ipv6", "address", "server", "host", "connect", "connected", "login",
                         "logged", "from", "client", "gateway", "ping"),
    "address": _words("address", "live", "lives", "living", "located", "ship", "shipping", "deliver", "delivery",
                      "mail", "send", "home", "residence", "moved", "visit", "office", "at"),
}  # fmt: skip

#: Words that say the digits are something else: an order, a build, a product code.
CONTRADICTING: dict[str, re.Pattern[str]] = {
    "phone": _words(
        "order",
        "invoice",
        "tracking",
        "ticket",
        "ref",
        "reference",
        "version",
        "build",
        "serial",
        "isbn",
        "sku",
        "part",
        "model",
        "po",
        "case",
        "confirmation",
        "transaction",
        "batch",
        "lot",
        "release",
        "id",
        "sin",
        "ssn",
        "nino",
        "iban",
    ),
    "ip_address": _words("version", "release", "build", "v"),
    "credit_card": _words("tracking", "isbn", "serial"),
    "us_ssn": _words("order", "tracking", "invoice", "serial", "part", "ticket"),
}


def adjust(kind: str, lowered: str, start: int, end: int, score: float) -> float:
    """`score` raised when a supporting word for `kind` is near `lowered[start:end]`, lowered when
    only a contradicting one is, clamped to [0, 1]."""
    before = lowered[max(0, start - WINDOW_BEFORE) : start]
    after = lowered[end : end + WINDOW_AFTER]
    # A contradicting word right before wins over a supporting one further off: "ticket number".
    contradicting = CONTRADICTING.get(kind)
    if contradicting is not None and contradicting.search(before[-24:]):
        return max(0.0, score - PENALTY)
    supporting = SUPPORTING.get(kind)
    if supporting is not None and (supporting.search(before) or supporting.search(after)):
        return min(1.0, score + BOOST)
    return score


def has_supporting(kind: str, lowered: str, start: int, end: int) -> bool:
    supporting = SUPPORTING.get(kind)
    if supporting is None:
        return False
    before = lowered[max(0, start - WINDOW_BEFORE) : start]
    after = lowered[end : end + WINDOW_AFTER]
    return bool(supporting.search(before) or supporting.search(after))
