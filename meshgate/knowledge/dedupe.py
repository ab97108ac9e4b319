"""Duplicate detection for ingest: exact (sha256 of the file, of the normalised text) and near
(MinHash over word 5-shingles, LSH bands for candidates).

Why our own MinHash rather than datasketch: a signature is stored with the document and compared
with signatures made by later versions of meshgate in other processes, so its bytes must depend on
nothing but this file. Here the hash functions are fixed (BLAKE2b of each word, a splitmix64 mixer,
seeds derived from a fixed string) and a signature is 128 little-endian uint64s: no pickles, no
library whose hashing or random stream may change, and numpy does the work vectorised.

Similarity = the fraction of equal signature slots, an unbiased estimate of the Jaccard similarity
of the two texts' sets of word 5-shingles (words: runs of letters and digits, casefolded, NFKC).
Documents at or above NEAR_DUPLICATE_THRESHOLD (0.9) are near duplicates."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import defaultdict
from collections.abc import Hashable
from typing import Any

import numpy as np

__all__ = ["NEAR_DUPLICATE_THRESHOLD", "MinHasher", "NearDuplicateIndex", "content_hash", "text_hash"]

NEAR_DUPLICATE_THRESHOLD: float = 0.9
#: Words per shingle.
SHINGLE_WORDS = 5
NUM_PERM = 128

Signature = np.ndarray[Any, np.dtype[np.uint64]]
_WORD = re.compile(r"\w+")
_MASK64 = (1 << 64) - 1
#: Shingles hashed per numpy batch (bounds memory: NUM_PERM x this many uint64s).
_BATCH = 4096


def content_hash(data: bytes) -> str:
    """sha256 hex of a file's raw bytes: an unchanged file is skipped on re-ingest."""
    return hashlib.sha256(data).hexdigest()


def normalise(text: str) -> str:
    """NFKC, casefolded, whitespace collapsed to single spaces."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def text_hash(text: str) -> str:
    """sha256 hex of the normalised text: the same document in another file format or with other
    line breaks is an exact duplicate."""
    return hashlib.sha256(normalise(text).encode("utf-8")).hexdigest()


def _mix(values: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """splitmix64's finaliser over uint64 arrays (wrapping arithmetic: arrays never warn)."""
    values = np.asarray(values ^ (values >> np.uint64(30)), dtype=np.uint64)
    values = values * np.uint64(0xBF58476D1CE4E5B9)
    values = values ^ (values >> np.uint64(27))
    values = values * np.uint64(0x94D049BB133111EB)
    mixed: np.ndarray[Any, Any] = values ^ (values >> np.uint64(31))
    return mixed


def _seed(label: str) -> int:
    return int.from_bytes(hashlib.blake2b(label.encode(), digest_size=8).digest(), "little")


