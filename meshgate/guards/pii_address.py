"""Postal addresses by shape: a house number, a capitalised street name and a street suffix, then
optionally a unit, a city, a state or province and a ZIP or postal code (US, Canada) or a postcode
(UK); PO boxes; military
addresses (APO/FPO/DPO); UK postcodes on their own.

The suffix list is the USPS one (Publication 28, appendix C1, full names and their standard
abbreviations) plus the British "Close", "Mews", "Gardens" and the like: without a suffix, "12
Angry Men" would be an address. Street names must be capitalised, so lowercase prose stays out.
"""

from __future__ import annotations

import re

from meshgate.guards.pii_patterns import Candidate, Scan, starts_a_token


def _split(words: str) -> list[str]:
    return [word for word in words.split(" ") if word]


_SUFFIXES = _split(
    "Alley Aly Annex Anx Arcade Arc Avenue Ave Av Bayou Byu Beach Bch Bend Bnd Bluffs? Blfs? Bottom Btm "
    "Boulevard Blvd Branch Br Bridge Brg Brook Brk Brooks Burgs? Bypass Byp Camp Cp Canyon Cyn Cape Cpe "
    "Causeway Cswy Centers? Ctr Circles? Cir Cliffs? Clfs? Club Clb Common Commons Corners? Cors? Course Crse "
    "Courts? Ct Cts Coves? Cv Creek Crk Crescent Cres Crest Crossing Xing Crossroad Crossroads Curve Dale Dl Dam "
    "Divide Dv Drives? Dr Drs Estates? Est Ests Expressway Expy Extensions? Ext Falls? Fls Ferry Fry Fields? Flds? "
    "Flats? Flts? Fords? Frd Forest Frst Forge Frg Forges Fork Frk Forks Fort Ft Freeway Fwy Gardens? Gdns? "
    "Gateway Gtwy Glens? Gln Greens? Grn Groves? Grv Harbors? Hbr Haven Hvn Heights Hts Highway Hwy Hills? Hl Hls "
    "Hollow Holw Inlet Island Is Islands Isle Junctions? Jct Keys? Ky Knolls? Knl Lakes? Lk Lks Land Landing Lndg "
    "Lane Ln Lights? Lgt Loaf Lf Locks? Lck Lodge Ldg Loop Mall Manors? Mnr Meadows? Mdws? Mews Mill Mills Mission "
    "Msn Motorway Mtwy Mount Mt Mountains? Mtn Neck Nck Orchard Orch Oval Overpass Opas Park Parks Parkways? Pkwy "
    "Pass Passage Psge Path Pike Pines? Pne Place Pl Plains? Pln Plaza Plz Points? Pt Pts Ports? Prt Prts Prairie Pr "
    "Radial Radl Ramp Ranch Rnch Rapids? Rpd Rest Rst Ridges? Rdg Rive?r Rvr Roads? Rd Rds Route Rte Row Rue Run "
    "Shoals? Shl Shores? Shr Skyway Skwy Springs? Spg Spur Spurs Squares? Sq Station Sta Stravenue Stra Stream Strm "
    "Streets? St Sts Summit Smt Terrace Ter Throughway Trwy Trace Trce Track Trak Trafficway Trfy Trail Trl Trailer "
    "Trlr Tunnel Tunl Turnpike Tpke Underpass Upas Unions? Un Valleys? Vly Viaduct Via Views? Vw Villages? Vlg "
    "Ville Vl Vista Vis Walks? Wall Way Ways Wells? Wl "
    # British and Commonwealth.
    "Close Cl Mews Gardens Gdns Grove Gr Hill Rise Row Square Walk Wharf Wynd Parade Pde Esplanade Green Gate "
    "Yard Quay Embankment Broadway"
)
_FULL_SUFFIXES = {s.lower() for s in _SUFFIXES if len(s.rstrip("?")) >= 4 and any(v in s for v in "aeiou")}
#: Capitalised suffixes and abbreviations ("Street", "St."), and full names in lower case as British
#: addresses write them ("Smith road"); never a lower-case abbreviation ("3 Apples st" is prose).
_SUFFIX = (
    r"(?:"
    + "|".join(sorted(set(_SUFFIXES), key=len, reverse=True))
    + r")\.?|(?:"
    + "|".join(sorted(_FULL_SUFFIXES, key=len, reverse=True))
    + r")"
)
_DIRECTION = r"(?:[NSEW]\.?|N\.?[EW]\.?|S\.?[EW]\.?|North|South|East|West|Northeast|Northwest|Southeast|Southwest)"
_WORD = r"(?:[A-Z][a-zA-Z'\-]*\.?|\d{1,3}(?:st|nd|rd|th))"
_NUMBER = r"\d{1,6}[A-Za-z]?(?:[-/]\d{1,4}[A-Za-z]?)?"
_UNIT = r"(?:Apt\.?|Apartment|Suite|Ste\.?|Unit|Flat|Floor|Fl\.?|Room|Rm\.?|Bldg\.?|Building|#)\s?#?[A-Za-z0-9-]{1,6}"
_STATES = _split(
    "AL AK AZ AR CA CO CT DE DC FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ NM NY NC ND OH OK "
    "OR PA RI SC SD TN TX UT VT VA WA WV WI WY PR GU VI AS MP AA AE AP "
    # Canadian provinces and territories.
    "AB BC MB NB NL NS NT NU ON PE QC SK YT"
)
_STATE_NAMES = (
    "Alabama|Alaska|Arizona|Arkansas|California|Colorado|Connecticut|Delaware|Florida|Georgia|Hawaii|Idaho|"
    "Illinois|Indiana|Iowa|Kansas|Kentucky|Louisiana|Maine|Maryland|Massachusetts|Michigan|Minnesota|Mississippi|"
    "Missouri|Montana|Nebraska|Nevada|New Hampshire|New Jersey|New Mexico|New York|North Carolina|North Dakota|"
    "Ohio|Oklahoma|Oregon|Pennsylvania|Rhode Island|South Carolina|South Dakota|Tennessee|Texas|Utah|Vermont|"
    "Virginia|Washington|West Virginia|Wisconsin|Wyoming"
)
_STATE = r"(?:" + "|".join(_STATES) + "|" + _STATE_NAMES + r")"
#: A US ZIP (+4) or a Canadian postal code (letter digit letter, digit letter digit; no D F I O Q U).
_ZIP = r"(?:\d{5}(?:-\d{4})?|[ABCEGHJ-NPRSTVXY]\d[ABCEGHJ-NPRSTV-Z] ?\d[ABCEGHJ-NPRSTV-Z]\d)"
#: Inward codes never use C, I, K, M, O or V; the outward code is one or two letters, a digit, and
#: an optional letter or digit. GIR 0AA is the one historical exception.
UK_POSTCODE = r"(?:[A-Z]{1,2}\d[A-Z\d]?|GIR) ?\d[ABD-HJLNP-UW-Z]{2}"
_CITY = r"[A-Z][a-zA-Z.'\-]+(?: [A-Z][a-zA-Z.'\-]+){0,3}"
_SEP = r"(?:,? ?\n|, ?| )"

