"""Chunks of a ParsedDocument that follow its structure within a token budget.

- A chunk never spans two pages (PDF) nor two top-level sections (the first heading level at which
  the document's sections differ); inside those groups, consecutive blocks are packed up to
  `max_tokens`. A new sub-section starts a new chunk when the current one is at least half full.
- A block over the budget is split at sentence ends (and line ends), a sentence over it at spaces,
  a run without spaces at characters.
- Headings are never a chunk of their own: a chunk that starts a section starts with its heading(s).
- Overlap: a chunk cut by the budget is followed by one that starts with the last ~`overlap_tokens`
  of it (whole sentences where they fit), only within the same page and section.

Offsets: every chunk is one contiguous span of `doc.text`, headings included, so
`doc.text[chunk.start:chunk.end] == chunk.text` always holds.

Token counts: each block, sentence or piece is counted once (linear work), and a chunk's count is
taken as the sum of its pieces' counts plus what `count_tokens("")` returns (the special tokens a
model adds once per text, e.g. [CLS] and [SEP]). That sum is exact for tokenizers that split on
whitespace first (WordPiece), since pieces are cut at whitespace (or blank-line block separators)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from meshgate.knowledge.parsers.base import SECTION_SEPARATOR
from meshgate.knowledge.parsing import Block, ParsedDocument

__all__ = ["Chunk", "chunk_document"]


@dataclass(frozen=True)
class Chunk:
    text: str
    #: Character offsets into ParsedDocument.text: text == doc.text[start:end].
    start: int
    end: int
    page: int | None
    #: The section path the chunk's blocks share (their common heading path), if any.
    section: str | None
    #: 0-based position in the document.
    ordinal: int


@dataclass(frozen=True)
class _Unit:
    """A span of doc.text that is packed whole: a block, or a piece of an oversized one."""

    start: int
    end: int
    tokens: int
    block: int


# A sentence ends at . ! ? (and closing quotes/brackets) followed by whitespace; a line end ends one too.
_SENTENCE_END = re.compile(r"""[.!?\u2026\u3002\uff01\uff1f]+["'\u2019\u201d)\]]*\s+|\s*\n\s*""")
_SPACE = re.compile(r"\s+")
_SENTENCES, _WORDS, _CHARACTERS = 0, 1, 2


def chunk_document(
    doc: ParsedDocument,
    count_tokens: Callable[[str], int],
    max_tokens: int = 200,
    overlap_tokens: int = 40,
) -> list[Chunk]:
    """The document's chunks in order; each has at most `max_tokens` tokens by `count_tokens`."""
    if overlap_tokens < 0 or overlap_tokens >= max_tokens:
        raise ValueError("overlap_tokens must be >= 0 and smaller than max_tokens")
    overhead = count_tokens("")
    if max_tokens - overhead < 1:
        raise ValueError(f"max_tokens {max_tokens} leaves no room after {overhead} special tokens")
    return _Packer(doc, count_tokens, overhead, max_tokens - overhead, overlap_tokens).run()


def _group_depth(sections: Sequence[str | None]) -> int:
    """How many leading headings make a chunk group: one past the path every section shares (a
    document under a single title heading is grouped by its second level)."""
    common: list[str] | None = None
    for section in sections:
        if section is None:
            continue
        path = section.split(SECTION_SEPARATOR)
        if common is None:
            common = path
            continue
        size = 0
        while size < min(len(common), len(path)) and common[size] == path[size]:
            size += 1
        del common[size:]
    return len(common) + 1 if common is not None else 1