class MinHasher:
    """MinHash signatures of texts; the same text gives the same bytes in every process and version."""

    def __init__(self, num_perm: int = NUM_PERM) -> None:
        self.num_perm = num_perm
        self._seeds = np.array([_seed(f"meshgate-minhash-{i}") for i in range(num_perm)], dtype=np.uint64)
        self._seeds = self._seeds.reshape(num_perm, 1)
        self._position_keys = np.array([_seed(f"meshgate-shingle-{i}") for i in range(SHINGLE_WORDS)], dtype=np.uint64)

    def shingles(self, text: str) -> np.ndarray[Any, np.dtype[np.uint64]]:
        """The distinct 64-bit hashes of the text's word 5-shingles (one shingle for a shorter text)."""
        words = _WORD.findall(unicodedata.normalize("NFKC", text).casefold())
        if not words:
            return np.zeros(0, dtype=np.uint64)
        vocabulary: dict[str, int] = {}
        ids = np.fromiter((vocabulary.setdefault(word, len(vocabulary)) for word in words), dtype=np.int64)
        word_hashes = np.array(
            [int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little") for w in vocabulary],
            dtype=np.uint64,
        )[ids]
        width = min(SHINGLE_WORDS, len(words))
        count = len(words) - width + 1
        combined = np.zeros(count, dtype=np.uint64)
        for offset in range(width):
            # Each position is mixed with its own key, so "a b" and "b a" hash differently.
            combined = _mix(combined ^ word_hashes[offset : offset + count] ^ self._position_keys[offset])
        return np.unique(combined)

    def signature(self, text: str) -> Signature:
        """num_perm uint64 minima; all slots are 2**64-1 for a text without words."""
        minima = np.full(self.num_perm, np.iinfo(np.uint64).max, dtype=np.uint64)
        shingles = self.shingles(text)
        for start in range(0, len(shingles), _BATCH):
            batch = shingles[start : start + _BATCH].reshape(1, -1)
            np.minimum(minima, _mix(batch ^ self._seeds).min(axis=1), out=minima)
        return minima

    @staticmethod
    def similarity(a: Signature, b: Signature) -> float:
        """Estimated Jaccard similarity; 0.0 when either text had no words."""
        if a.shape != b.shape:
            raise ValueError(f"signatures of different sizes ({a.shape[0]} and {b.shape[0]})")
        empty = np.iinfo(np.uint64).max
        if bool(np.all(a == empty)) or bool(np.all(b == empty)):
            return 0.0
        return float(np.count_nonzero(a == b)) / int(a.shape[0])

    @staticmethod
    def to_bytes(signature: Signature) -> bytes:
        return np.asarray(signature, dtype="<u8").tobytes()

    @staticmethod
    def from_bytes(data: bytes) -> Signature:
        if len(data) == 0 or len(data) % 8:
            raise ValueError(f"a signature is a whole number of 8-byte values, not {len(data)} bytes")
        return np.frombuffer(data, dtype="<u8").astype(np.uint64)


def _bands(num_perm: int, threshold: float) -> tuple[int, int]:
    """(bands, rows per band): the fewest, widest bands that still make a pair at `threshold` a
    candidate with probability >= 0.99 (1 - (1 - t**rows)**bands)."""
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        if num_perm % rows:
            continue
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= 0.99:
            best = (bands, rows)
    return best


class NearDuplicateIndex:
    """In-memory LSH over MinHash signatures: `find` returns the documents whose estimated
    similarity is at least `threshold`, best first. With 128 slots and 0.9: 16 bands of 8 rows
    (a pair at 0.9 is a candidate with probability 0.9999, at 0.5 with 0.06)."""

    def __init__(self, threshold: float = NEAR_DUPLICATE_THRESHOLD, num_perm: int = NUM_PERM) -> None:
        if not 0 < threshold <= 1:
            raise ValueError("threshold must be in (0, 1]")
        self.threshold = threshold
        self.num_perm = num_perm
        self.bands, self.rows = _bands(num_perm, threshold)
        self._buckets: dict[tuple[int, bytes], set[Hashable]] = defaultdict(set)
        self._signatures: dict[Hashable, Signature] = {}

    def __len__(self) -> int:
        return len(self._signatures)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._signatures

    def _keys(self, signature: Signature) -> list[tuple[int, bytes]]:
        if signature.shape != (self.num_perm,):
            raise ValueError(f"signature has {signature.shape[0]} slots, the index {self.num_perm}")
        raw = MinHasher.to_bytes(signature)
        width = self.rows * 8
        return [(band, raw[band * width : (band + 1) * width]) for band in range(self.bands)]

    def add(self, doc_id: Hashable, signature: Signature) -> None:
        """Index a document (replacing its earlier signature)."""
        self.remove(doc_id)
        for key in self._keys(signature):
            self._buckets[key].add(doc_id)
        self._signatures[doc_id] = signature

    def remove(self, doc_id: Hashable) -> None:
        signature = self._signatures.pop(doc_id, None)
        if signature is None:
            return
        for key in self._keys(signature):
            bucket = self._buckets.get(key)
            if bucket is not None:
                bucket.discard(doc_id)
                if not bucket:
                    del self._buckets[key]

    def find(self, signature: Signature) -> list[tuple[Hashable, float]]:
        """(doc_id, similarity) of indexed documents at or above the threshold, most similar first."""
        candidates: set[Hashable] = set()
        for key in self._keys(signature):
            candidates.update(self._buckets.get(key, ()))
        found = []
        for doc_id in candidates:
            similarity = MinHasher.similarity(signature, self._signatures[doc_id])
            if similarity >= self.threshold:
                found.append((doc_id, similarity))
        found.sort(key=lambda item: (-item[1], str(item[0])))
        return found
