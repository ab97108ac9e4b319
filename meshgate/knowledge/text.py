"""Text normalisation for keyword search: tokens, English stop words, and FTS5 queries built so that
no user text can be an FTS5 syntax error.

User text never reaches FTS5's query language as syntax: every term goes inside a double-quoted
string (FTS5's escape for a string is doubling the quote), so `NEAR`, `AND`, `*`, `-`, `:`,
parentheses and quotes in a question are only words or separators. The index's tokenizer (porter
over unicode61) then splits and stems each quoted string exactly as it did the documents.
"""

from __future__ import annotations

import re
import unicodedata

#: English stop words dropped from keyword queries (not from the index: document lengths stay true).
#: The common English list of search engines (Lucene's, extended with the pronouns, auxiliaries and
#: question words that questions are made of); measured in bench/retrieval.py.
STOP_WORDS = frozenset(
    """
    a about above after again against all am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have
    having he her here hers herself him himself his how i if in into is it its itself just me more most
    my myself no nor not now of off on once only or other our ours ourselves out over own same she
    should so some such than that the their theirs them themselves then there these they this those
    through to too under until up very was we were what when where which while who whom why will with
    would you your yours yourself yourselves s t d ll m re ve
    """.split()  # noqa: SIM905 (a word list reads better as text)
)

_WORD = re.compile(r"\w+", re.UNICODE)


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens (Unicode letters, digits and `_`), in order."""
    return [match.group(0) for match in _WORD.finditer(text.lower())]


def query_terms(text: str) -> list[str]:
    """The distinct content words of a query, in order: stop words removed, unless nothing else is
    left (a query of stop words only, "the who", still searches for them)."""
    tokens = tokenize(text)
    content = [token for token in tokens if token not in STOP_WORDS]
    chosen = content or tokens
    return list(dict.fromkeys(chosen))


def quote(term: str) -> str:
    """One FTS5 string: inside double quotes nothing is syntax; a quote is escaped by doubling it."""
    return '"' + term.replace('"', '""') + '"'


def match_any(text: str) -> str | None:
    """An FTS5 MATCH expression for any of the query's content words (BM25 ranks by how many and how
    rare), or None when the text has no word at all."""
    terms = query_terms(text)
    if not terms:
        return None
    return " OR ".join(quote(term) for term in terms)


def _separator(char: str) -> bool:
    """Whether a character surely ends a word for the index's tokenizer (space, punctuation, symbol)."""
    return unicodedata.category(char)[0] in "PSZC"


def whole_words(text: str) -> list[str]:
    """The words of `text` that are whole in any string containing it: those with a separator on
    both sides inside `text`. A word touching either end may be part of a longer word in a chunk
    ("ane" of "jane"), so a search for `text` as a substring must not require it as a term."""
    words = []
    for match in _WORD.finditer(text):
        start, end = match.span()
        if start > 0 and end < len(text) and _separator(text[start - 1]) and _separator(text[end]):
            words.append(match.group(0).lower())
    return words


def match_all(words: list[str]) -> str | None:
    """An FTS5 MATCH expression for chunks holding every one of these words (None for no words)."""
    if not words:
        return None
    return " AND ".join(quote(word) for word in dict.fromkeys(words))
