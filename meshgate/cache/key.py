"""What makes two requests the same: the normalised request, hashed, and the tenant it belongs to.

The exact key is a SHA-256 over the request encoded by msgspec with sorted mapping keys: one C call
over the request's bytes (the encoding and the hash each run once, in C, whatever the size), so no
Python work grows with the request on the event loop. Struct fields are encoded in declaration
order whatever their order in the body, and `order="deterministic"` sorts the keys of free-form
objects (tool schemas, `response_format`), so neither changes the key.

In the key: the model name clients used (the route), every message, the tools and tool choice,
every sampling parameter (temperature, top_p, seed, n, stop, penalties, logit_bias, max tokens,
logprobs, response_format, reasoning_effort, ...), and whether the answer streams. Left out, because
they do not change the answer: `stream_options`, `user`, `safety_identifier`, `metadata`, `store`,
`service_tier`, the prompt-cache hints and `prediction`.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass

import msgspec

from meshgate.protocol import ChatCompletionRequest, TextPart, UserMessage

#: Bumped when the normalisation changes, so that old entries are never matched.
KEY_VERSION = b"meshgate-cache-v1\0"

_IGNORED = {
    "stream": None,
    "stream_options": None,
    "user": None,
    "safety_identifier": None,
    "metadata": None,
    "store": None,
    "service_tier": None,
    "prompt_cache_key": None,
    "prompt_cache_retention": None,
    "prompt_cache_options": None,
    "prediction": None,
}

_encoder = msgspec.json.Encoder(order="deterministic")


def _digest(*parts: bytes) -> str:
    # The same bytes as hashing each part then a NUL in turn (so the same keys), in one C call: the
    # constructor of an OpenSSL hash costs more than hashing a short request.
    return hashlib.sha256(b"".join((KEY_VERSION, b"\0".join(parts), b"\0"))).hexdigest()


@functools.lru_cache(maxsize=4096)  # a few teams, keys and models, asked on every call
def name_hash(name: str) -> str:
    """A short fixed-width stand-in for a team, key or model name in backend keys (no escaping needed)."""
    return hashlib.sha256(name.encode()).hexdigest()[:16]


def normalised(request: ChatCompletionRequest) -> ChatCompletionRequest:
    return msgspec.structs.replace(request, **_IGNORED)


def request_digest(request: ChatCompletionRequest, stream: bool, data_class: str = "") -> str:
    """The exact key of a request (without its tenant). The call's data class is part of it: an
    answer produced under one class (by the deployments it allows) never serves another."""
    return _digest(b"stream" if stream else b"complete", data_class.encode(), _encoder.encode(normalised(request)))


def deterministic(request: ChatCompletionRequest) -> bool:
    """Whether the same request gets the same answer: one choice, and greedy decoding
    (`temperature: 0`) or a fixed `seed`. Anything else is sampled afresh on purpose and is
    cached only when the model's config or the request opts in."""
    if request.n not in (None, 1):
        return False
    return request.temperature == 0 or request.seed is not None


def last_user_text(request: ChatCompletionRequest) -> str | None:
    """The text of the last turn, when it is a user's turn of text only (else no semantic lookup)."""
    last = request.messages[-1]
    if not isinstance(last, UserMessage):
        return None
    if isinstance(last.content, str):
        return last.content
    if all(isinstance(part, TextPart) for part in last.content):
        return "\n".join(part.text for part in last.content)  # type: ignore[union-attr]
    return None


def context_digest(request: ChatCompletionRequest, stream: bool, data_class: str = "") -> str:
    """What must match exactly for a semantic hit: everything but the last user turn (the rest of
    the conversation, the system prompt, the tools, the model and the sampling parameters)."""
    rest = msgspec.structs.replace(normalised(request), messages=request.messages[:-1])
    return _digest(b"semantic", b"stream" if stream else b"complete", data_class.encode(), _encoder.encode(rest))


_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_NEGATION = re.compile(r"\b(?:not|no|never|none|nor|without|cannot)\b|n't\b", re.IGNORECASE)
_WORD = re.compile(r"\w+")


def guard_digest(text: str) -> str:
    """What two questions must share besides their meaning, for a semantic hit (guards_compatible):
    the numbers they name and whether they negate ("What is 12 + 7?" and "What is 12 + 8?", "Is it
    safe?" and "Is it not safe?" embed very close); and the order of their words when they use the
    same words ("Convert Celsius to Fahrenheit" and "Convert Fahrenheit to Celsius" embed at 0.99:
    the embedding model reads a bag of words). 48 hex characters: facts, bag of words, word order."""
    numbers = sorted(set(_NUMBER.findall(text)))
    negated = len(_NEGATION.findall(text)) % 2
    words = _WORD.findall(text.lower())
    facts = _digest(b"guard", " ".join(numbers).encode(), b"%d" % negated)[:16]
    bag = _digest(b"bag", " ".join(sorted(words)).encode())[:16]
    order = _digest(b"order", " ".join(words).encode())[:16]
    return facts + bag + order


def guards_compatible(a: str, b: str) -> bool:
    """Same numbers and negation, and not the same words in another order."""
    if a[:16] != b[:16]:
        return False
    return not (a[16:32] == b[16:32] and a[32:] != b[32:])


@dataclass(frozen=True)
class Tenant:
    """Whose answers an entry belongs to. `scope_key` is the key id when the cache is scoped to
    keys, else empty (shared by the team). `creator` is the key that stored it (for purges)."""

    team: str
    scope_key: str
    creator: str

    def prefix(self, model: str) -> str:
        return _prefix(self.team, self.scope_key, model)


@functools.lru_cache(maxsize=4096)  # the same few (team, key, model) on every call
def _prefix(team: str, scope_key: str, model: str) -> str:
    return f"{name_hash(team)}:{name_hash(scope_key)}:{name_hash(model)}"
