"""Router-specific members of the error taxonomy.

They subclass ``serving.errors`` so that ``node`` maps them by their parents'
status and code without knowing them; the lead may move them into
``serving.errors`` later.
"""

from __future__ import annotations

from serving.errors import BadRequestError, ServiceUnavailableError, UpstreamError

__all__ = [
    "BadResidencyHeaderError",
    "StateUnavailableError",
    "UpstreamRateLimitedError",
    "UpstreamTimeoutError",
]


class UpstreamTimeoutError(UpstreamError):
    """An external provider missed its connect, first-byte, between-chunk or total deadline."""

    status_code = 504
    code = "upstream_timeout"


class UpstreamRateLimitedError(UpstreamError):
    """An external provider answered 429; ``retry_after_s`` holds its ``Retry-After``.

    The router treats it as a cooldown for that provider, not a breaker failure,
    and never shows it to a client as the tenant's own rate limit.
    """

    code = "upstream_rate_limited"


class BadResidencyHeaderError(BadRequestError):
    """``x-bastion-residency`` could not be read: refused, since a misread header could loosen residency."""

    code = "bad_residency_header"


class StateUnavailableError(ServiceUnavailableError):
    """The fleet's shared limit state (PostgreSQL) cannot be reached: the request is refused
    (fail closed), since admitting it could exceed a tenant's limits fleet-wide."""

    code = "state_unavailable"
