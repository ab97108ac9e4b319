"""Parsers on real generated files: what each format keeps, and every failure a ParseError with a reason."""

from __future__ import annotations

import io
import random
import zipfile

import pytest

from meshgate.knowledge.parsers import pdf as pdf_parser
from meshgate.knowledge.parsing import FORMATS, ParseError, detect_format, parse_document
from tests.knowledge import fixtures


def reason_of(data: bytes, filename: str, max_bytes: int = 50 * 2**20) -> str:
    with pytest.raises(ParseError) as caught:
        parse_document(data, filename, max_bytes=max_bytes)
    return caught.value.reason


# -- format detection ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "expected"),
    [("a.PDF", "pdf"), ("b.docx", "docx"), ("c.htm", "html"), ("d.markdown", "markdown"), ("e.text", "text"),
     ("f.csv", "csv"), ("dir.v2/notes.md", "markdown")],
)  # fmt: skip
def test_detect_by_suffix(filename: str, expected: str) -> None:
    assert detect_format(filename) == expected


def test_detect_by_content_type_then_signature() -> None:
    assert detect_format("upload", "text/markdown; charset=utf-8") == "markdown"
    assert detect_format("upload", None, b"%PDF-1.7 ...") == "pdf"
    assert detect_format("upload.bin", "application/octet-stream", b"<!DOCTYPE html><p>x") == "html"
    assert detect_format("upload", None, fixtures.make_docx()) == "docx"
    # A PDF signature wins over a text suffix (a mislabelled upload), not the other way round.
    assert detect_format("report.txt", None, b"%PDF-1.4\n") == "pdf"
    assert detect_format("notes.txt", None, b"<html>") == "text"


def test_unsupported_format_has_a_reason() -> None:
    with pytest.raises(ParseError) as caught:
        detect_format("slides.pptx", "application/vnd.ms-powerpoint", b"PK\x03\x04junk")
    assert caught.value.reason.startswith("unsupported format (.pptx)")
    assert str(caught.value) == caught.value.reason
    assert set(FORMATS.values()) == {"pdf", "docx", "html", "markdown", "text", "csv"}


# -- PDF ---------------------------------------------------------------------------------------------


def test_pdf_keeps_pages_and_title() -> None:
    data = fixtures.make_pdf(
        [["Alpha page one.", "Second paragraph of page one."], ["Beta page two."], ["Gamma page three."]],
        title="Quarterly Report",
    )
    doc = parse_document(data, "q3.pdf")
    assert doc.format == "pdf"
    assert doc.title == "Quarterly Report"
    by_page: dict[int, str] = {}
    for block in doc.blocks:
        assert block.page is not None
        by_page[block.page] = by_page.get(block.page, "") + block.text
    assert sorted(by_page) == [1, 2, 3]
    assert "Alpha" in by_page[1] and "Second paragraph" in by_page[1]
    assert "Beta" in by_page[2] and "Gamma" in by_page[3]
    assert all(block.section is None and not block.heading for block in doc.blocks)


def test_pdf_title_falls_back_to_file_stem() -> None:
    assert parse_document(fixtures.make_pdf([["Some text."]]), "folder/annual-plan.pdf").title == "annual-plan"


def test_encrypted_pdf_is_refused() -> None:
    assert reason_of(fixtures.make_encrypted_pdf(), "secret.pdf") == "encrypted PDF"
    # Even one that opens with an empty password: its owner restricted it.
    assert reason_of(fixtures.make_encrypted_pdf(user_password=""), "restricted.pdf") == "encrypted PDF"


def test_truncated_and_broken_pdfs() -> None:
    data = fixtures.make_pdf([["Some text on a page."], ["More text."]])
    assert reason_of(fixtures.truncate(data), "cut.pdf").startswith("truncated PDF")
    assert reason_of(b"%PDF-1.4\nnot really a pdf at all\n%%EOF\n", "fake.pdf").startswith("broken PDF")
    assert reason_of(b"Just text, no header.", "renamed.pdf") == "not a PDF (no %PDF- header)"


def test_pdf_without_text_is_scanned_or_empty() -> None:
    assert reason_of(fixtures.make_blank_pdf(), "scan.pdf") == "no extractable text (scanned or empty)"


def test_pdf_page_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pdf_parser, "MAX_PAGES", 2)
    data = fixtures.make_pdf([["one"], ["two"], ["three"]])
    assert reason_of(data, "long.pdf") == "PDF has 3 pages (limit 2)"