class _Packer:
    def __init__(
        self,
        doc: ParsedDocument,
        count_tokens: Callable[[str], int],
        overhead: int,
        budget: int,
        overlap_tokens: int,
    ) -> None:
        self.doc = doc
        self.text = doc.text
        self.count_tokens = count_tokens
        self.overhead = overhead
        self.budget = budget
        self.overlap_tokens = overlap_tokens
        self.chunks: list[Chunk] = []
        self.current: list[_Unit] = []
        self.current_tokens = 0
        #: The current chunk holds a unit no earlier chunk has (not only overlap).
        self.fresh = False
        self.headings: list[_Unit] = []
        self.orphans: list[_Unit] = []

    # -- counting and splitting ----------------------------------------------------------------

    def tokens(self, start: int, end: int) -> int:
        return max(0, self.count_tokens(self.text[start:end]) - self.overhead)

    def split(self, unit: _Unit, budget: int, deepest: int = _CHARACTERS) -> list[_Unit]:
        """Pieces of `unit`, in order, each within `budget` tokens (but a single character, or a
        piece that cannot be cut at the `deepest` level)."""
        pieces: list[_Unit] = []
        todo: list[tuple[int, int, int, int]] = [(unit.start, unit.end, unit.tokens, _SENTENCES)]
        while todo:
            start, end, tokens, level = todo.pop()
            if tokens <= budget or end - start <= 1:
                pieces.append(_Unit(start, end, tokens, unit.block))
                continue
            spans = list(self._spans(start, end, tokens, budget, level))
            if len(spans) == 1:  # nothing to cut at this level: the next one, without recounting
                if level >= deepest:  # cannot do better
                    pieces.append(_Unit(start, end, tokens, unit.block))
                else:
                    todo.append((start, end, tokens, level + 1))
                continue
            # A sentence too long is cut at words; a word window still too long (the estimate of
            # characters per token was off) is cut at words again, before characters.
            following = min(max(level, _WORDS), deepest)
            todo.extend(reversed([(s, e, self.tokens(s, e), following) for s, e in spans]))
        return pieces

    def _spans(self, start: int, end: int, tokens: int, budget: int, level: int) -> Iterator[tuple[int, int]]:
        if level == _SENTENCES:
            position = start
            for match in _SENTENCE_END.finditer(self.text, start, end):
                sentence_end = match.start() + len(match.group().rstrip())
                if sentence_end > position and match.end() < end:
                    yield position, sentence_end
                    position = match.end()
            yield position, end
            return
        # Windows sized from this span's own characters per token, a little under the budget.
        size = max(1, int((end - start) / max(tokens, 1) * budget * 0.8))
        if level == _CHARACTERS and size >= end - start:
            size = max(1, (end - start) // 2)
        position = start
        while position < end:
            cut = min(end, position + size)
            if level == _WORDS and cut < end:
                space = self.text.rfind(" ", position + 1, cut + 1)
                if space <= position:
                    found = _SPACE.search(self.text, cut, end)
                    space = found.start() if found else end
                cut = space
            piece_end = cut
            while piece_end > position and self.text[piece_end - 1].isspace():
                piece_end -= 1
            if piece_end > position:
                yield position, piece_end
            position = cut
            while position < end and self.text[position].isspace():
                position += 1

    # -- packing -------------------------------------------------------------------------------

    def run(self) -> list[Chunk]:
        blocks = self.doc.blocks
        depth = _group_depth([block.section for block in blocks])
        group: tuple[int | None, str | None] | None = None
        for index, (block, (start, end)) in enumerate(zip(blocks, self.doc.block_spans, strict=True)):
            section = block.section
            top = SECTION_SEPARATOR.join(section.split(SECTION_SEPARATOR)[:depth]) if section else None
            if (block.page, top) != group:
                # Headings that open the coming group (its parents: "Guide" before "Guide > Install")
                # go on with it; others had no text under them and are dropped.
                carried = self.carried_headings(block)
                self.close_group()
                self.headings = carried
                group = (block.page, top)
            unit = _Unit(start, end, self.tokens(start, end), index)
            if block.heading and sum(h.tokens for h in self.headings) + unit.tokens <= self.budget // 2:
                self.headings.append(unit)
                continue
            pieces = self.split(unit, self.budget) if unit.tokens > self.budget else [unit]
            for piece in pieces:
                self.add(piece)
        self.close_group()
        if not self.chunks and self.orphans:  # a document of nothing but headings: they are its text
            for unit in self.orphans:
                self.add(unit)
            self.close_group()
        return self.chunks

    def add(self, unit: _Unit) -> None:
        if self.headings:
            heading_tokens = sum(h.tokens for h in self.headings)
            if self.fresh and (
                self.current_tokens >= self.budget / 2
                or self.current_tokens + heading_tokens + unit.tokens > self.budget
            ):
                self.emit()
            if not self.fresh:
                self.current, self.current_tokens = [], 0  # a new section does not carry overlap
            if self.current_tokens + heading_tokens + unit.tokens > self.budget:
                first, *rest = self.split(unit, self.budget - self.current_tokens - heading_tokens)
                self.take(self.headings)
                self.headings = []
                self.take([first])
                for piece in rest:
                    self.add(piece)
                return
            self.take(self.headings)
            self.headings = []
        elif self.current and self.current[-1].end == unit.start:
            # The two halves of a word cut at characters: whole, it may count more tokens than
            # its halves, so they never share a chunk (nor an overlap).
            if self.fresh:
                self.emit()
            self.current, self.current_tokens = [], 0
        elif self.current_tokens + unit.tokens > self.budget:
            self.emit(next_unit=unit)
        self.take([unit])

    def take(self, units: list[_Unit]) -> None:
        self.current.extend(units)
        self.current_tokens += sum(unit.tokens for unit in units)
        self.fresh = True

    def carried_headings(self, block: Block) -> list[_Unit]:
        carried: list[_Unit] = []
        for unit in reversed(self.headings):
            heading = self.doc.blocks[unit.block]
            if heading.page != block.page or not _is_within(block.section, heading.section):
                break
            carried.append(unit)
        carried.reverse()
        if carried:
            del self.headings[len(self.headings) - len(carried) :]
        return carried

    def close_group(self) -> None:
        if self.headings:  # headings with no text under them before the group ends
            self.orphans.extend(self.headings)
            self.headings = []
        if self.fresh:
            self.emit()
        self.current, self.current_tokens, self.fresh = [], 0, False

    def emit(self, next_unit: _Unit | None = None) -> None:
        """Close the current chunk; with `next_unit`, start the next one with the overlap."""
        units = self.current
        if not units:
            return
        start, end = units[0].start, units[-1].end
        blocks = self.doc.blocks
        self.chunks.append(
            Chunk(
                text=self.text[start:end],
                start=start,
                end=end,
                page=blocks[units[0].block].page,
                section=_common_section(
                    [blocks[unit.block].section for unit in units if not blocks[unit.block].heading]
                    or [blocks[unit.block].section for unit in units]
                ),
                ordinal=len(self.chunks),
            )
        )
        overlap = self.overlap(units, next_unit) if next_unit is not None else []
        self.current = overlap
        self.current_tokens = sum(unit.tokens for unit in overlap)
        self.fresh = False

    def overlap(self, units: list[_Unit], next_unit: _Unit) -> list[_Unit]:
        """The tail of `units` to repeat before `next_unit`: same page and section, at most
        overlap_tokens, leaving room for next_unit."""
        blocks = self.doc.blocks
        wanted = blocks[next_unit.block]
        remaining = min(self.overlap_tokens, self.budget - next_unit.tokens)
        taken: list[_Unit] = []
        for unit in reversed(units):
            block = blocks[unit.block]
            if remaining <= 0 or block.page != wanted.page or block.section != wanted.section:
                break
            if unit.tokens <= remaining:
                taken.append(unit)
                remaining -= unit.tokens
                continue
            if not taken:
                taken.extend(self.tail(unit, remaining))
            break
        taken.reverse()
        return taken

    def tail(self, unit: _Unit, budget: int) -> list[_Unit]:
        """The last whole sentences of `unit` within `budget`, counted from the end; when even the
        last sentence is over it, the last words (or characters) of that sentence. Reversed order."""
        taken: list[_Unit] = []
        for start, end in reversed(list(self._spans(unit.start, unit.end, unit.tokens, budget, _SENTENCES))):
            piece = _Unit(start, end, self.tokens(start, end), unit.block)
            if piece.tokens <= budget:
                taken.append(piece)
                budget -= piece.tokens
                continue
            if not taken:
                # Only the end of a long sentence can be its tail: cut that off first, so the
                # overlap costs about its own size to count, not the sentence's.
                window = int((end - start) / max(piece.tokens, 1) * budget * 2) + 1
                if end - start > 2 * window:
                    space = self.text.find(" ", end - window, end)
                    if space > start:
                        piece = _Unit(space + 1, end, self.tokens(space + 1, end), unit.block)
                # Never part of a word: a word cut in two may count more tokens whole than in parts.
                for part in reversed(self.split(piece, budget, deepest=_WORDS)):
                    if part.tokens > budget:
                        break
                    taken.append(part)
                    budget -= part.tokens
            break
        return taken


def _is_within(section: str | None, ancestor: str | None) -> bool:
    if section is None or ancestor is None:
        return False
    return section == ancestor or section.startswith(ancestor + SECTION_SEPARATOR)


def _common_section(sections: list[str | None]) -> str | None:
    first = sections[0]
    if all(section == first for section in sections):
        return first
    if any(section is None for section in sections):
        return None
    common = _group_depth(sections) - 1
    path = (first or "").split(SECTION_SEPARATOR)[:common]
    return SECTION_SEPARATOR.join(path) or None
