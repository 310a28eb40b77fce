"""The context layer's errors: members of the node's one tree (``serving.errors.BastionError``).

An id the tenant does not own is ``NotFoundError`` (404), exactly as an id that
never existed, so a tenant cannot learn that another tenant's store or file
exists. A file that cannot be read is ``FileParseError`` (400, naming why); one
past the configured size limit is ``FileTooLargeError`` (413).
"""

from __future__ import annotations

from serving.errors import BadRequestError, BastionError, PayloadTooLargeError

__all__ = ["FileParseError", "FileTooLargeError", "NotFoundError", "UnsupportedFileError"]


class NotFoundError(BastionError):
    """No such vector store, file or store file for this tenant."""

    status_code = 404
    type = "invalid_request_error"
    code = "not_found"


class FileParseError(BadRequestError):
    """The file's bytes cannot be read as the format its name says; the message names why."""

    code = "file_parse_error"


class UnsupportedFileError(FileParseError):
    """A file type this node does not read (by its extension)."""

    code = "unsupported_file"


class FileTooLargeError(PayloadTooLargeError):
    """The file, or the text parsed from it, is past a configured limit."""