_NAME = rf"(?:{_DIRECTION} )?(?:{_WORD} ){{0,3}}{_WORD} (?:{_SUFFIX})(?: {_DIRECTION}(?![a-z]))?"
_STREET = (
    # "Flat 4, Wright Wells" (British: the flat, no house number), or "[Suite 5, ]12 Main Street".
    rf"(?:(?:Flat|Studio|Apartment|Unit) \d{{1,4}}[A-Za-z]?,? {_NAME}"
    rf"|(?:{_UNIT},?\s)?{_NUMBER},? {_NAME})"
)
_TAIL = (
    rf"(?:{_SEP}{_UNIT})?"
    rf"(?:{_SEP}(?:{_CITY},? {_STATE}\.?,? {_ZIP}|{_CITY},? {_STATE}(?![\w])|{_CITY},? {UK_POSTCODE}"
    rf"|{_CITY}(?:,? {_CITY})?(?=[,.;]|\n|$)|{UK_POSTCODE}|{_ZIP}))?"
)
_PO_BOX = rf"(?i:P\.? ?O\.? Box|Post Office Box) \d{{1,6}}(?:{_SEP}{_CITY},? {_STATE},? {_ZIP})?"
_MILITARY = (
    rf"(?:(?:PSC|Unit|CMR) \d{{4}},? Box \d{{4}}|USN[SV] [A-Z][a-z]+|USCGC [A-Z][a-z]+)"
    rf"{_SEP}(?:APO|FPO|DPO) (?:AA|AE|AP) {_ZIP}"
)

