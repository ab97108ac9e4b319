"""Prompt injection and jailbreak: pattern rules plus a linear classifier shipped as arrays.

Two signals, combined by taking the larger (on the validation split the rules fire on no benign
prompt, so the max costs nothing there; the threshold is chosen on that combined score):

* rules for the classic shapes: "ignore/disregard/forget (all) previous instructions", "reveal your
  system prompt", "you are now DAN / in developer mode", chat-template role markers and delimiters
  ("<|im_start|>", "[INST]", "### system"), base64 blobs that decode to such instructions, and, for
  text from tools and documents, instructions addressed to the AI reading it;
* a cascade of two logistic models (guards/textclassifier.py). The lexical one, over hashed word
  1-2-grams and character 3-5-grams, scores every piece of text in a fraction of a millisecond.
  Only a piece whose lexical probability falls in the uncertain band [low, high) goes on to the
  second model, the same features plus the local MiniLM sentence vector (tens of milliseconds per
  piece on one thread): below the band a piece is benign, at or above it an injection, inside it the second
  model decides. The band and the second model's threshold were chosen on the validation split
  and held-out everyday requests (scripts/train_guards.py) with a budget on how much ordinary
  traffic may reach the second model; they ship in injection_embed.npz (`cascade`: low, high,
  threshold). `embeddings=False` runs the lexical model alone (with its own threshold).

The cascade's score is mapped so that 0.5 is its decision boundary whichever stage decided: below
the band the lexical probability is scaled by 0.5 / high (into [0, 0.5)), from the band's top into
[0.5, 1], and inside it the second model's probability is shifted (in logits) so that its threshold
lands on 0.5.

The model was trained with generated everyday requests among its negatives and its threshold is the
lowest with FPR <= 2% on the S-Labs validation split and <= 1% on everyday requests from templates
it never saw (scripts/train_guards.py): a guard that blocks "Hello!" gets switched off. In one- and
two-word texts its evidence is scaled down (short_text_logits), the rules still apply in full.

Long texts are read in windows of WINDOW_CHARS characters (at most MAX_WINDOWS of them, spread over
the text, the last one ending with it): rules and the classifier see only those, and the highest
score wins, so the work per call is bounded whatever the length. Tool results and documents longer
than 200 characters are prose the classifier never saw in training (it learnt from prompts): there
it scores the sentences that look addressed to a reader one by one (at most MAX_SENTENCES) instead
of windows, so a finding points at the sentence, not at the whole document. The second stage
embeds at most MAX_EMBEDDED pieces per text (the uncertain ones with the highest lexical score; the
others count as benign), each cut at EMBED_TOKENS tokens, so its worst case is bounded too.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from meshgate.guards.findings import DEFAULT_CONTEXT, Finding, ScanContext
from meshgate.guards.textclassifier import Embed, LazyModel, LinearModel, SharedEmbedder, windows

WINDOW_CHARS = 1000
WINDOW_OVERLAP = 200
MAX_WINDOWS = 12
MAX_SENTENCES = 48
MAX_BASE64_BLOBS = 4
MAX_FINDINGS = 4

#: Below this many words the classifier's evidence is scaled down (see short_text_logits).
SHORT_WORDS = 3

LEXICAL_MODEL = "injection_lexical.npz"
EMBED_MODEL = "injection_embed.npz"

#: The cascade's decision boundary on its (mapped) score; see the module's docstring.
CASCADE_THRESHOLD = 0.5
#: Uncertain pieces of one text that the second stage embeds at most (a 4,000-character prompt is
#: five windows; a document's addressed sentences can be dozens).
MAX_EMBEDDED = 6
#: MiniLM reads at most this many tokens of a piece (a 1,000-character window is about 250): the
#: start of a prompt is where its intent is, and the cost per piece stays fixed.
EMBED_TOKENS = 128

_MODELS = {name: LazyModel(name) for name in (LEXICAL_MODEL, EMBED_MODEL)}
#: The second stage's MiniLM, loaded by the first text that reaches it.
_EMBEDDER = SharedEmbedder(EMBED_TOKENS)


@dataclass(frozen=True, slots=True)
class Rule:
    kind: str  # "injection" or "jailbreak"
    score: float
    pattern: re.Pattern[str]
    #: Only in text that came from a tool or a document (indirect injection), where the signal is
    #: strong; in a user's own message the same words are often an ordinary request.
    indirect_only: bool = False


_FLAGS = re.IGNORECASE | re.MULTILINE
_ANY = r"(?:\W+\w+){0,3}?"  # up to three words in between
_PRIOR = r"(?:previous|prior|above|earlier|preceding|foregoing|original|initial|all|any|your|the\s+system|system)"
_RULES_SET = (
    r"(?:instructions?|prompts?|rules|directives?|directions|guidelines|guardrails|restrictions|constraints|"
    r"programming|context)"
)
_AI = r"(?:ai|a\.i\.|assistant|chatbot|bot|language\s+model|llm|gpt|chatgpt|claude|gemini|copilot|agent|model)"

RULES: tuple[Rule, ...] = (
    Rule(
        "injection",
        0.99,
        re.compile(
            rf"\b(?:ignore|disregard|forget|override|bypass|discard|drop|abandon)\b{_ANY}\W+{_PRIOR}\b{_ANY}\W+{_RULES_SET}\b",
            _FLAGS,
        ),
    ),
    Rule(
        "injection",
        0.98,
        re.compile(
            r"\b(?:reveal|print|show|display|repeat|output|leak|dump|tell\s+me|give\s+me|share|expose|recite)\b"
            r"(?:\W+\w+){0,3}?\W+(?:your|the)\s+(?:(?:full|entire|exact|original|initial|hidden|secret|internal)\s+)*"
            r"(?:system\s+(?:prompt|message|instructions?)|(?:initial|original|hidden|secret)\s+(?:prompt|instructions?))",
            _FLAGS,
        ),
    ),
    # Asking for the assistant's own setup (on the validation split: 58 attacks, no benign prompt).
    Rule(
        "injection",
        0.9,
        re.compile(
            r"\b(?:reveal|show|share|display|expose|disclose|output|print|dump|leak|tell\s+me|give\s+me|explain|describe|"
            r"list|what\s+(?:is|are|was|were))\b(?:\W+\w+){0,3}?\W+your\s+(?:\w+\s+)?(?:setup|configuration|config|"
            r"initiali[sz]ation|system\s+(?:prompt|message|config\w*)|hidden\s+\w+|secret\s+\w+|"
            r"(?:initial|original|underlying)\s+(?:prompt|instructions?|rules))\b",
            _FLAGS,
        ),
    ),
    Rule(
        "jailbreak",
        0.99,
        re.compile(
            r"\b(?:you\s+are\s+now|act\s+as|pretend\s+(?:to\s+be|you\s+are)|from\s+now\s+on\s+you\s+are)\s+"
            r"(?:a\s+|an\s+|in\s+)?(?:dan\b|dude\b|stan\b|aim\b|evil|unfiltered|uncensored|unrestricted|jailbroken|developer\s+mode)",
            _FLAGS,
        ),
    ),
    Rule(
        "jailbreak",
        0.99,
        re.compile(r"\bdo\s+anything\s+now\b|\bdeveloper\s+mode\s+(?:enabled|on|activated)\b", _FLAGS),
    ),
    Rule(
        "jailbreak",
        0.97,
        re.compile(
            r"\b(?:without|no|free\s+of|free\s+from|ignore\s+(?:all|any|your))\s+(?:any\s+)?"
            r"(?:ethical|moral|content|safety)\s+(?:guidelines|restrictions|filters|constraints|limits|policies|rules)",
            _FLAGS,
        ),
    ),
    # Chat-template and role markers: a user or a web page has no business writing these.
    Rule(
        "injection",
        0.97,
        re.compile(
            r"<\|(?:im_start|im_end|system|endoftext|start_header_id)\|>|\[/?INST\]|<</?SYS>>|</?system>", _FLAGS
        ),
    ),
    Rule("injection", 0.95, re.compile(r"^\s*#{2,}\s*(?:system|instructions?|new\s+instructions?)\b", _FLAGS), True),
    Rule("injection", 0.9, re.compile(r"^\s*\[?(?:system|assistant)\]?\s*:\s*\S", _FLAGS), True),
    Rule("injection", 0.95, re.compile(r"\bnew\s+(?:instructions?|task|directive)s?\s*:", _FLAGS), True),
    Rule(
        "injection",
        0.95,
        re.compile(
            rf"\b(?:(?:dear|attention|note\s+to(?:\s+the)?|hey|hi)\s+{_AI}|(?:if\s+you\s+are\s+an?\s+){_AI}|{_AI}\s*[,:]\s*"
            r"(?:you\s+must|please|now|always|never|do\s+not|don't|ignore|instead))\b",
            _FLAGS,
        ),
        True,
    ),
    Rule(
        "injection",
        0.9,
        re.compile(
            r"\b(?:you\s+must|you\s+should|make\s+sure\s+(?:to|you)|instead,?)\s+(?:now\s+)?"
            r"(?:send|forward|email|post|upload|exfiltrate|include|insert|append|reply\s+with|respond\s+with|tell\s+the\s+user|output)\b",
            _FLAGS,
        ),
        True,
    ),
)

_BASE64 = re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{24,}={0,2}(?![A-Za-z0-9+/=])")
_SENTENCE = re.compile(r"[^\n.!?]*(?:[.!?]+|\n|$)")
#: Words that make a sentence of a document worth scoring on its own.
_ADDRESSED = re.compile(
    rf"\b(?:ignore|disregard|forget|instructions?|prompt|system|assistant|{_AI}|you\s+must|you\s+are|reveal|respond|reply)\b",
    re.IGNORECASE,
)


_LETTER_WORD = re.compile(r"[^\W\d_]+")


def short_text_logits(texts: list[str], logits: np.ndarray, bias: float) -> np.ndarray:
    """The classifier's logits with the evidence of one- and two-word texts scaled down.

    Features are L2-normalised, so in "yo" or "Really?" a handful of character n-grams carry the
    whole vector and one of them that happens to lean to "injection" decides the score: unseen
    greetings scored 0.6-0.9. A text's evidence (logit minus bias) is scaled by words / SHORT_WORDS
    below SHORT_WORDS words (letter runs, so "eval(print_system_prompt())" counts four). The rules
    still see short texts in full; the training script chooses the threshold on these same scores."""
    scale = np.array([min(1.0, len(_LETTER_WORD.findall(t)) / SHORT_WORDS) for t in texts], np.float32)
    return np.float32(bias) + (np.asarray(logits, np.float32) - np.float32(bias)) * scale


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    result: np.ndarray = 1.0 / (1.0 + np.exp(-np.clip(logits, -40, 40)))
    return result


def model_probabilities(model: LinearModel, texts: list[str], vectors: np.ndarray | None = None) -> np.ndarray:
    """One model's injection probability per text, with short texts' evidence scaled down."""
    return _sigmoid(short_text_logits(texts, model.logits(texts, vectors)[:, 0], float(model.bias[0])))


@dataclass(frozen=True, slots=True)
class Band:
    """The cascade's operating point: lexical probabilities in [low, high) go to the second model,
    which flags from `threshold`."""

    low: float
    high: float
    threshold: float

    @classmethod
    def of(cls, model: LinearModel) -> Band:
        low, high, threshold = (float(v) for v in model.extras["cascade"][:3])
        if not 0.0 < low < high < 1.0 or not 0.0 < threshold < 1.0:
            raise ValueError(f"invalid cascade band {low}, {high}, {threshold}")
        return cls(low, high, threshold)

    def uncertain(self, lexical: np.ndarray) -> np.ndarray:
        result: np.ndarray = (lexical >= self.low) & (lexical < self.high)
        return result

    def lexical_scores(self, lexical: np.ndarray) -> np.ndarray:
        """Out-of-band lexical probabilities mapped around 0.5 (in-band ones not embedded: below it)."""
        below = 0.5 * lexical / self.high
        above = 0.5 + 0.5 * (lexical - self.high) / (1.0 - self.high)
        result: np.ndarray = np.where(lexical >= self.high, above, below)
        return result

    def second_scores(self, second: np.ndarray) -> np.ndarray:
        """The second model's probabilities shifted so that its threshold maps to 0.5."""
        clipped = np.clip(second, 1e-7, 1 - 1e-7)
        shift = np.log(self.threshold / (1.0 - self.threshold))
        return _sigmoid(np.log(clipped / (1.0 - clipped)) - shift)