# -- DOCX --------------------------------------------------------------------------------------------


def test_docx_headings_sections_and_tables() -> None:
    doc = parse_document(fixtures.make_docx(), "guide.docx")
    assert doc.format == "docx"
    assert doc.title == "Operations Guide"
    headings = [(block.text, block.section) for block in doc.blocks if block.heading]
    assert headings == [
        ("Operations Guide", "Operations Guide"),
        ("Install", "Operations Guide > Install"),
        ("Linux", "Operations Guide > Install > Linux"),
        ("Upgrade", "Operations Guide > Upgrade"),
    ]
    body = {block.text: block.section for block in doc.blocks if not block.heading}
    assert body["On Linux, run the installer as root."] == "Operations Guide > Install > Linux"
    assert body["Distribution | Package"] == "Operations Guide > Install > Linux"
    assert "Debian | deb" in body
    # A merged cell is one cell, not repeated per grid column.
    assert "Other distributions use the tarball" in body
    assert body["Stop the service before upgrading it."] == "Operations Guide > Upgrade"
    assert "footer" not in doc.text


def test_broken_docx() -> None:
    data = fixtures.make_docx()
    assert reason_of(fixtures.truncate(data, 0.5), "cut.docx") == "not a DOCX (bad zip)"
    assert reason_of(b"plain text pretending", "fake.docx") == "not a DOCX (bad zip)"
    other = io.BytesIO()
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("content.xml", "<x/>")
    assert reason_of(other.getvalue(), "odt.docx") == "not a DOCX (no word/document.xml)"
    corrupt = io.BytesIO()
    with zipfile.ZipFile(corrupt, "w") as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("word/document.xml", "<w:document")
    assert reason_of(corrupt.getvalue(), "corrupt.docx").startswith("broken DOCX")


def test_docx_zip_bomb_is_refused_before_inflating() -> None:
    bomb = fixtures.make_zip_bomb_docx(8 * 2**20)
    assert len(bomb) < 100_000
    reason = reason_of(bomb, "bomb.docx", max_bytes=100_000)
    assert "zip bomb" in reason and "limit 2000000" in reason


# -- HTML --------------------------------------------------------------------------------------------


def test_html_main_text_without_boilerplate() -> None:
    doc = parse_document(fixtures.HTML_PAGE.encode(), "refunds.html")
    assert doc.format == "html"
    assert doc.title == "Refund Policy | Example Shop"
    text = doc.text
    for boilerplate in ("cookies", "Navigation link", "Menu entry", "Copyright", "tracking", "Popular posts",
                        "Related articles", "color: red", "Products Contact"):  # fmt: skip
        assert boilerplate not in text
    blocks = [(block.text, block.section, block.heading) for block in doc.blocks]
    assert blocks[0] == ("Refund policy", "Refund policy", True)
    assert ("You can return any item within 30 days of delivery.", "Refund policy", False) in blocks
    assert ("Gift cards cannot be refunded.", "Refund policy > Exceptions", False) in blocks
    assert ("refund --order 1234\n--reason damaged", "Refund policy > Exceptions", False) in blocks
    assert ("Region | Days", "Refund policy > Exceptions", False) in blocks
    assert ("EU | 30", "Refund policy > Exceptions", False) in blocks


def test_html_without_main_reads_the_body_and_keeps_article_headers() -> None:
    page = (
        b"<html><body><div class='navbar'>Top links</div><article><header><h1>Release notes</h1></header>"
        b"<div>Loose text in a div<br>after a break</div><p>Version 2 is out.</p></article>"
        b"<div class='site-footer'>Footer links</div></body></html>"
    )
    doc = parse_document(page, "notes.html")
    assert [block.text for block in doc.blocks] == [
        "Release notes", "Loose text in a div", "after a break", "Version 2 is out."
    ]  # fmt: skip
    assert doc.title == "Release notes"


def test_html_charset_from_meta_and_deep_nesting() -> None:
    latin = "<html><head><meta charset='iso-8859-1'></head><body><p>Café crème</p></body></html>"
    assert parse_document(latin.encode("latin-1"), "fr.html").text == "Café crème"
    deep = "<div>" * 5000 + "<p>deep text</p>" + "</div>" * 5000
    assert parse_document(deep.encode(), "deep.html").text == "deep text"


# -- Markdown ----------------------------------------------------------------------------------------


