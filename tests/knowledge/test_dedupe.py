"""Exact and near duplicates: hashes, MinHash estimates against true Jaccard, stable bytes, LSH index."""

from __future__ import annotations

import hashlib
import random
import re
import subprocess
import sys

import numpy as np
import pytest

from meshgate.knowledge.dedupe import (
    NEAR_DUPLICATE_THRESHOLD,
    MinHasher,
    NearDuplicateIndex,
    content_hash,
    text_hash,
)

VOCABULARY = [f"w{i}" for i in range(3000)]


def words(rng: random.Random, count: int) -> list[str]:
    return [rng.choice(VOCABULARY) for _ in range(count)]


def jaccard(a: str, b: str) -> float:
    def shingles(text: str) -> set[tuple[str, ...]]:
        tokens = re.findall(r"\w+", text.casefold())
        return {tuple(tokens[i : i + 5]) for i in range(len(tokens) - 4)}

    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


def test_content_and_text_hashes() -> None:
    assert content_hash(b"abc") == hashlib.sha256(b"abc").hexdigest()
    assert text_hash("Hello   World\n\nAgain") == text_hash("hello world again")
    assert text_hash("Straße") == text_hash("STRASSE")  # casefolded
    assert text_hash("ﬁle") == text_hash("file")  # NFKC
    assert text_hash("hello world") != text_hash("hello word")


def test_signature_shape_and_stable_bytes() -> None:
    hasher = MinHasher()
    signature = hasher.signature("The quick brown fox jumps over the lazy dog")
    assert signature.dtype == np.uint64 and signature.shape == (128,)
    raw = MinHasher.to_bytes(signature)
    assert len(raw) == 1024
    assert np.array_equal(MinHasher.from_bytes(raw), signature)
    # Pinned: a stored signature must compare equal with one made by any later process or version.
    assert hashlib.sha256(raw).hexdigest()[:16] == PINNED_SIGNATURE_SHA256
    with pytest.raises(ValueError):
        MinHasher.from_bytes(b"\x00" * 12)


PINNED_SIGNATURE_SHA256 = "dc9ab40dcf55b034"


def test_signature_matches_a_pure_python_reference() -> None:
    """The documented algorithm, written with Python integers: what another implementation must do."""
    mask = (1 << 64) - 1

    def blake(label: str) -> int:
        return int.from_bytes(hashlib.blake2b(label.encode(), digest_size=8).digest(), "little")

    def mix(z: int) -> int:
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    text = "One two three four five six seven, eight!"
    tokens = re.findall(r"\w+", text.casefold())
    keys = [blake(f"meshgate-shingle-{i}") for i in range(5)]
    shingles = set()
    for start in range(len(tokens) - 4):
        value = 0
        for offset in range(5):
            value = mix(value ^ blake(tokens[start + offset]) ^ keys[offset])
        shingles.add(value)
    expected = [min(mix(s ^ blake(f"meshgate-minhash-{i}")) for s in shingles) for i in range(128)]
    assert MinHasher().signature(text).tolist() == expected


def test_signature_is_the_same_in_another_process() -> None:
    text = "Knowledge banks keep their near-duplicate signatures as bytes."
    code = (
        "import sys; from meshgate.knowledge.dedupe import MinHasher; "
        f"sys.stdout.write(MinHasher.to_bytes(MinHasher().signature({text!r})).hex())"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert other == MinHasher.to_bytes(MinHasher().signature(text)).hex()


def test_similarity_estimates_jaccard() -> None:
    rng = random.Random(11)
    hasher = MinHasher()
    base = words(rng, 400)
    for changes in (1, 5, 20, 60):
        edited = list(base)
        for _ in range(changes):
            edited[rng.randrange(len(edited))] = rng.choice(VOCABULARY)
        a, b = " ".join(base), " ".join(edited)
        estimate = MinHasher.similarity(hasher.signature(a), hasher.signature(b))
        assert abs(estimate - jaccard(a, b)) < 0.12, (changes, estimate, jaccard(a, b))
    unrelated = " ".join(words(rng, 400))
    assert MinHasher.similarity(hasher.signature(" ".join(base)), hasher.signature(unrelated)) < 0.05


def test_formatting_does_not_matter_but_word_order_does() -> None:
    hasher = MinHasher()
    text = "Refunds are accepted within thirty days of delivery for all items bought online."
    same = hasher.signature(text.upper().replace(" ", "\n  "))
    assert MinHasher.similarity(hasher.signature(text), same) == 1.0
    shuffled = " ".join(reversed(text.split()))
    assert MinHasher.similarity(hasher.signature(text), hasher.signature(shuffled)) < 0.2
    # Short texts (fewer than five words) are one shingle; a text without words matches nothing.
    assert MinHasher.similarity(hasher.signature("two words"), hasher.signature("Two   WORDS")) == 1.0
    empty = hasher.signature("  ... ")
    assert MinHasher.similarity(empty, empty) == 0.0


def test_near_duplicate_index() -> None:
    rng = random.Random(12)
    hasher = MinHasher()
    index = NearDuplicateIndex()
    assert (index.bands, index.rows) == (16, 8)
    documents = {f"doc{i}": words(rng, 300) for i in range(200)}
    for doc_id, tokens in documents.items():
        index.add(doc_id, hasher.signature(" ".join(tokens)))
    assert len(index) == 200 and "doc7" in index

    near = list(documents["doc7"])
    near[150] = "changed"  # one word: 5 of ~296 shingles differ
    found = index.find(hasher.signature(" ".join(near)))
    assert [doc_id for doc_id, _ in found] == ["doc7"]
    assert found[0][1] >= NEAR_DUPLICATE_THRESHOLD

    far = list(documents["doc9"])
    for position in range(0, 300, 6):
        far[position] = "changed"  # every sixth word: most shingles differ
    assert index.find(hasher.signature(" ".join(far))) == []
    assert index.find(hasher.signature(" ".join(words(rng, 300)))) == []

    index.remove("doc7")
    assert index.find(hasher.signature(" ".join(near))) == []
    assert len(index) == 199
    index.remove("doc7")  # removing twice is harmless

    with pytest.raises(ValueError):
        index.find(np.zeros(64, dtype=np.uint64))


def test_lower_threshold_uses_more_bands() -> None:
    rng = random.Random(13)
    hasher = MinHasher()
    index = NearDuplicateIndex(threshold=0.5)
    assert (index.bands, index.rows) == (64, 2)
    base = words(rng, 200)
    index.add("a", hasher.signature(" ".join(base)))
    edited = list(base)
    for position in range(0, 200, 25):
        edited[position] = "changed"
    matches = index.find(hasher.signature(" ".join(edited)))
    assert [doc_id for doc_id, _ in matches] == ["a"] and 0.5 <= matches[0][1] < 0.9
