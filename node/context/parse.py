"""Files to text: plain text, Markdown, HTML and PDF, each read by a well-kept parser.

The format is the file name's extension (what OpenAI's file search goes by):

- ``.txt``, ``.text``, ``.csv``, ``.json``, ``.log``: UTF-8 text (a BOM is dropped);
- ``.md``, ``.markdown``: rendered by ``markdown-it-py`` (CommonMark), then read as HTML,
  so markup (``**``, link targets, fences) does not become search terms;
- ``.html``, ``.htm``: ``beautifulsoup4`` on Python's own HTML parser; ``script``,
  ``style`` and ``template`` content is dropped;
- ``.pdf``: ``pypdf``'s text extraction, page by page. An encrypted PDF, a damaged
  one, or one without a text layer (a scan) is refused: no OCR here.

A file that cannot be read raises ``FileParseError`` naming the file and why;
text past ``max_chars`` raises ``FileTooLargeError``.
"""

from __future__ import annotations

import io
import logging
from pathlib import PurePath

from bs4 import BeautifulSoup
from markdown_it import MarkdownIt

from serving.errors import FileParseError, FileTooLargeError, UnsupportedFileError

__all__ = ["SUPPORTED_EXTENSIONS", "parse_file"]

_TEXT = frozenset({".txt", ".text", ".csv", ".json", ".log"})
_MARKDOWN = frozenset({".md", ".markdown"})
_HTML = frozenset({".html", ".htm"})
_PDF = frozenset({".pdf"})
_BLOCKS = [
    *("p", "div", "li", "dt", "dd", "tr", "td", "th", "pre", "blockquote", "section", "article"),
    *("header", "footer", "h1", "h2", "h3", "h4", "h5", "h6", "title", "caption", "figcaption", "hr"),
]
SUPPORTED_EXTENSIONS = tuple(sorted(_TEXT | _MARKDOWN | _HTML | _PDF))


def parse_file(filename: str, content: bytes, *, max_chars: int) -> str:
    """The text of a file, by its extension; raises FileParseError / FileTooLargeError."""
    ext = PurePath(filename).suffix.lower()
    if ext in _TEXT:
        text = _utf8(filename, content)
    elif ext in _MARKDOWN:
        text = _html_text(MarkdownIt("commonmark").render(_utf8(filename, content)))
    elif ext in _HTML:
        text = _html_text(_utf8(filename, content))
    elif ext in _PDF:
        text = _pdf_text(filename, content)
    else:
        raise UnsupportedFileError(
            f"'{filename}': unsupported file type {ext or '(no extension)'!r}; "
            f"supported: {', '.join(SUPPORTED_EXTENSIONS)}.",
            param="file",
        )
    if len(text) > max_chars:
        raise FileTooLargeError(
            f"'{filename}' holds {len(text)} characters of text, more than this node's limit of {max_chars}.",
            param="file",
        )
    if not text.strip():
        raise FileParseError(f"'{filename}' holds no text.", param="file")
    return text


def _utf8(filename: str, content: bytes) -> str:
    try:
        return content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FileParseError(
            f"'{filename}' is not UTF-8 text (byte 0x{content[exc.start]:02x} at offset {exc.start}).",
            param="file",
        ) from None


def _html_text(html: str) -> str:
    soup = BeautifulSoup(html, "html.parser")
    for tag in soup(["script", "style", "template", "noscript"]):
        tag.decompose()
    # a block ends a line; inline markup (<b>, <a>) stays inside its sentence
    for tag in soup.find_all(_BLOCKS):
        tag.insert_after("\n")
    for tag in soup.find_all("br"):
        tag.replace_with("\n")
    lines = (" ".join(line.split()) for line in soup.get_text().splitlines())
    return "\n".join(line for line in lines if line)


def _pdf_text(filename: str, content: bytes) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    # pypdf logs each recoverable defect as a warning: the node's log is not the place for them
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = PdfReader(io.BytesIO(content), strict=False)
        if reader.is_encrypted:
            raise FileParseError(f"'{filename}' is an encrypted PDF; upload it decrypted.", param="file")
        pages = [page.extract_text() or "" for page in reader.pages]
    except FileParseError:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError, OSError) as exc:
        raise FileParseError(
            f"'{filename}' is not a readable PDF: {type(exc).__name__}: {exc}", param="file"
        ) from None
    text = "\n\n".join(p.strip() for p in pages if p.strip())
    if not text:
        raise FileParseError(
            f"'{filename}' is a PDF without a text layer ({len(pages)} page(s), no extractable text; "
            "a scan needs OCR first).",
            param="file",
        )
    return text
