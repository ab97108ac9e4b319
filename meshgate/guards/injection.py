"""Prompt injection and jailbreak: pattern rules plus a linear classifier shipped as arrays.

Two signals, combined by taking the larger (on the validation split the rules fire on no benign
prompt, so the max costs nothing there; the threshold is chosen on that combined score):

* rules for the classic shapes: "ignore/disregard/forget (all) previous instructions", "reveal your
  system prompt", "you are now DAN / in developer mode", chat-template role markers and delimiters
  ("<|im_start|>", "[INST]", "### system"), base64 blobs that decode to such instructions, and, for
  text from tools and documents, instructions addressed to the AI reading it;
* a logistic model over hashed word 1-2-grams and character 3-5-grams (guards/textclassifier.py),
  optionally with the local MiniLM sentence vector: pass `embed` to use the weights trained with it.

The model was trained with generated everyday requests among its negatives and its threshold is the
lowest with FPR <= 2% on the S-Labs validation split and <= 1% on everyday requests from templates
it never saw (scripts/train_guards.py): a guard that blocks "Hello!" gets switched off. In one- and
two-word texts its evidence is scaled down (short_text_logits), the rules still apply in full.

Long texts are read in windows of WINDOW_CHARS characters (at most MAX_WINDOWS of them, spread over
the text, the last one ending with it): rules and the classifier see only those, and the highest
score wins, so the work per call is bounded whatever the length. Tool results and documents longer
than 200 characters are prose the classifier never saw in training (it learnt from prompts): there
it scores the sentences that look addressed to a reader one by one (at most MAX_SENTENCES) instead
of windows, so a finding points at the sentence, not at the whole document.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from meshgate.guards.findings import DEFAULT_CONTEXT, Finding, ScanContext
from meshgate.guards.textclassifier import Embed, LazyModel, windows

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

_MODELS = {name: LazyModel(name) for name in (LEXICAL_MODEL, EMBED_MODEL)}


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

    `threshold`: the probability from which a text is flagged; default the one chosen on the
    validation split for a false-positive rate of at most 2%. `embed`: a function that turns texts
    into the local MiniLM's 384-d vectors (guards.textclassifier.minilm_embedder() makes one); with
    it the detector runs the weights trained with those vectors, without it the lexical weights.
    """

    uses_model = True

    name = "injection"

    def __init__(self, threshold: float | None = None, embed: Embed | None = None) -> None:
        self._embed = embed
        self._model = _MODELS[EMBED_MODEL if embed is not None else LEXICAL_MODEL]
        self._threshold = threshold

    @property
    def threshold(self) -> float:
        if self._threshold is None:
            return float(self._model.get().thresholds[0])
        return self._threshold

    def _probabilities(self, texts: list[str]) -> np.ndarray:
        model = self._model.get()
        vectors = self._embed(texts) if self._embed is not None else None
        logits = short_text_logits(texts, model.logits(texts, vectors)[:, 0], float(model.bias[0]))
        result: np.ndarray = 1.0 / (1.0 + np.exp(-np.clip(logits, -40, 40)))
        return result

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
