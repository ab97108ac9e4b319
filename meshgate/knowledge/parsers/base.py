"""What every format parser returns (`ParsedDocument` of `Block`s) and raises (`ParseError`), and
the text decoding that the text-based formats share."""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from functools import cached_property

#: Between two blocks in `ParsedDocument.text`: chunk offsets count it, tokenizers see no token in it.
BLOCK_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Block:
    """One structural unit (paragraph, list item, table row, heading, code block) in reading order."""

    text: str
    #: 1-based page number, for paged formats (PDF).
    page: int | None = None
    #: Heading path of the block, e.g. "Install > Linux" (DOCX, HTML, Markdown); a heading's own
    #: path ends with itself.
    section: str | None = None
    #: The block is itself a heading.
    heading: bool = False


@dataclass(frozen=True)
class ParsedDocument:
    title: str
    #: "pdf" | "docx" | "html" | "markdown" | "text" | "csv"
    format: str
    blocks: tuple[Block, ...]

    @cached_property
    def text(self) -> str:
        """The blocks joined with a blank line: the string chunk offsets refer to."""
        return BLOCK_SEPARATOR.join(block.text for block in self.blocks)

    @cached_property
    def block_spans(self) -> tuple[tuple[int, int], ...]:
        """(start, end) of each block in `text`, in block order."""
        spans = []
        position = 0
        for block in self.blocks:
            spans.append((position, position + len(block.text)))
            position += len(block.text) + len(BLOCK_SEPARATOR)
        return tuple(spans)


class ParseError(Exception):
    """A file that cannot be ingested; `reason` says why in a few words, for the ingest summary."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_SPACES = re.compile(r"[ \t\f\v\u00a0\u2000-\u200b\u3000]+")
_BLANK_LINE = re.compile(r"\n[ \t\f\v]*\n\s*")


def clean_inline(text: str) -> str:
    """Whitespace of flowing text (HTML, DOCX runs) collapsed to single spaces."""
    return " ".join(text.split())


def clean_lines(text: str) -> str:
    """Line ends normalised, runs of spaces collapsed, lines kept (plain text, PDF pages)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = (_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return "\n".join(lines).strip()


def paragraphs(text: str) -> list[str]:
    """Text split on blank lines, each paragraph cleaned; empty ones dropped."""
    parts = (clean_lines(part) for part in _BLANK_LINE.split(clean_lines(text)))
    return [part for part in parts if part]


_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def decode_text(data: bytes, declared: str | None = None) -> str:
    """Bytes of a text format to str: a BOM wins, then a declared charset (HTTP header, HTML meta),
    then UTF-8; anything that is not UTF-8 is read as Windows-1252, and as Latin-1 (which decodes
    every byte) when it is not that either. NUL bytes outside UTF-16 mean a binary file."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(encoding)
            except UnicodeDecodeError as error:
                raise ParseError(f"invalid {encoding} text") from error
    if b"\x00" in data:
        raise ParseError("binary file (NUL bytes)")
    candidates = [declared] if declared else []
    for encoding in [*candidates, "utf-8", "cp1252", "latin-1"]:
        try:
            return data.decode(encoding)
        except (UnicodeDecodeError, LookupError):
            continue
    raise AssertionError("latin-1 decodes every byte")


#: Between the headings of a section path ("Install > Linux").
SECTION_SEPARATOR = " > "


class SectionPath:
    """The headings above the current position: a heading of level N closes every open heading of
    level N or deeper (HTML h1-h6, Markdown #-######, DOCX Title=0 and Heading 1-9)."""

    def __init__(self) -> None:
        self._open: list[tuple[int, str]] = []

    @property
    def current(self) -> str | None:
        return SECTION_SEPARATOR.join(text for _, text in self._open) or None

    def enter(self, level: int, text: str) -> str:
        """Open a heading; the path including it."""
        while self._open and self._open[-1][0] >= level:
            self._open.pop()
        self._open.append((level, text.replace(SECTION_SEPARATOR, " - ")))
        return self.current or text
