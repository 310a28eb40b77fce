"""The one error tree of Bastion.

Every failure that can reach a client is a ``BastionError`` subclass, defined
here (the lowest layer ``serving``, ``router`` and ``node`` all import). Each
class carries, as class attributes, its HTTP ``status_code``, its OpenAI-style
``type`` and ``code``, whether a client may retry (``retryable``) and whether
the router may try the next candidate after it (``failover``). ``node`` maps
the tree to HTTP in one exception handler (``node.errors``) and to SSE error
events mid-stream. Decide by type, never by status range or message text.

The hierarchy::

    BastionError                      500 internal_error            failover
    ├── ClientError                   4xx: the request's fault, every candidate would refuse it: no failover
    │   ├── BadRequestError           400 invalid_request
    │   │   ├── ContextLengthExceededError   context_length_exceeded
    │   │   ├── UnsupportedFieldError        unsupported_field
    │   │   ├── BadResidencyHeaderError      bad_residency_header
    │   │   └── FileParseError               file_parse_error (an uploaded file cannot be read)
    │   │       └── UnsupportedFileError     unsupported_file (a file type the node does not read)
    │   ├── AuthenticationError       401 invalid_api_key
    │   ├── NotFoundError             404 not_found (unknown path; a file or vector store not the tenant's)
    │   │   ├── ModelNotFoundError           model_not_found (also a model the key may not use)
    │   │   └── RequestNotFoundError         request_not_found
    │   ├── MethodNotAllowedError     405 method_not_allowed
    │   ├── RequestTimeoutError       408 request_timeout           retryable
    │   ├── ConflictError             409 conflict
    │   │   └── FeedbackExistsError          feedback_exists
    │   ├── PayloadTooLargeError      413 payload_too_large
    │   │   └── FileTooLargeError            payload_too_large (a file or its text past a limit)
    │   └── RateLimitedError          429 rate_limit_exceeded       retryable
    │       └── BudgetExceededError          budget_exceeded
    ├── InternalError                 500 internal_error
    ├── ServiceUnavailableError       503 service_unavailable       retryable
    │   ├── EngineUnavailableError           engine_unavailable
    │   ├── ResidencyRejectedError           residency_no_capacity
    │   ├── RedactionError                   redaction_failed        (not retryable)
    │   ├── DrainingError                    draining
    │   ├── AuditFailedError                 audit_unavailable
    │   ├── StateUnavailableError            state_unavailable
    │   └── FeedbackUnavailableError         feedback_unavailable    (not retryable)
    └── UpstreamError                 502 upstream_error            retryable
        ├── UpstreamRateLimitedError  502 upstream_rate_limited (a cooldown, not a breaker failure)
        └── UpstreamTimeoutError      504 upstream_timeout

    StartupFailure                    never reaches HTTP: ``bastion serve`` exits (``node.startup.ExitCode``)
    ├── PinMismatchError              exit 3: a model file fails its pin
    ├── serving.models.ModelsConfigError     exit 2: models.toml unreadable, malformed or floating
    └── node.config.ConfigError       exit 2: node.toml missing, unreadable or invalid

There is no 403: a model a key may not use answers 404 ``model_not_found``, so
other tenants' models are not revealed. Breakers, ports, audit keys and file
modes fail start-up through ``node.startup.StartupError``; ``audit`` imports
nothing of ours, so its own small tree (``audit.errors``) is mapped into
``AuditFailedError`` by ``node.errors``.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AuditFailedError",
    "AuthenticationError",
    "BadRequestError",
    "BadResidencyHeaderError",
    "BastionError",
    "BudgetExceededError",
    "ClientError",
    "ConflictError",
    "ContextLengthExceededError",
    "DrainingError",
    "EngineUnavailableError",
    "FeedbackExistsError",
    "FeedbackUnavailableError",
    "FileParseError",
    "FileTooLargeError",
    "InternalError",
    "MethodNotAllowedError",
    "ModelNotFoundError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PinMismatchError",
    "RateLimitedError",
    "RedactionError",
    "RequestNotFoundError",
    "RequestTimeoutError",
    "ResidencyRejectedError",
    "ServiceUnavailableError",
    "StartupFailure",
    "StateUnavailableError",
    "UnsupportedFieldError",
    "UnsupportedFileError",
    "UpstreamError",
    "UpstreamRateLimitedError",
    "UpstreamTimeoutError",
]


class BastionError(Exception):
    """Base of the tree: status, OpenAI ``type`` and ``code``, retryability, failover."""

    status_code: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    code: ClassVar[str] = "internal_error"
    #: a client may send the same request again (with ``Retry-After`` where one is set)
    retryable: ClassVar[bool] = False
    #: after this failure on one candidate, the router may try the next one
    failover: ClassVar[bool] = True

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


# -- client errors (4xx) ---------------------------------------------------------------------------


class ClientError(BastionError):
    """The request itself is refused: another candidate would refuse it too, so no failover."""

    status_code = 400
    type = "invalid_request_error"
    code = "invalid_request"
    failover = False


class BadRequestError(ClientError):
    pass


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


class BadResidencyHeaderError(BadRequestError):
    """``x-bastion-residency`` could not be read: refused, since a misread header could loosen residency."""

    code = "bad_residency_header"


class FileParseError(BadRequestError):
    """An uploaded file's bytes cannot be read as the format its name says; the message names why."""

    code = "file_parse_error"


