"""Plain text (one block per paragraph: text between blank lines) and CSV (a block naming the columns,
then one block per row as "column: value; column: value", so a chunk never cuts a row in two
unless the row alone is over the token budget)."""

from __future__ import annotations

import csv
import io

from meshgate.knowledge.parsers.base import Block, ParsedDocument, ParseError, clean_inline, decode_text, paragraphs

#: How much of a CSV file the delimiter sniffer reads.
SNIFF_CHARS = 64 * 1024


def parse_text(data: bytes, stem: str, charset: str | None = None) -> ParsedDocument:
    text = decode_text(data, charset)
    return ParsedDocument(title=stem, format="text", blocks=tuple(Block(part) for part in paragraphs(text)))


def parse_csv(data: bytes, stem: str, charset: str | None = None) -> ParsedDocument:
    text = decode_text(data, charset)
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(text[:SNIFF_CHARS], delimiters=",;\t|")
    except csv.Error:
        # Ragged rows confuse the sniffer: take the delimiter the header line uses most.
        header_line = text.lstrip("\ufeff").split("\n", 1)[0]
        delimiter = max(",;\t|", key=header_line.count)
        dialect = csv.excel_tab if delimiter == "\t" else csv.excel
        if delimiter in ";|":
            dialect = type("Sniffed", (csv.excel,), {"delimiter": delimiter})
    try:
        rows = csv.reader(io.StringIO(text, newline=""), dialect)
        header = [clean_inline(name) for name in next(rows, [])]
        blocks = []
        if any(header):
            blocks.append(Block("Columns: " + ", ".join(name for name in header if name)))
        for row in rows:
            pairs = []
            for index, value in enumerate(row):
                value = clean_inline(value)
                if value:
                    name = header[index] if index < len(header) and header[index] else f"column {index + 1}"
                    pairs.append(f"{name}: {value}")
            if pairs:
                blocks.append(Block("; ".join(pairs)))
    except csv.Error as error:
        raise ParseError(f"broken CSV ({error})") from error
    return ParsedDocument(title=stem, format="csv", blocks=tuple(blocks))
