"""First names as evidence of a person, for the names the small NER model misses or mistypes.

Data: `data/person_first_names.json`, 5,163 lower-cased given names, the union of
`names/dist.female.first` (sha256 bd2f310f...ec77b358) and `names/dist.male.first` (sha256
0a5078ef...0f2470b) from the PyPI package `names` 0.3.0 (MIT; sdist sha256 726e4625...2a671), which
are the US Census Bureau's 1990 "frequently occurring first names" files (a US government work,
public domain). Not Faker's lists: the PII bench fills its sentences with Faker. The file is checked
against `data/MANIFEST.json` (sha256) when first loaded, like the guard models.

Evidence, used by meshgate/guards/pii_ner.py:
- `first_last_pairs`: a capitalised known first name followed by one or two capitalised words (an
  initial may sit between) is a person, unless a word says organisation or place ("Jordan Street",
  "Grace Hospital", "Morgan Stanley Bank");
- `looks_like_person`: an entity the model typed organisation or place that is such a pair is a
  person ("Christina Castillo" tagged ORG).
First names that are as often ordinary words or places (May, Will, Mark, Georgia...) are left out.
"""

from __future__ import annotations

import functools
import re

from meshgate.guards.pii_names import COMPANY_SUFFIX as _COMPANY_SUFFIX
from meshgate.guards.pii_patterns import Candidate
from meshgate.guards.textclassifier import load_json

DATA_FILE = "person_first_names.json"
#: Given names that are common words, months, places or brands at the start of a capitalised run.
AMBIGUOUS_FIRST_NAMES = frozenset(
    word
    for line in (
        "may june april august will bill mark grant rose joy hope art guy faith grace dawn ivy summer autumn",
        "jack frank long young major king lane page price chase pat rich ray don sue van le la de del",
        "carol crystal amber jade ruby pearl iris daisy holly lily violet olive ginger candy honey sugar",
        "christian king earl duke prince royal sterling chance case cash miles wade wood forest river",
        "georgia virginia carolina dakota florida india china asia africa austin dallas houston phoenix",
        "jordan lincoln washington jackson madison paris london sydney victoria florence adelaide",
        "sunday monday tuesday wednesday thursday friday saturday january march",
        "general private best love happy merry sharp gay rocky dusty sandy stormy misty windy",
        "so an in on my the is it no yes al el ma pa",
    )
    for word in line.split(" ")
)
#: Words that make a capitalised run an organisation or a place, not a person.
NOT_PERSON_WORDS = frozenset(
    word
    for line in (
        "street st avenue ave road rd lane drive boulevard way park square place court hospital clinic",
        "university college school academy institute bank group inc llc ltd corp company co foundation",
        "trust church center centre hotel restaurant cafe airport station mall store shop market county",
        "city state island islands river lake mountain valley bay beach hall house tower building bridge",
        "partners associates holdings systems solutions services technologies labs studio studios",
        "international global consulting capital ventures media press news motors airlines insurance",
        "pharmacy museum library gallery theatre theater stadium arena",
    )
    for word in line.split(" ")
)
_WORD = r"[A-Z][a-z\u00e0-\u00ff'\u2019]+(?:-[A-Z][a-z\u00e0-\u00ff'\u2019]+)?"
#: A run of capitalised words, initials allowed inside: "Contact Jermaine Stephens", "Mary J. Blige".
_RUN = re.compile(rf"(?<![\w.@]){_WORD}(?: (?:[A-Z]\.|{_WORD}))*(?![\w@])")
_TOKEN = re.compile(rf"[A-Z]\.|{_WORD}")
#: A company suffix right after the words: "Martin Brunet S.A." is a firm.
_COMPANY_AFTER = re.compile(rf",? {_COMPANY_SUFFIX}(?!\w)")
PAIR_SCORE = 0.75


@functools.lru_cache(maxsize=1)
def first_names() -> frozenset[str]:
    """The shipped first names, lower-cased, without the ambiguous ones (sha256-checked on load)."""
    data = load_json(DATA_FILE)
    return frozenset(str(name) for name in data["first_names"]) - AMBIGUOUS_FIRST_NAMES


def _is_person_run(words: list[str]) -> bool:
    return (
        len(words) >= 2
        and words[0].lower() in first_names()
        and not any(word.lower().rstrip(".") in NOT_PERSON_WORDS for word in words)
    )


def looks_like_person(value: str) -> bool:
    """Two or three capitalised words starting with a known first name, none of them an
    organisation or place word: "Christina Castillo", not "Morgan Stanley Bank"."""
    words = [word for word in value.split(" ") if not re.fullmatch(r"[A-Z]\.", word)]
    return 2 <= len(words) <= 3 and all(re.fullmatch(_WORD, word) for word in words) and _is_person_run(words)


def first_last_pairs(text: str, limit: int) -> list[Candidate]:
    """People by a known first name and one or two capitalised words after it, in `text[:limit]`:
    in a capitalised run the name starts at the first known first name ("Contact Jermaine
    Stephens" -> "Jermaine Stephens"); runs with an organisation or place word are skipped."""
    found: list[Candidate] = []
    for run in _RUN.finditer(text, 0, limit):
        tokens = list(_TOKEN.finditer(text, run.start(), run.end()))
        if any(token.group(0).lower() in NOT_PERSON_WORDS for token in tokens):
            continue
        for index, token in enumerate(tokens):
            if len(token.group(0)) > 2 and token.group(0).lower() in first_names():
                rest = [t for t in tokens[index + 1 :] if len(t.group(0)) > 2][:2]
                if rest and not _COMPANY_AFTER.match(text, rest[-1].end()):
                    found.append(Candidate("person", token.start(), rest[-1].end(), PAIR_SCORE))
                break
    return found


# -- places ----------------------------------------------------------------------------------------

PLACES_FILE = "places.json"
#: Place names that are as often a person's first name or surname, or part of a firm's name.
AMBIGUOUS_PLACES = frozenset({"Washington", "Jersey", "Lincoln", "Jackson", "Madison", "Chester", "Reading"})
PLACE_SCORE = 0.8


@functools.lru_cache(maxsize=1)
def _places() -> tuple[frozenset[str], frozenset[str], re.Pattern[str]]:
    """(countries and US states, cities, a pattern for the countries and states in a text)."""
    data = load_json(PLACES_FILE)
    census_first = frozenset(str(name) for name in load_json(DATA_FILE)["first_names"])
    regions = frozenset(str(name) for name in (*data["countries"], *data["us_states"]))
    # "Georgia Smith", "Jordan Lee": regions named like people are found only by the model.
    scanned = sorted(
        (name for name in regions if name.lower() not in census_first and name not in AMBIGUOUS_PLACES),
        key=len,
        reverse=True,
    )
    pattern = re.compile(r"(?<![\w-])(?:" + "|".join(re.escape(name) for name in scanned) + r")(?![\w-])")
    cities = frozenset(str(name) for name in data["cities"]) - AMBIGUOUS_PLACES
    return regions, cities, pattern


def is_place(value: str) -> bool:
    """A country, a US state or a city of 100,000 people or more, by its exact English name."""
    regions, cities, _ = _places()
    return value in regions or value in cities


def regions_in(text: str, limit: int) -> list[Candidate]:
    """Countries and US states named in `text[:limit]` ("Antigua and Barbuda", "New Mexico")."""
    _, _, pattern = _places()
    return [Candidate("location", m.start(), m.end(), PLACE_SCORE) for m in pattern.finditer(text, 0, limit)]
