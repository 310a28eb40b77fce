"""A ``multipart/form-data`` body read in memory (``POST /v1/files``).

Litestar's own form parsing spools a file part past 1 MiB to a temporary file
on disk, in clear; an uploaded document must touch the disk only encrypted, so
the body (already capped by the route's ``request_max_body_size``) is parsed
here with the same parser (``multipart``), every part kept in memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from multipart import (
    MultipartSegment,
    ParserError,
    ParserLimitReached,
    PushMultipartParser,
    parse_options_header,
)

from serving.errors import BadRequestError

__all__ = ["FormPart", "read_form"]

#: a form has a file and a few small fields
_MAX_PARTS = 16


@dataclass(frozen=True)
class FormPart:
    name: str
    filename: str | None
    data: bytes


def read_form(content_type: str | None, body: bytes) -> dict[str, FormPart]:
    """The parts of a ``multipart/form-data`` body by name (400 for anything else)."""
    kind, options = parse_options_header(content_type or "")
    boundary = options.get("boundary")
    if kind != "multipart/form-data" or not boundary:
        raise BadRequestError(
            "the body must be multipart/form-data with a boundary (a `file` and a `purpose`)."
        )
    parts: dict[str, FormPart] = {}
    segment: MultipartSegment | None = None
    data = bytearray()
    try:
        with PushMultipartParser(boundary.encode(), max_segment_count=_MAX_PARTS) as parser:
            for chunk in (body, b""):
                for piece in parser.parse(chunk):
                    if isinstance(piece, MultipartSegment):
                        segment, data = piece, bytearray()
                    elif piece:
                        data += piece
                    elif segment is not None:
                        if segment.name in parts:
                            raise BadRequestError(f"the form has `{segment.name}` twice.", param=segment.name)
                        parts[segment.name] = FormPart(segment.name, segment.filename, bytes(data))
                        segment = None
            if not parser.closed:
                raise BadRequestError("the multipart/form-data body ends early.")
    except ParserLimitReached:
        raise BadRequestError(f"the form has more than {_MAX_PARTS} parts.") from None
    except ParserError as exc:
        raise BadRequestError(f"the multipart/form-data body cannot be read: {exc}") from None
    return parts