def test_markdown_structure() -> None:
    doc = parse_document(fixtures.MARKDOWN_PAGE.encode(), "handbook.md")
    assert doc.format == "markdown"
    assert doc.title == "Deployment Handbook"  # from the front matter, which is not text
    assert "author" not in doc.text
    blocks = [(block.text, block.section, block.heading) for block in doc.blocks]
    assert blocks == [
        ("Deployment", "Deployment", True),
        ("Deploy with one command and the CLI.", "Deployment", False),
        ("Staging", "Deployment > Staging", True),
        ("Build the image.", "Deployment > Staging", False),
        ("Push it to the registry.", "Deployment > Staging", False),
        ("make deploy ENV=staging", "Deployment > Staging", False),
        ("Env | Region", "Deployment > Staging", False),
        ("staging | eu-west", "Deployment > Staging", False),
        ("Production", "Deployment > Production", True),
        ("Production deploys need two approvals.", "Deployment > Production", False),
    ]


def test_markdown_title_from_first_heading() -> None:
    assert parse_document(b"Intro line.\n\n## Usage\n\nRun it.\n", "x.md").title == "Usage"


# -- plain text and CSV ------------------------------------------------------------------------------


def test_text_paragraphs_and_encodings() -> None:
    doc = parse_document(b"\xef\xbb\xbfFirst  paragraph\r\nsame paragraph.\r\n\r\n\r\nSecond one.\n", "notes.txt")
    assert [block.text for block in doc.blocks] == ["First paragraph\nsame paragraph.", "Second one."]
    assert doc.title == "notes" and doc.format == "text"
    smart = "“Smart” quotes \u2013 dash"
    assert parse_document(smart.encode("cp1252"), "w.txt").text == smart
    assert parse_document(b"undefined in cp1252: \x81", "l.txt").text == "undefined in cp1252: \x81"
    assert parse_document("ünïcode".encode("utf-16"), "u16.txt").text == "ünïcode"
    assert parse_document("£5".encode("cp1252"), "p.txt", content_type="text/plain; charset=latin-1").text == "£5"


def test_binary_and_empty_files() -> None:
    assert reason_of(b"\x7fELF\x02\x01\x01\x00\x00\x00", "program.txt") == "binary file (NUL bytes)"
    assert reason_of(b"", "empty.txt") == "empty document"
    assert reason_of(b" \n\n\t ", "blank.md") == "empty document"
    assert reason_of(b"<html><body><nav>only a menu</nav></body></html>", "nav.html") == (
        "no extractable text (scanned or empty)"
    )


def test_csv_rows_as_blocks() -> None:
    doc = parse_document(fixtures.CSV_TABLE.encode(), "people.csv")
    assert doc.format == "csv"
    assert [block.text for block in doc.blocks] == [
        "Columns: name, team, email",
        "name: Ada Lovelace; team: research; email: ada@example.com",
        "name: Alan Turing; team: crypto",
        "name: Grace Hopper; team: compilers; email: grace@example.com",
    ]
    tabs = parse_document(b"a\tb\n1\t2\t3\n", "t.csv")
    assert tabs.blocks[-1].text == "a: 1; b: 2; column 3: 3"


def test_size_limit() -> None:
    assert reason_of(b"x" * 101, "big.txt", max_bytes=100) == "file too large (101 bytes, limit 100)"


# -- robustness ---------------------------------------------------------------------------------------


def test_damaged_files_of_every_format_raise_only_parse_errors() -> None:
    """Cut, flipped and random bytes under every suffix: a document or a ParseError, nothing else."""
    rng = random.Random(15)
    samples = {
        "x.pdf": fixtures.make_pdf([["Some text here."], ["Page two."]]),
        "x.docx": fixtures.make_docx(),
        "x.html": fixtures.HTML_PAGE.encode(),
        "x.md": fixtures.MARKDOWN_PAGE.encode(),
        "x.csv": fixtures.CSV_TABLE.encode(),
        "x.txt": b"plain words here\n\nand more",
    }
    outcomes = {"parsed": 0, "refused": 0}
    for filename, data in samples.items():
        for _ in range(25):
            damaged = bytearray(data)
            for _ in range(rng.randint(1, 20)):
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
            variants = [bytes(damaged), data[: rng.randrange(1, len(data))], rng.randbytes(rng.randint(1, 400))]
            for variant in variants:
                try:
                    parse_document(variant, filename)
                    outcomes["parsed"] += 1
                except ParseError as error:
                    assert error.reason
                    outcomes["refused"] += 1
    assert outcomes["parsed"] > 0 and outcomes["refused"] > 0
