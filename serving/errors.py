"""The one error taxonomy of Bastion.

Every failure that can reach a client is a ``BastionError`` subclass. Each class
carries its HTTP status, its OpenAI-style ``type`` and ``code``, and whether a
client may retry. ``node`` maps the tree to HTTP in one exception handler and to
SSE error events mid-stream; ``serving`` and ``router`` raise from it. Decide by
type, never by message text.

``audit`` imports nothing of ours, so its own errors are mapped into this tree
by ``node``.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "BastionError",
    "BudgetExceededError",
    "ContextLengthExceededError",
    "EngineUnavailableError",
    "InternalError",
    "ModelNotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "PinMismatchError",
    "RateLimitedError",
    "RedactionError",
    "ResidencyRejectedError",
    "ServiceUnavailableError",
    "UnsupportedFieldError",
    "UpstreamError",
]


class BastionError(Exception):
    """Base of the taxonomy: status, OpenAI ``type`` and ``code``, retryability."""

    status_code: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    code: ClassVar[str] = "internal_error"
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        retry_after_s: float | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after_s = retry_after_s
        #: machine-readable routing reason (``x-bastion-route-reason``), if any
        self.reason = reason

    def to_body(self) -> dict[str, dict[str, str | None]]:
        """The OpenAI-style error body."""
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}


class BadRequestError(BastionError):
    status_code = 400
    type = "invalid_request_error"
    code = "invalid_request"


class ContextLengthExceededError(BadRequestError):
    code = "context_length_exceeded"


class UnsupportedFieldError(BadRequestError):
    """No route this request may take honours a field it sets (``serving.contract``)."""

    code = "unsupported_field"

    def __init__(
        self, message: str, *, param: str, reason: str, skipped: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super().__init__(message, param=param, reason=reason)
        #: (route, reason) of every candidate left out of the plan
        self.skipped = skipped


class AuthenticationError(BastionError):
    status_code = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDeniedError(BastionError):
    status_code = 403
    type = "permission_error"
    code = "model_not_allowed"


class ModelNotFoundError(BastionError):
    status_code = 404
    type = "invalid_request_error"
    code = "model_not_found"


class PayloadTooLargeError(BastionError):
    status_code = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class RateLimitedError(BastionError):
    status_code = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"
    retryable = True


class BudgetExceededError(RateLimitedError):
    code = "budget_exceeded"
    retryable = False


class InternalError(BastionError):
    status_code = 500


class UpstreamError(BastionError):
    """An external provider failed (5xx, bad stream, timeout) and no fallback was left."""

    status_code = 502
    type = "api_error"
    code = "upstream_error"
    retryable = True


class ServiceUnavailableError(BastionError):
    status_code = 503
    type = "server_error"
    code = "service_unavailable"
    retryable = True


class EngineUnavailableError(ServiceUnavailableError):
    code = "engine_unavailable"


class ResidencyRejectedError(ServiceUnavailableError):
    """Residency forbids every candidate that could take the request now."""

    code = "residency_no_capacity"


class RedactionError(ServiceUnavailableError):
    """Redaction could not run: the request is not sent out (fail closed)."""

    code = "redaction_failed"
    retryable = False


class PinMismatchError(BastionError):
    """A model file does not match its pin; never reaches a client (serve refuses to start)."""

    code = "pin_mismatch"
