"""DOCX: the body's paragraphs and tables in reading order with python-docx. Paragraph styles
"Title" and "Heading N" (or styles based on them) make headings and the section path; each table
row is a block of its cells joined with " | ". Headers, footers, comments and footnotes are left out.

The zip is checked before python-docx opens it: a total uncompressed size over the limit (a zip
bomb) is refused without inflating anything. Python's zipfile never reads past an entry's declared
size, so the declared sizes bound the work."""

from __future__ import annotations

import io
import re
import zipfile
from typing import Any

from meshgate.knowledge.parsers.base import Block, ParsedDocument, ParseError, SectionPath, clean_inline

#: Never inflate more than this, whatever the caller's max_bytes.
MAX_UNCOMPRESSED = 256 * 2**20
#: ... nor more than this many times the file's own size limit.
MAX_EXPANSION = 20

_HEADING_STYLE = re.compile(r"^heading\s*([1-9])$", re.IGNORECASE)


def parse_docx(data: bytes, stem: str, max_bytes: int) -> ParsedDocument:
    _check_zip(data, min(MAX_UNCOMPRESSED, MAX_EXPANSION * max_bytes))
    import docx
    from docx.table import Table

    try:
        document = docx.Document(io.BytesIO(data))
    except Exception as error:  # python-docx raises many kinds for a damaged package
        raise ParseError(f"broken DOCX ({type(error).__name__}: {error})"[:200]) from error
    path = SectionPath()
    blocks: list[Block] = []
    title = clean_inline(document.core_properties.title or "")
    first_heading = ""
    for item in document.iter_inner_content():
        if isinstance(item, Table):
            blocks.extend(Block(row, section=path.current) for row in _table_rows(item))
            continue
        text = clean_inline(item.text)
        if not text:
            continue
        level = _heading_level(item.style)
        if level is None:
            blocks.append(Block(text, section=path.current))
            continue
        if level == 0:
            title = title or text
        first_heading = first_heading or text
        blocks.append(Block(text, section=path.enter(level, text), heading=True))
    return ParsedDocument(title=title or first_heading or stem, format="docx", blocks=tuple(blocks))


def _check_zip(data: bytes, limit: int) -> None:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            entries = archive.infolist()
            names = {entry.filename for entry in entries}
    except (zipfile.BadZipFile, ValueError, EOFError, OSError) as error:
        raise ParseError("not a DOCX (bad zip)") from error
    if "word/document.xml" not in names:
        raise ParseError("not a DOCX (no word/document.xml)")
    total = sum(entry.file_size for entry in entries)
    if total > limit:
        raise ParseError(f"DOCX expands to {total} bytes (limit {limit}): refused as a zip bomb")


def _heading_level(style: Any) -> int | None:
    """0 for the Title style, N for "Heading N", following base styles a few steps (custom heading
    styles are usually based on a built-in one); None for body text."""
    for _ in range(4):
        if style is None:
            return None
        name = (style.name or "").strip()
        if name.lower() == "title":
            return 0
        match = _HEADING_STYLE.match(name)
        if match:
            return int(match.group(1))
        style = style.base_style
    return None


def _table_rows(table: Any) -> list[str]:
    rows = []
    for row in table.rows:
        cells: list[str] = []
        for cell in row.cells:
            text = clean_inline(cell.text)
            # A merged cell comes back once per grid column it spans.
            if text and (not cells or cells[-1] != text):
                cells.append(text)
        if cells:
            rows.append(" | ".join(cells))
    return rows
