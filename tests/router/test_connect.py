"""What a failure before the first delta means for failover, as a pure function (``router.connect``)."""

from __future__ import annotations

import pytest

from router.connect import classify
from serving.errors import (
    BadRequestError,
    BastionError,
    ContextLengthExceededError,
    EngineUnavailableError,
    ModelNotFoundError,
    UpstreamError,
    UpstreamRateLimitedError,
    UpstreamTimeoutError,
)

ROUTE = "external:a"


def test_a_429_cools_down_for_its_retry_after_and_is_not_a_breaker_failure() -> None:
    exc = UpstreamRateLimitedError("slow down", retry_after_s=7.0, reason="upstream-429")
    failure = classify(exc, route=ROUTE)
    assert (failure.kind, failure.wait_s, failure.status_code, failure.reason) == (
        "rate-limited",
        7.0,
        429,
        "upstream-429",
    )
    assert failure.error is exc


def test_a_429_without_retry_after_waits_one_second_and_names_itself() -> None:
    failure = classify(UpstreamRateLimitedError("slow down"), route=ROUTE)
    assert (failure.kind, failure.wait_s, failure.reason) == ("rate-limited", 1.0, "upstream-429")


@pytest.mark.parametrize(
    "exc",
    [
        BadRequestError("bad field", param="temperature"),
        ContextLengthExceededError("too long"),
        ModelNotFoundError("no such model"),
    ],
)
def test_the_requests_own_fault_is_refused_not_failed_over(exc: BastionError) -> None:
    failure = classify(exc, route=ROUTE)
    assert failure.kind == "refused" and failure.error is exc
    assert failure.status_code == exc.status_code and failure.reason == exc.code


@pytest.mark.parametrize(
    ("exc", "reason", "status"),
    [
        (UpstreamError("500 from upstream", reason="upstream-5xx"), "upstream-5xx", 502),
        (UpstreamTimeoutError("no first byte"), "upstream_timeout", 504),
        (EngineUnavailableError("engine down", reason="engine-down"), "engine-down", 503),
    ],
)
def test_provider_failures_fail_over_with_their_reason(exc: UpstreamError, reason: str, status: int) -> None:
    failure = classify(exc, route=ROUTE)
    assert (failure.kind, failure.reason, failure.status_code) == ("failed", reason, status)
    assert failure.error is exc


@pytest.mark.parametrize(
    ("exc", "why"),
    [
        (StopAsyncIteration(), "empty-stream"),
        (RuntimeError("boom"), "provider-error"),
        (OSError(), "provider-error"),
    ],
)
def test_anything_else_is_an_upstream_error_naming_the_route(exc: Exception, why: str) -> None:
    failure = classify(exc, route=ROUTE)
    assert (failure.kind, failure.reason, failure.status_code) == ("failed", why, None)
    assert isinstance(failure.error, UpstreamError)
    assert failure.error.reason == why and str(failure.error) == f"{ROUTE}: {why}"
