"""Files to `ParsedDocument`s: the format is detected, the format's parser run, every failure made a
`ParseError` with a short reason (never a traceback), and the work bounded by the file's size.

Parsing is CPU work that grows with the file: call it from a thread (asyncio.to_thread), never on
the event loop. docs/knowledge-formats.md says what each format keeps."""

from __future__ import annotations

import zipfile
from io import BytesIO
from pathlib import PurePath

from meshgate.knowledge.parsers.base import Block, ParsedDocument, ParseError

__all__ = ["FORMATS", "MAX_BYTES", "Block", "ParseError", "ParsedDocument", "detect_format", "parse_document"]

#: Largest file parse_document accepts by default.
MAX_BYTES = 50 * 2**20

FORMATS: dict[str, str] = {
    ".pdf": "pdf",
    ".docx": "docx",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".text": "text",
    ".csv": "csv",
}

CONTENT_TYPES: dict[str, str] = {
    "application/pdf": "pdf",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "text/html": "html",
    "application/xhtml+xml": "html",
    "text/markdown": "markdown",
    "text/x-markdown": "markdown",
    "text/plain": "text",
    "text/csv": "csv",
}


def _content_type(content_type: str | None) -> tuple[str, str | None]:
    """("type/subtype", charset or None) of a Content-Type header value."""
    if not content_type:
        return "", None
    media, *params = content_type.split(";")
    charset = None
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip("\"'") or None
    return media.strip().lower(), charset


def _sniff(data: bytes) -> str | None:
    head = data[:1024].lstrip()
    if head.startswith(b"%PDF-"):
        return "pdf"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(BytesIO(data)) as archive:
                if "word/document.xml" in archive.namelist():
                    return "docx"
        except (zipfile.BadZipFile, ValueError, EOFError, OSError):
            return None
        return None
    lowered = head[:256].lower()
    if lowered.startswith((b"<!doctype html", b"<html")) or b"<html" in lowered:
        return "html"
    return None


def detect_format(filename: str, content_type: str | None = None, data: bytes | None = None) -> str:
    """The format of a file: its suffix first, then its Content-Type, then its first bytes (PDF, DOCX,
    HTML signatures). A PDF or DOCX signature also wins over a text suffix, so a PDF named x.txt is
    read as a PDF. Raises ParseError for anything else."""
    suffix = PurePath(filename).suffix.lower()
    by_suffix = FORMATS.get(suffix)
    if by_suffix in ("pdf", "docx"):
        return by_suffix
    sniffed = _sniff(data) if data is not None else None
    if by_suffix is not None:
        return sniffed if sniffed in ("pdf", "docx") else by_suffix
    media, _ = _content_type(content_type)
    if media in CONTENT_TYPES:
        return CONTENT_TYPES[media]
    if sniffed is not None:
        return sniffed
    described = suffix or (media and f"type {media}") or "no suffix"
    raise ParseError(f"unsupported format ({described}); supported: {', '.join(sorted(FORMATS))}")


def parse_document(
    data: bytes, filename: str, content_type: str | None = None, *, max_bytes: int = MAX_BYTES
) -> ParsedDocument:
    """Parse one file. Raises ParseError (with `.reason`) for a file that is too large, of an
    unsupported format, damaged, encrypted, or without any text."""
    if len(data) > max_bytes:
        raise ParseError(f"file too large ({len(data)} bytes, limit {max_bytes})")
    if not data.strip():
        raise ParseError("empty document")
    kind = detect_format(filename, content_type, data)
    _, charset = _content_type(content_type)
    stem = PurePath(filename).stem or filename
    try:
        document = _parse(kind, data, stem, charset, max_bytes)
    except ParseError:
        raise
    except RecursionError as error:
        raise ParseError(f"{kind} too deeply nested") from error
    except MemoryError as error:
        raise ParseError(f"{kind} too large to parse in memory") from error
    except Exception as error:  # a parser's own bug or an input it did not foresee: still a reason
        raise ParseError(f"could not parse {kind} ({type(error).__name__}: {error})"[:200]) from error
    if not document.blocks:
        raise ParseError("no extractable text (scanned or empty)")
    return document


def _parse(kind: str, data: bytes, stem: str, charset: str | None, max_bytes: int) -> ParsedDocument:
    # Parsers import their libraries lazily: a deployment that never ingests PDFs never loads pypdf.
    if kind == "pdf":
        from meshgate.knowledge.parsers.pdf import parse_pdf

        return parse_pdf(data, stem)
    if kind == "docx":
        from meshgate.knowledge.parsers.word import parse_docx

        return parse_docx(data, stem, max_bytes)
    if kind == "html":
        from meshgate.knowledge.parsers.html import parse_html

        return parse_html(data, stem, charset)
    if kind == "markdown":
        from meshgate.knowledge.parsers.markdown import parse_markdown

        return parse_markdown(data, stem, charset)
    if kind == "csv":
        from meshgate.knowledge.parsers.text import parse_csv

        return parse_csv(data, stem, charset)
    from meshgate.knowledge.parsers.text import parse_text

    return parse_text(data, stem, charset)
