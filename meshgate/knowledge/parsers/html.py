"""HTML: the main text of a page with selectolax (lexbor), without its boilerplate.

Kept: headings h1-h6 (section path), paragraphs, list items, preformatted text (as is), table rows
(cells joined with " | "), and loose text in containers. Dropped: script, style, nav, header (outside
<main>/<article>), footer, aside, form, noscript and friends, and every element whose class, id or
role says it is navigation, a menu, footer, sidebar, cookie notice or banner. When the page has a
<main> (or exactly one <article>), only that is read."""

from __future__ import annotations

import re
from typing import Any

from meshgate.knowledge.parsers.base import (
    Block,
    ParsedDocument,
    ParseError,
    SectionPath,
    clean_inline,
    clean_lines,
    decode_text,
)

_DROPPED_TAGS = frozenset(
    {"script", "style", "nav", "footer", "aside", "form", "noscript", "template", "svg", "iframe", "button",
     "select", "canvas", "object", "embed", "dialog", "head", "-comment"}
)  # fmt: skip
_BOILERPLATE = re.compile(
    r"(?:^|[-_])(?:nav|navbar|navigation|menu|menubar|footer|sidebar|cookie|cookies|consent|banner|breadcrumbs?)(?:$|[-_])",
    re.IGNORECASE,
)
_BOILERPLATE_ROLES = frozenset({"navigation", "banner", "contentinfo", "complementary", "menu", "menubar"})
#: Elements that only wrap the content: never dropped for their class ("has-sidebar" on <body>).
_CONTENT_ROOTS = frozenset({"html", "body", "main", "article"})
#: Elements that end the running paragraph: the text before and after them are separate blocks.
_BLOCK_TAGS = frozenset(
    {"address", "article", "blockquote", "body", "br", "caption", "dd", "details", "div", "dl", "dt", "fieldset",
     "figcaption", "figure", "header", "hr", "li", "main", "ol", "p", "section", "summary", "table", "tbody",
     "thead", "tfoot", "ul", "td", "th"}
)  # fmt: skip
_HEADINGS = {f"h{level}": level for level in range(1, 7)}
_CELL_CONTAINERS = "p, div, table, ul, ol, pre, h1, h2, h3, h4, h5, h6"
_META_CHARSET = re.compile(rb"""<meta[^>]{0,200}?charset\s*=\s*["']?([A-Za-z0-9_.:-]{1,40})""", re.IGNORECASE)


def parse_html(data: bytes, stem: str, charset: str | None = None) -> ParsedDocument:
    from selectolax.lexbor import LexborHTMLParser

    if charset is None:
        match = _META_CHARSET.search(data[:4096])
        charset = match.group(1).decode("ascii") if match else None
    tree = LexborHTMLParser(decode_text(data, charset))
    title_node = tree.css_first("title")
    title = clean_inline(title_node.text()) if title_node is not None else ""
    root = tree.css_first("main")
    if root is None:
        articles = tree.css("article")
        root = articles[0] if len(articles) == 1 else tree.body
    if root is None:
        raise ParseError("empty document")
    blocks = _Walker().walk(root)
    first_heading = next((block.text for block in blocks if block.heading), "")
    return ParsedDocument(title=title or first_heading or stem, format="html", blocks=tuple(blocks))


def _is_boilerplate(node: Any, in_content: bool) -> bool:
    tag = node.tag
    if tag in _DROPPED_TAGS or (tag == "header" and not in_content):
        return True
    if tag in _CONTENT_ROOTS:
        return False
    attributes = node.attributes
    if "hidden" in attributes or (attributes.get("aria-hidden") or "").lower() == "true":
        return True
    if (attributes.get("role") or "").lower() in _BOILERPLATE_ROLES:
        return True
    names = f"{attributes.get('class') or ''} {attributes.get('id') or ''}".split()
    return any(_BOILERPLATE.search(name) for name in names)


class _Walker:
    """Depth-first over the tree with an explicit stack (deeply nested pages cannot overflow it)."""

    def __init__(self) -> None:
        self.blocks: list[Block] = []
        self.buffer: list[str] = []
        self.path = SectionPath()

    def flush(self) -> None:
        text = clean_inline("".join(self.buffer))
        self.buffer.clear()
        if text:
            self.blocks.append(Block(text, section=self.path.current))

    def walk(self, root: Any) -> list[Block]:
        # Entries: (node, inside main/article) to enter, or None to close a block element.
        stack: list[tuple[Any, bool] | None] = [(root, root.tag in ("main", "article"))]
        while stack:
            entry = stack.pop()
            if entry is None:
                self.flush()
                continue
            node, in_content = entry
            tag = node.tag
            if tag == "-text":
                self.buffer.append(node.text(deep=False) or "")
                continue
            if _is_boilerplate(node, in_content):
                continue
            if tag in _HEADINGS:
                self.flush()
                text = clean_inline(node.text(deep=True, separator=" "))
                if text:
                    self.blocks.append(Block(text, section=self.path.enter(_HEADINGS[tag], text), heading=True))
                continue
            if tag == "pre":
                self.flush()
                text = clean_lines(node.text(deep=True))
                if text:
                    self.blocks.append(Block(text, section=self.path.current))
                continue
            if tag == "tr" and node.css_first(_CELL_CONTAINERS) is None:
                self.flush()
                cells = [clean_inline(cell.text(deep=True, separator=" ")) for cell in node.css("td, th")]
                row = " | ".join(cell for cell in cells if cell)
                if row:
                    self.blocks.append(Block(row, section=self.path.current))
                continue
            if tag in _BLOCK_TAGS:
                self.flush()
                stack.append(None)
            in_content = in_content or tag in ("main", "article")
            stack.extend((child, in_content) for child in reversed(list(node.iter(include_text=True))))
        self.flush()
        return self.blocks