class UnsupportedFileError(FileParseError):
    """A file type this node does not read (by its extension)."""

    code = "unsupported_file"


class AuthenticationError(ClientError):
    status_code = 401
    type = "authentication_error"
    code = "invalid_api_key"


class NotFoundError(ClientError):
    """An unknown path; a vector store or file the tenant does not own (as one that never existed)."""

    status_code = 404
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    """An unknown model, or one the key may not use: the same answer for both."""

    code = "model_not_found"

    @classmethod
    def of(cls, model: str) -> ModelNotFoundError:
        """OpenAI's wording, the one answer whether ``model`` does not exist or is not the key's."""
        return cls(f"The model '{model}' does not exist or you do not have access to it.", param="model")


class RequestNotFoundError(NotFoundError):
    """Unknown request id, or another tenant's: the same answer for both."""

    code = "request_not_found"


class MethodNotAllowedError(ClientError):
    status_code = 405
    code = "method_not_allowed"


class RequestTimeoutError(ClientError):
    """The client did not send the request's headers or body within the server's deadlines."""

    status_code = 408
    code = "request_timeout"
    retryable = True


class ConflictError(ClientError):
    status_code = 409
    code = "conflict"


class FeedbackExistsError(ConflictError):
    """A request is rated once."""

    code = "feedback_exists"


class PayloadTooLargeError(ClientError):
    status_code = 413
    code = "payload_too_large"


class FileTooLargeError(PayloadTooLargeError):
    """An uploaded file, or the text parsed from it, is past a configured limit."""


class RateLimitedError(ClientError):
    status_code = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"
    retryable = True


class BudgetExceededError(RateLimitedError):
    code = "budget_exceeded"
    retryable = False


# -- server errors (5xx) ---------------------------------------------------------------------------


class InternalError(BastionError):
    status_code = 500


class ServiceUnavailableError(BastionError):
    """This node cannot take the request now; another node (or this one later) may."""

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


class DrainingError(ServiceUnavailableError):
    """The node is shutting down: a new request is refused, one in flight past the drain timeout is cut."""

    code = "draining"


class AuditFailedError(ServiceUnavailableError):
    """The audit log could not take the record: the request is refused (fail closed)."""

    code = "audit_unavailable"


class StateUnavailableError(ServiceUnavailableError):
    """The fleet's shared limit state (PostgreSQL) cannot be reached: the request is refused
    (fail closed), since admitting it could exceed a tenant's limits fleet-wide."""

    code = "state_unavailable"


class FeedbackUnavailableError(ServiceUnavailableError):
    """Feedback is stored in the audit log; with the log off there is nowhere to keep it."""

    code = "feedback_unavailable"
    retryable = False


class UpstreamError(BastionError):
    """An external provider failed (5xx, bad stream, timeout) and no fallback was left."""

    status_code = 502
    type = "api_error"
    code = "upstream_error"
    retryable = True


class UpstreamRateLimitedError(UpstreamError):
    """An external provider answered 429; ``retry_after_s`` holds its ``Retry-After``.

    The router treats it as a cooldown for that provider, not a breaker failure,
    and never shows it to a client as the tenant's own rate limit.
    """

    code = "upstream_rate_limited"


class UpstreamTimeoutError(UpstreamError):
    """An external provider missed its connect, first-byte, between-chunk or total deadline."""

    status_code = 504
    code = "upstream_timeout"


# -- start-up failures (never HTTP) ----------------------------------------------------------------


class StartupFailure(Exception):
    """A check before serving failed; ``bastion serve`` exits with its ``ExitCode``, no client sees it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class PinMismatchError(StartupFailure):
    """A model file does not match its pin (serve refuses to start)."""
