"""PDF: text per page with pypdf, one block per paragraph, every block tagged with its 1-based page.

Encrypted files are refused (even those that open with an empty password: their owner asked for
restrictions), as are files over `MAX_PAGES` pages and files pypdf cannot read."""

from __future__ import annotations

import io
import logging

from meshgate.knowledge.parsers.base import Block, ParsedDocument, ParseError, paragraphs

#: More pages than this is refused: text extraction costs time per page.
MAX_PAGES = 5000

# pypdf reports recoverable damage through logging; the parse result (or ParseError) says enough.
logging.getLogger("pypdf").setLevel(logging.ERROR)


def parse_pdf(data: bytes, stem: str) -> ParsedDocument:
    from pypdf import PdfReader
    from pypdf.errors import FileNotDecryptedError, PdfReadError

    if not data.lstrip()[:5] == b"%PDF-":
        raise ParseError("not a PDF (no %PDF- header)")
    if b"%%EOF" not in data[-2048:]:
        # pypdf would rebuild what it can of a cut file; a truncated upload is better reported.
        raise ParseError("truncated PDF (no %%EOF marker at the end)")
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise ParseError("encrypted PDF")
        pages = len(reader.pages)
        if pages > MAX_PAGES:
            raise ParseError(f"PDF has {pages} pages (limit {MAX_PAGES})")
        blocks: list[Block] = []
        for number, page in enumerate(reader.pages, start=1):
            blocks.extend(Block(text, page=number) for text in paragraphs(page.extract_text() or ""))
        title = _metadata_title(reader)
    except ParseError:
        raise
    except FileNotDecryptedError as error:
        raise ParseError("encrypted PDF") from error
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, IndexError, OSError) as error:
        raise ParseError(f"broken PDF ({type(error).__name__}: {error})"[:200]) from error
    return ParsedDocument(title=title or stem, format="pdf", blocks=tuple(blocks))


def _metadata_title(reader: object) -> str | None:
    try:
        metadata = reader.metadata  # type: ignore[attr-defined]
        title = metadata.title if metadata is not None else None
    except Exception:  # a damaged Info dictionary only costs the title
        return None
    return " ".join(str(title).split()) or None if title else None
