"""Real sample files, generated at test time: PDFs with fpdf2 (and pypdf to encrypt), DOCX with
python-docx, and damaged copies made by cutting bytes."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence


def make_pdf(pages: Sequence[Sequence[str]], title: str | None = None) -> bytes:
    """A PDF with one page per item; each page's paragraphs separated by an empty line."""
    from fpdf import FPDF

    pdf = FPDF()
    if title:
        pdf.set_title(title)
    for paragraphs in pages:
        pdf.add_page()
        pdf.set_font("Helvetica", size=11)
        for paragraph in paragraphs:
            pdf.multi_cell(0, 6, paragraph)
            pdf.ln(6)
    return bytes(pdf.output())


def make_blank_pdf(pages: int = 2) -> bytes:
    """Pages without text, as a scanned document's look to a text extractor."""
    from fpdf import FPDF

    pdf = FPDF()
    for _ in range(pages):
        pdf.add_page()
        pdf.set_fill_color(200, 200, 200)
        pdf.rect(20, 20, 100, 150, style="F")
    return bytes(pdf.output())


def make_encrypted_pdf(user_password: str = "secret") -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(make_pdf([["Confidential figures for the board."]]))))
    writer.encrypt(user_password, owner_password="owner", algorithm="AES-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def truncate(data: bytes, fraction: float = 0.6) -> bytes:
    return data[: int(len(data) * fraction)]


def make_docx(title: str = "Operations Guide") -> bytes:
    """Title, two top-level sections with a sub-section, a list, and a table with a merged cell."""
    import docx

    document = docx.Document()
    document.core_properties.title = ""
    document.add_heading(title, 0)
    document.add_paragraph("This guide explains how to run the service.")
    document.add_heading("Install", 1)
    document.add_paragraph("Download the package and unpack it into the target folder.")
    document.add_heading("Linux", 2)
    document.add_paragraph("On Linux, run the installer as root.", style="List Bullet")
    table = document.add_table(rows=3, cols=2)
    table.cell(0, 0).text = "Distribution"
    table.cell(0, 1).text = "Package"
    table.cell(1, 0).text = "Debian"
    table.cell(1, 1).text = "deb"
    merged = table.cell(2, 0).merge(table.cell(2, 1))
    merged.text = "Other distributions use the tarball"
    document.add_heading("Upgrade", 1)
    document.add_paragraph("Stop the service before upgrading it.")
    document.sections[0].footer.paragraphs[0].text = "Page footer boilerplate"
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def make_zip_bomb_docx(inflated_bytes: int) -> bytes:
    """A zip that passes for a DOCX and inflates to `inflated_bytes` (of zeros, a few KB packed)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("word/document.xml", "<document/>")
        with archive.open("word/media/padding.bin", "w") as entry:
            chunk = b"\0" * 2**20
            for _ in range(inflated_bytes // len(chunk)):
                entry.write(chunk)
    return out.getvalue()


HTML_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Refund Policy | Example Shop</title>
<style>body { color: red }</style><script>var tracking = "do not index";</script></head>
<body class="has-sidebar">
<header><a href="/">Example Shop</a> Home Products Contact</header>
<nav><ul><li>Navigation link one</li><li>Navigation link two</li></ul></nav>
<div class="cookie-banner">We use cookies to improve your experience.</div>
<div id="main-menu">Menu entry</div>
<main>
<h1>Refund policy</h1>
<p>You can return any item within <b>30 days</b> of delivery.</p>
<h2>Exceptions</h2>
<ul><li>Gift cards cannot be refunded.</li><li>Opened software is exchanged only.</li></ul>
<pre>refund --order 1234
  --reason damaged</pre>
<table><tr><th>Region</th><th>Days</th></tr><tr><td>EU</td><td>30</td></tr></table>
<aside>Related articles you may like</aside>
</main>
<div class="sidebar">Popular posts</div>
<footer>Copyright 2026 Example Shop</footer>
</body></html>
"""

MARKDOWN_PAGE = """---
title: Deployment Handbook
author: ops
---

# Deployment

Deploy with **one command** and [the CLI](https://example.com/cli).

## Staging

- Build the image.
- Push it to the registry.

```sh
make deploy ENV=staging
```

| Env | Region |
|-----|--------|
| staging | eu-west |

## Production

Production deploys need two approvals.
"""

CSV_TABLE = (
    "name;team;email\nAda Lovelace;research;ada@example.com\nAlan Turing;crypto;\n\n"
    "Grace Hopper;compilers;grace@example.com\n"
)
