"""The error tree: what each class says on the wire, and failover decided by type."""

from __future__ import annotations

import inspect

import pytest

import serving.errors as errors
from serving.errors import BastionError, ClientError, StartupFailure

_HTTP = [
    obj
    for name in errors.__all__
    if inspect.isclass(obj := getattr(errors, name)) and issubclass(obj, BastionError)
]

# (class, status, OpenAI type, code, retryable): the wire contract tests/e2e and tests/node rely on
_WIRE = [
    (errors.BadRequestError, 400, "invalid_request_error", "invalid_request", False),
    (errors.ContextLengthExceededError, 400, "invalid_request_error", "context_length_exceeded", False),
    (errors.UnsupportedFieldError, 400, "invalid_request_error", "unsupported_field", False),
    (errors.BadResidencyHeaderError, 400, "invalid_request_error", "bad_residency_header", False),
    (errors.FileParseError, 400, "invalid_request_error", "file_parse_error", False),
    (errors.UnsupportedFileError, 400, "invalid_request_error", "unsupported_file", False),
    (errors.AuthenticationError, 401, "authentication_error", "invalid_api_key", False),
    (errors.NotFoundError, 404, "invalid_request_error", "not_found", False),
    (errors.ModelNotFoundError, 404, "invalid_request_error", "model_not_found", False),
    (errors.RequestNotFoundError, 404, "invalid_request_error", "request_not_found", False),
    (errors.MethodNotAllowedError, 405, "invalid_request_error", "method_not_allowed", False),
    (errors.RequestTimeoutError, 408, "invalid_request_error", "request_timeout", True),
    (errors.FeedbackExistsError, 409, "invalid_request_error", "feedback_exists", False),
    (errors.PayloadTooLargeError, 413, "invalid_request_error", "payload_too_large", False),
    (errors.FileTooLargeError, 413, "invalid_request_error", "payload_too_large", False),
    (errors.RateLimitedError, 429, "rate_limit_error", "rate_limit_exceeded", True),
    (errors.BudgetExceededError, 429, "rate_limit_error", "budget_exceeded", False),
    (errors.InternalError, 500, "server_error", "internal_error", False),
    (errors.EngineUnavailableError, 503, "server_error", "engine_unavailable", True),
    (errors.ResidencyRejectedError, 503, "server_error", "residency_no_capacity", True),
    (errors.RedactionError, 503, "server_error", "redaction_failed", False),
    (errors.DrainingError, 503, "server_error", "draining", True),
    (errors.AuditFailedError, 503, "server_error", "audit_unavailable", True),
    (errors.StateUnavailableError, 503, "server_error", "state_unavailable", True),
    (errors.FeedbackUnavailableError, 503, "server_error", "feedback_unavailable", False),
    (errors.UpstreamError, 502, "api_error", "upstream_error", True),
    (errors.UpstreamRateLimitedError, 502, "api_error", "upstream_rate_limited", True),
    (errors.UpstreamTimeoutError, 504, "api_error", "upstream_timeout", True),
]


@pytest.mark.parametrize(("cls", "status", "kind", "code", "retryable"), _WIRE, ids=lambda v: str(v))
def test_wire_contract(cls: type[BastionError], status: int, kind: str, code: str, retryable: bool) -> None:
    err = cls("boom", param="model", reason="why")
    assert (err.status_code, err.type, err.code, err.retryable) == (status, kind, code, retryable)
    assert err.to_body() == {"error": {"message": "boom", "type": kind, "code": code, "param": "model"}}


def test_every_concrete_http_class_is_pinned() -> None:
    abstract = {BastionError, ClientError, errors.ConflictError, errors.ServiceUnavailableError}
    assert set(_HTTP) - abstract == {row[0] for row in _WIRE}


@pytest.mark.parametrize("cls", _HTTP, ids=lambda c: c.__name__)
def test_failover_is_a_type_property(cls: type[BastionError]) -> None:
    # A client error would be refused by every candidate; a server or upstream failure may not be.
    assert cls.failover is not issubclass(cls, ClientError)
    assert issubclass(cls, ClientError) is (400 <= cls.status_code < 500)


def test_startup_failures_never_reach_http() -> None:
    from node.config import ConfigError
    from serving.models import ModelsConfigError

    for cls in (errors.PinMismatchError, ConfigError, ModelsConfigError):
        assert issubclass(cls, StartupFailure)
        assert not issubclass(cls, BastionError)
    assert errors.PinMismatchError("model x: bad hash").message == "model x: bad hash"