_ADDRESS = re.compile(rf"(?<![\w])(?:{_STREET}{_TAIL}|{_PO_BOX}|{_MILITARY})(?![\w])")
_YEAR = re.compile(r"(?:19|20)\d{2}\b")
_YEAR_BEFORE = re.compile(r"\b(?:in|since|by|of|from|until|during|before|after) $")
_POSTCODE_ALONE = re.compile(rf"{UK_POSTCODE}(?![\w])")


#: Where an address can start: a short number ("42", "221B", "12-14") not inside a longer token.
_HOUSE_NUMBER = re.compile(r"\d{1,6}[A-Za-z]?(?![\w.:-]\w)")
_NOT_BEFORE_HOUSE_NUMBER = frozenset(".#/:-_")
#: Words that can stand before the first number of an address: "Flat 4, ...", "PO Box 12", "PSC
#: 1234, Box 5", "USNS Brown, FPO AE 12345"; the address pattern is tried from each.
_LEAD_WORD = re.compile(
    r"(?<![\w])(?:Flat|Studio|Apartment|Unit|Apt\.?|Suite|Ste\.?|Floor|Room|Bldg\.?|Building|#|P\.? ?O\.?|Post|"
    r"PSC|CMR|USN[SV]|USCGC)(?![\w])",
    re.IGNORECASE,
)
_LOOK_BACK = 32


def find_addresses(scan: Scan) -> list[Candidate]:
    text = scan.text
    found: list[Candidate] = []
    reached = 0  # the end of the last address: numbers inside it start nothing new
    for anchor in _HOUSE_NUMBER.finditer(text):
        if anchor.start() < reached or not starts_a_token(text, anchor.start(), _NOT_BEFORE_HOUSE_NUMBER):
            continue
        starts = [
            m.start() for m in _LEAD_WORD.finditer(text, max(reached, anchor.start() - _LOOK_BACK), anchor.start())
        ]
        best = None
        for start in (*starts, anchor.start()):
            match = _ADDRESS.match(text, start)
            if match is not None and match.end() > anchor.start() and (best is None or match.end() > best.end()):
                best = match
                break  # the earliest start that works covers the most
        if best is None or _is_a_year_phrase(scan.lowered, text, best.start()):
            continue
        end = best.end()
        # A city run caught at a sentence end keeps its full stop out of the span.
        while end > best.start() and text[end - 1] in ",. \n":
            end -= 1
        found.append(scan.candidate("address", best.start(), end, 0.75))
        reached = end
    for start in scan.letter_codes:
        match = _POSTCODE_ALONE.match(text, start)
        if match is None or any(c.start <= start < c.end for c in found):
            continue
        found.append(scan.candidate("address", start, match.end(), 0.55))
    return found


def _is_a_year_phrase(lowered: str, text: str, start: int) -> bool:
    """ "in 2019 Microsoft Research Park opened": a year, not a house number."""
    return bool(_YEAR.match(text, start) and _YEAR_BEFORE.search(lowered, max(0, start - 8), start))