def cascade_scores(
    band: Band, lexical: np.ndarray, second: Callable[[np.ndarray], np.ndarray], limit: int = MAX_EMBEDDED
) -> np.ndarray:
    """The cascade's scores of pieces whose lexical probabilities are `lexical`: `second(indices)`
    returns the second model's probabilities of those pieces, and is called only for uncertain
    ones, at most `limit` of them (the most suspicious; the rest count as benign)."""
    scores = band.lexical_scores(lexical)
    uncertain = np.flatnonzero(band.uncertain(lexical))
    if len(uncertain):
        chosen = uncertain[np.argsort(-lexical[uncertain], kind="stable")[:limit]]
        scores[chosen] = band.second_scores(second(chosen))
    return scores


def rule_matches(text: str, indirect: bool) -> Iterator[tuple[Rule, int, int]]:
    for rule in RULES:
        if rule.indirect_only and not indirect:
            continue
        for match in rule.pattern.finditer(text):
            yield rule, match.start(), match.end()


def _decoded_blobs(text: str) -> Iterator[tuple[str, int, int]]:
    """Base64 runs that decode to readable text (instructions smuggled past a filter)."""
    for count, match in enumerate(_BASE64.finditer(text)):
        if count >= MAX_BASE64_BLOBS:
            return
        blob = match.group()
        try:
            decoded = base64.b64decode(blob + "=" * (-len(blob) % 4), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            continue
        printable = sum(ch.isprintable() or ch.isspace() for ch in decoded)
        if decoded and printable / len(decoded) > 0.95:
            yield decoded[:WINDOW_CHARS], match.start(), match.end()


def _sentence_of(text: str, start: int, end: int) -> tuple[int, int]:
    """The sentence (or line) around text[start:end], trimmed of surrounding space."""
    left = max(text.rfind(mark, 0, start) for mark in (".", "!", "?", "\n")) + 1
    rights = [i for i in (text.find(mark, end) for mark in (".", "!", "?", "\n")) if i >= 0]
    right = min(rights) + 1 if rights else len(text)
    while left < right and text[left].isspace():
        left += 1
    while right > left and text[right - 1].isspace():
        right -= 1
    return left, max(right, end)


def _candidate_sentences(text: str) -> list[tuple[int, int, bool]]:
    """Sentences (or lines) worth scoring alone: (start, end, looks addressed to a reader)."""
    spans: list[tuple[int, int, bool]] = []
    for match in _SENTENCE.finditer(text):
        sentence = match.group()
        if len(sentence.strip()) >= 12:
            spans.append((match.start(), match.end(), _ADDRESSED.search(sentence) is not None))
    return spans


class InjectionDetector:
    """Finds prompt injection (kind "injection") and jailbreak attempts (kind "jailbreak").

    `embeddings`: run the cascade (the default): the lexical model everywhere, the MiniLM second
    model on uncertain pieces only; False: the lexical model alone. `embed`: the function that
    makes the second stage's 384-d vectors (default: the packaged MiniLM, loaded on first need; a
    test passes its own). `threshold`: the score from which a text is flagged; default the cascade's
    0.5, or the lexical model's own threshold without embeddings (chosen on the validation split).
    `second_stage_pieces` counts the pieces the second model has scored (tests and benches read it;
    approximate under concurrent calls).
    """

    uses_model = True

    name = "injection"

    def __init__(self, threshold: float | None = None, embed: Embed | None = None, embeddings: bool = True) -> None:
        self._lexical = _MODELS[LEXICAL_MODEL]
        self._second = _MODELS[EMBED_MODEL] if embeddings else None
        self._embed: Embed = embed if embed is not None else _EMBEDDER
        self._threshold = threshold
        self.second_stage_pieces = 0

    @property
    def embeddings(self) -> bool:
        return self._second is not None

    @property
    def threshold(self) -> float:
        if self._threshold is not None:
            return self._threshold
        if self._second is not None:
            return CASCADE_THRESHOLD
        return float(self._lexical.get().thresholds[0])

    def _probabilities(self, texts: list[str]) -> np.ndarray:
        lexical = model_probabilities(self._lexical.get(), texts)
        if self._second is None:
            return lexical
        second = self._second.get()

        def second_stage(indices: np.ndarray) -> np.ndarray:
            chosen = [texts[i] for i in indices]
            self.second_stage_pieces += len(chosen)
            return model_probabilities(second, chosen, self._embed(chosen))

        return cascade_scores(Band.of(second), lexical, second_stage)

    def score(self, text: str, context: ScanContext = DEFAULT_CONTEXT) -> float:
        """The text's injection probability: the largest of its findings' scores, or of its windows."""
        found = self._scan(text, context, keep_all=True)
        return max((f.score for f in found), default=0.0)

    def detect(self, text: str, context: ScanContext = DEFAULT_CONTEXT) -> list[Finding]:
        return self._scan(text, context, keep_all=False)

    def _scan(self, text: str, context: ScanContext, keep_all: bool) -> list[Finding]:
        if not text.strip():
            return []
        indirect = context.source in ("tool", "document")
        found: set[Finding] = set()
        spans = windows(text, WINDOW_CHARS, WINDOW_OVERLAP, MAX_WINDOWS)
        pieces = [text[a:b] for a, b in spans]
        extra_spans: list[tuple[int, int]] = []
        extra_pieces: list[str] = []
        sentences: list[tuple[int, int, bool]] = []
        # Rules, base64 blobs and candidate sentences are looked for in the windows only, so the
        # work stays bounded by MAX_WINDOWS * WINDOW_CHARS whatever the text's length.
        for (offset, _), piece in zip(spans, pieces, strict=True):
            for rule, start, end in rule_matches(piece, indirect):
                left, right = _sentence_of(piece, start, end)
                found.add(Finding(rule.kind, offset + left, offset + right, rule.score, self.name))
            for plain, start, end in _decoded_blobs(piece):
                if any(True for _ in rule_matches(plain, indirect)):
                    found.add(Finding("injection", offset + start, offset + end, 0.97, self.name))
                if len(extra_spans) < MAX_BASE64_BLOBS:
                    extra_spans.append((offset + start, offset + end))
                    extra_pieces.append(plain)
            if indirect and len(text) > 200:
                sentences += [(offset + a, offset + b, addressed) for a, b, addressed in _candidate_sentences(piece)]
        # Only sentences that look addressed to a reader: scoring every sentence of ordinary prose
        # flagged a third of XQuAD's Wikipedia paragraphs (bench/README.md, "Injection and moderation").
        unique = sorted({s for s in sentences if s[2]})[:MAX_SENTENCES]
        for start, end, _ in sorted(unique):
            extra_spans.append((start, end))
            extra_pieces.append(text[start:end])
        # A retrieved document or a tool's result is prose the classifier was not trained on (it
        # learnt from prompts): there it scores sentences one by one, never a window of prose.
        scored_spans = extra_spans if indirect and len(text) > 200 else spans + extra_spans
        scored_pieces = extra_pieces if indirect and len(text) > 200 else pieces + extra_pieces
        probabilities = self._probabilities(scored_pieces) if scored_pieces else np.zeros(0, np.float32)
        for (start, end), probability in zip(scored_spans, probabilities, strict=True):
            found.add(Finding("injection", start, end, round(float(probability), 4), self.name))
        if keep_all:
            return sorted(found, key=lambda f: f.start)
        return _precise([f for f in found if f.score >= self.threshold])


def _precise(flagged: list[Finding]) -> list[Finding]:
    """A few findings, the narrowest span of each overlapping group, with the group's best score
    (a sentence or a rule's match says more than a window, the window's probability still counts)."""
    kept: list[Finding] = []
    for finding in sorted(flagged, key=lambda f: (f.end - f.start, -f.score, f.start)):
        for index, other in enumerate(kept):
            if other.start < finding.end and finding.start < other.end:
                kind = "jailbreak" if "jailbreak" in (other.kind, finding.kind) else other.kind
                kept[index] = Finding(kind, other.start, other.end, max(other.score, finding.score), other.detector)
                break
        else:
            if len(kept) < MAX_FINDINGS:
                kept.append(finding)
    return sorted(kept, key=lambda f: f.start)
