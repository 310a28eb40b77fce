"""One exception handler: every failure becomes an OpenAI-style error body.

``BastionError`` subclasses (the tree in ``serving.errors``) carry their own
status and code; Litestar's own HTTP exceptions (413, 404 route, 405) and the
audit log's errors are mapped into the same tree here, so clients see one
shape everywhere.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException

from audit import AuditError, AuditUnavailableError
from serving.errors import (
    AuditFailedError,
    BadRequestError,
    BastionError,
    InternalError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
)

__all__ = ["error_response", "exception_handlers", "to_bastion_error"]

_log = logging.getLogger("bastion.errors")


def to_bastion_error(exc: BaseException) -> BastionError:
    """Map any exception into the taxonomy (unknown ones become a 500 without details)."""
    if isinstance(exc, BastionError):
        return exc
    if isinstance(exc, AuditUnavailableError):
        return AuditFailedError(
            "The audit log cannot record this request right now; nothing was sent.", retry_after_s=1.0
        )
    if isinstance(exc, AuditError):
        return AuditFailedError("The audit log failed; the request was not processed.")
    if isinstance(exc, HTTPException):
        if exc.status_code == 413:
            return PayloadTooLargeError("The request body is larger than this node accepts.")
        if exc.status_code == 404:
            return NotFoundError("Unknown path.")
        if exc.status_code == 405:
            return MethodNotAllowedError("Method not allowed for this path.")
        if 400 <= exc.status_code < 500:
            return BadRequestError(str(exc.detail))
        return InternalError("Internal server error.")
    _log.error("unhandled error", exc_info=exc)
    return InternalError("Internal server error.")


def error_response(err: BastionError, request_id: str | None = None) -> Response[dict[str, object]]:
    headers: dict[str, str] = {}
    if err.retry_after_s is not None:
        headers["retry-after"] = str(max(1, math.ceil(err.retry_after_s)))
    if err.reason:
        headers["x-bastion-route-error"] = err.reason
    if request_id:
        headers["x-request-id"] = request_id
    return Response(err.to_body(), status_code=err.status_code, headers=headers)  # type: ignore[arg-type]


def _handle(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, object]]:
    state = request.scope.get("state", {})
    request_id = state.get("request_id")
    response = error_response(to_bastion_error(exc), request_id if isinstance(request_id, str) else None)
    # where the router had got to when the request was refused (``RequestRecord.refusal_headers``)
    response.headers.update(state.get("route_headers") or {})
    return response


exception_handlers = {Exception: _handle}
