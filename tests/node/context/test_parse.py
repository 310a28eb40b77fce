"""Files to text with the real parsers (markdown-it-py, beautifulsoup4, pypdf); every refusal names why."""

from __future__ import annotations

import pytest

from node.context import FileParseError, FileTooLargeError, parse_file
from tests.node.context.conftest import pdf_bytes

LIMIT = 1_000_000


def test_text_markdown_and_html_give_their_words_not_their_markup() -> None:
    assert parse_file("a.txt", "\ufeffPlain ÄÖ text".encode(), max_chars=LIMIT) == "Plain ÄÖ text"
    md = parse_file(
        "a.md", b"# Dosage\n\n**Metoprolol** 50 mg, see [the leaflet](http://x.example/l).", max_chars=LIMIT
    )
    assert "Metoprolol 50 mg" in md and "**" not in md and "x.example" not in md and "Dosage" in md
    html = parse_file(
        "a.HTML",
        b"<html><head><style>p{color:red}</style><script>var secret=1</script></head>"
        b"<body><h1>Account</h1><p>Number <b>DE44-5001</b></p></body></html>",
        max_chars=LIMIT,
    )
    assert html.splitlines() == ["Account", "Number DE44-5001"]


def test_pdf_text_layer_is_read() -> None:
    text = parse_file("leaflet.pdf", pdf_bytes("Article 17 GDPR", "Right to erasure"), max_chars=LIMIT)
    assert "Article 17 GDPR" in text and "Right to erasure" in text


@pytest.mark.parametrize(
    ("name", "content", "why"),
    [
        ("a.txt", b"caf\xe9 au lait", "not UTF-8 text (byte 0xe9 at offset 3)"),
        ("a.pdf", b"%PDF-1.4 this is not really a pdf", "not a readable PDF"),
        ("a.pdf", pdf_bytes(), "without a text layer"),
        ("a.docx", b"PK\x03\x04", "unsupported file type '.docx'"),
        ("README", b"text", "unsupported file type '(no extension)'"),
        ("a.md", b"   \n\n  ", "holds no text"),
        ("a.html", b"<script>only code</script>", "holds no text"),
    ],
)
def test_unreadable_files_are_refused_naming_why(name: str, content: bytes, why: str) -> None:
    with pytest.raises(FileParseError) as info:
        parse_file(name, content, max_chars=LIMIT)
    assert why in info.value.message and name in info.value.message
    assert info.value.code == ("unsupported_file" if "unsupported" in why else "file_parse_error")
    assert info.value.status_code == 400 and info.value.param == "file"


def test_text_past_the_limit_is_refused() -> None:
    with pytest.raises(FileTooLargeError) as info:
        parse_file("big.txt", b"x" * 101, max_chars=100)
    assert info.value.status_code == 413 and "101 characters" in info.value.message
