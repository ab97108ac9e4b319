"""Markdown (CommonMark plus tables) with markdown-it-py: headings make the section path; each
paragraph, list item paragraph, code block (kept as is) and table row (cells joined with " | ") is a
block. Inline markup is reduced to its text (link text, image alt text). A YAML front matter block
is skipped, its `title:` used as the title; raw HTML blocks keep only their text."""

from __future__ import annotations

import re
from typing import Any

from meshgate.knowledge.parsers.base import Block, ParsedDocument, SectionPath, clean_inline, clean_lines, decode_text

_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?\n)(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.DOTALL)
_FRONT_TITLE = re.compile(r"^title:[ \t]*(.+?)[ \t]*$", re.MULTILINE)


def parse_markdown(data: bytes, stem: str, charset: str | None = None) -> ParsedDocument:
    from markdown_it import MarkdownIt

    source = decode_text(data, charset).replace("\r\n", "\n").replace("\r", "\n")
    title = ""
    front = _FRONT_MATTER.match(source)
    if front:
        found = _FRONT_TITLE.search(front.group(1))
        title = found.group(1).strip("\"' ") if found else ""
        source = source[front.end() :]
    tokens = MarkdownIt("commonmark").enable("table").parse(source)
    blocks = _blocks(tokens)
    if not title:
        title = next((block.text for block in blocks if block.heading), "")
    return ParsedDocument(title=title or stem, format="markdown", blocks=tuple(blocks))


def _blocks(tokens: list[Any]) -> list[Block]:
    path = SectionPath()
    blocks: list[Block] = []
    heading_level: int | None = None
    row: list[str] | None = None
    for token in tokens:
        kind = token.type
        if kind == "heading_open":
            heading_level = int(token.tag[1:])
        elif kind == "heading_close":
            heading_level = None
        elif kind == "tr_open":
            row = []
        elif kind == "tr_close":
            cells = [cell for cell in row or [] if cell]
            if cells:
                blocks.append(Block(" | ".join(cells), section=path.current))
            row = None
        elif kind == "inline":
            if row is not None:
                row.append(clean_inline(_inline_text(token)))
            elif heading_level is not None:
                text = clean_inline(_inline_text(token))
                if text:
                    blocks.append(Block(text, section=path.enter(heading_level, text), heading=True))
            else:
                text = clean_lines(_inline_text(token))
                if text:
                    blocks.append(Block(text, section=path.current))
        elif kind in ("fence", "code_block"):
            code = token.content.strip("\n")
            if code.strip():
                blocks.append(Block(code, section=path.current))
        elif kind == "html_block":
            text = _html_text(token.content)
            if text:
                blocks.append(Block(text, section=path.current))
    return blocks


def _inline_text(token: Any) -> str:
    parts = []
    for child in token.children or ():
        if child.type in ("text", "code_inline", "image"):
            parts.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            parts.append("\n")
    return "".join(parts)


def _html_text(html: str) -> str:
    from selectolax.lexbor import LexborHTMLParser

    node = LexborHTMLParser(html).body
    return clean_inline(node.text(deep=True, separator=" ")) if node is not None else ""
