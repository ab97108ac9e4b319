"""Checksums and validity rules of the numbered identifiers the PII detector finds.

Each function takes the matched characters (separators included) and says whether they can be a
real identifier: a regex alone flags order numbers and version strings, the checksum is what tells
a card number from sixteen random digits.
"""

from __future__ import annotations

import ipaddress

#: IBAN length per country (ISO 13616 registry): a right length is a second check besides mod 97.
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29,
    "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip

#: NINO prefixes HMRC never issues (and the letters neither position may hold).
_NINO_BAD_PREFIXES = frozenset({"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"})
_NINO_BAD_FIRST = frozenset("DFIQUV")
_NINO_BAD_SECOND = frozenset("DFIOQUV")

#: SSNs that were published (advertising, the Woolworth wallet card) and so are never a person's.
_SSN_PUBLISHED = frozenset({"078051120", "219099999", "123456789", "111111111", "333333333"})


def digits_of(value: str) -> str:
    return "".join(ch for ch in value if ch.isdigit())


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check of card numbers and Canadian SINs."""
    if not digits.isdigit():
        return False
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def card_number_valid(value: str) -> bool:
    """12 (Maestro) or 13 to 19 digits, a known issuer prefix, and the Luhn check."""
    digits = digits_of(value)
    if not 12 <= len(digits) <= 19 or len(set(digits)) == 1:
        return False
    if len(digits) == 12 and not digits.startswith(_MAESTRO):
        return False  # only Maestro issues 12-digit numbers
    if not _known_card_prefix(digits):
        return False
    return luhn_valid(digits)


_MAESTRO = ("50", "56", "57", "58", "6")


def _known_card_prefix(digits: str) -> bool:
    first2 = int(digits[:2])
    first4 = int(digits[:4])
    return (
        digits[0] == "4"  # Visa
        or 51 <= first2 <= 55
        or 2221 <= first4 <= 2720  # Mastercard
        or first2 in (34, 37)  # American Express
        or first2 in (36, 38, 39) or 300 <= int(digits[:3]) <= 305  # Diners Club
        or digits.startswith(("6011", "65")) or 644 <= int(digits[:3]) <= 649  # Discover
        or first2 == 35 or digits.startswith(("1800", "2131"))  # JCB (the last two: 15-digit numbers)
        or digits.startswith(("62", "81"))  # UnionPay
        or digits.startswith(_MAESTRO)  # Maestro and national schemes
    )  # fmt: skip


def iban_valid(value: str) -> bool:
    """The country's length and the ISO 7064 mod-97 check (the remainder must be 1)."""
    compact = "".join(value.split()).upper()
    country = compact[:2]
    if IBAN_LENGTHS.get(country) != len(compact) or not compact[2:4].isdigit() or not compact.isalnum():
        return False
    rearranged = compact[4:] + compact[:4]
    numeric = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(numeric) % 97 == 1


def us_ssn_valid(value: str) -> bool:
    """Area 000, 666 and 900-999, group 00 and serial 0000 are never issued."""
    digits = digits_of(value)
    if len(digits) != 9 or digits in _SSN_PUBLISHED or len(set(digits)) == 1:
        return False
    area, group, serial = int(digits[:3]), int(digits[3:5]), int(digits[5:])
    return area != 0 and area != 666 and area < 900 and group != 0 and serial != 0


def uk_nino_valid(value: str) -> bool:
    """Two prefix letters (some never used), six digits, a suffix A to D."""
    compact = "".join(value.split()).upper()
    if len(compact) != 9:
        return False
    prefix = compact[:2]
    return (
        prefix not in _NINO_BAD_PREFIXES
        and prefix[0] not in _NINO_BAD_FIRST
        and prefix[1] not in _NINO_BAD_SECOND
        and compact[2:8].isdigit()
        and compact[8] in "ABCD"
    )


def ca_sin_valid(value: str) -> bool:
    """Nine digits passing Luhn; 0 and 8 as first digit are never issued."""
    digits = digits_of(value)
    return len(digits) == 9 and digits[0] not in "08" and luhn_valid(digits)


def ip_address_valid(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True
