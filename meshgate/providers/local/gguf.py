"""Reads a GGUF file's header, metadata and tensor table, and checks that the file is whole.

llama.cpp finds a truncated or foreign file too, but only as "failed to load model"; reading the
header first lets startup say what is wrong with which file (not a GGUF, cut short, which tensor),
and gives the model card its facts (name, license, architecture, chat template, trained context)
before any weights are loaded. Large arrays (the vocabulary, merges) are skipped, not decoded.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAGIC = b"GGUF"

# Value types of the GGUF spec (ggml/docs/gguf.md): struct format and size of the scalars.
_SCALARS: dict[int, str] = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q"}
_SCALARS[12] = "<d"
_STRING, _ARRAY = 8, 9

#: Elements per block and bytes per block of ggml's tensor types, to find where each tensor ends.
_BLOCKS: dict[int, tuple[int, int]] = {
    0: (1, 4),  # F32
    1: (1, 2),  # F16
    2: (32, 18),  # Q4_0
    3: (32, 20),  # Q4_1
    6: (32, 22),  # Q5_0
    7: (32, 24),  # Q5_1
    8: (32, 34),  # Q8_0
    9: (32, 36),  # Q8_1
    10: (256, 84),  # Q2_K
    11: (256, 110),  # Q3_K
    12: (256, 144),  # Q4_K
    13: (256, 176),  # Q5_K
    14: (256, 210),  # Q6_K
    15: (256, 292),  # Q8_K
    16: (256, 66),  # IQ2_XXS
    17: (256, 74),  # IQ2_XS
    18: (256, 98),  # IQ3_XXS
    19: (256, 50),  # IQ1_S
    20: (32, 18),  # IQ4_NL
    21: (256, 110),  # IQ3_S
    22: (256, 82),  # IQ2_S
    23: (256, 136),  # IQ4_XS
    24: (1, 1),  # I8
    25: (1, 2),  # I16
    26: (1, 4),  # I32
    27: (1, 8),  # I64
    28: (1, 8),  # F64
    29: (256, 56),  # IQ1_M
    30: (1, 2),  # BF16
    34: (256, 54),  # TQ1_0
    35: (256, 66),  # TQ2_0
}

#: Array metadata kept in full; other arrays (vocabulary, scores, merges) are skipped.
_KEPT_ARRAYS = ("general.tags", "general.languages")


class GGUFError(Exception):
    """The file is not a usable GGUF. The message says what is wrong; callers add the path."""


@dataclass
class GGUFInfo:
    version: int
    metadata: dict[str, Any]
    tensor_count: int
    #: Bytes the file must have at least: the end of its last tensor's data.
    required_size: int
    file_size: int
    #: Lengths of the arrays that were skipped (e.g. `tokenizer.ggml.tokens`: vocabulary size).
    array_lengths: dict[str, int] = field(default_factory=dict)

    def get_str(self, key: str) -> str | None:
        value = self.metadata.get(key)
        return value if isinstance(value, str) else None

    def get_int(self, key: str) -> int | None:
        value = self.metadata.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def architecture(self) -> str | None:
        return self.get_str("general.architecture")

    @property
    def chat_template(self) -> str | None:
        return self.get_str("tokenizer.chat_template")

    @property
    def trained_context(self) -> int | None:
        arch = self.architecture
        return self.get_int(f"{arch}.context_length") if arch else None


class _Reader:
    def __init__(self, buffer: mmap.mmap | bytes) -> None:
        self.buf = buffer
        self.pos = 0

    def take(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise GGUFError(f"the file ends inside its header (at byte {len(self.buf)})")
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        length = self.take("<Q")
        end = self.pos + length
        if end > len(self.buf):
            raise GGUFError(f"the file ends inside its header (at byte {len(self.buf)})")
        text = bytes(self.buf[self.pos : end]).decode("utf-8", "replace")
        self.pos = end
        return text

    def skip_string(self) -> None:
        length = self.take("<Q")  # read first: `self.pos += self.take(...)` would lose the read's advance
        self.pos += length

    def value(self, kind: int, keep: bool = True) -> Any:
        if kind in _SCALARS:
            return self.take(_SCALARS[kind])
        if kind == _STRING:
            if keep:
                return self.string()
            self.skip_string()
            return None
        if kind == _ARRAY:
            item_kind = self.take("<I")
            count = self.take("<Q")
            if not keep:
                if item_kind in _SCALARS:
                    self.pos += count * struct.calcsize(_SCALARS[item_kind])
                else:
                    for _ in range(count):
                        self.value(item_kind, keep=False)
                return count
            return [self.value(item_kind) for _ in range(count)]
        raise GGUFError(f"unknown metadata value type {kind} at byte {self.pos}")


def read_gguf(path: Path) -> GGUFInfo:
    """Header, metadata and the size the tensor table needs; raises GGUFError when the file is not
    a GGUF or is shorter than its tensors say."""
    with path.open("rb") as handle:
        file_size = path.stat().st_size
        if file_size < 24:
            raise GGUFError(f"the file has {file_size} bytes, too few for a GGUF header")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
            if buffer[:4] != MAGIC:
                raise GGUFError(f"not a GGUF file (it starts with {bytes(buffer[:4])!r}, not {MAGIC!r})")
            return _parse(_Reader(buffer), file_size)


def _parse(reader: _Reader, file_size: int) -> GGUFInfo:
    reader.pos = 4
    version = reader.take("<I")
    if version not in (2, 3):
        raise GGUFError(f"GGUF version {version} is not supported (2 or 3)")
    tensor_count = reader.take("<Q")
    kv_count = reader.take("<Q")
    metadata: dict[str, Any] = {}
    array_lengths: dict[str, int] = {}
    for _ in range(kv_count):
        key = reader.string()
        kind = reader.take("<I")
        if kind == _ARRAY and key not in _KEPT_ARRAYS:
            array_lengths[key] = reader.value(kind, keep=False)
        else:
            metadata[key] = reader.value(kind)
    ends: list[tuple[int, str]] = []
    for _ in range(tensor_count):
        name = reader.string()
        dims = [reader.take("<Q") for _ in range(reader.take("<I"))]
        kind = reader.take("<I")
        offset = reader.take("<Q")
        elements = 1
        for dim in dims:
            elements *= dim
        block = _BLOCKS.get(kind)
        size = (elements // block[0]) * block[1] if block else 0  # unknown type: llama.cpp checks it
        ends.append((offset + size, name))
    alignment = metadata.get("general.alignment", 32)
    data_start = -(-reader.pos // alignment) * alignment
    required = data_start + max((end for end, _ in ends), default=0)
    if required > file_size:
        last = max(ends)[1] if ends else "?"
        raise GGUFError(
            f"the file is truncated: it has {file_size:,} bytes but its tensors need {required:,} "
            f"(tensor {last!r} ends past the end)"
        )
    return GGUFInfo(version, metadata, tensor_count, required, file_size, array_lengths)
