"""One attempt at a candidate, and what its failure before the first delta means.

``classify`` is pure (an exception in, a ``Failure`` out), so the failover rules
are testable the way ``router.policy`` is: a 429 cools the provider down and may
be retried within the failover budget, the request's own fault (an error whose
class says ``failover = False``: a ``ClientError``) is raised as it is since
another provider would refuse it too, and anything else is a failure that
counts in the breaker and moves on to the next candidate.
``connect`` starts one provider's stream and waits for its first delta.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Literal

import msgspec

from serving.errors import BastionError, UpstreamError, UpstreamRateLimitedError
from serving.protocol import Delta, GenerationRequest, Provider

__all__ = ["Connection", "Failure", "aclose", "classify", "connect"]


class Failure(msgspec.Struct, frozen=True, kw_only=True):
    """How an attempt failed before its first delta, and what the router does about it."""

    #: ``refused``: the request's own fault, raised to the client (the breaker is not charged);
    #: ``rate-limited``: the provider cools down for ``wait_s`` (not a breaker failure);
    #: ``failed``: a breaker failure, and the next candidate is tried
    kind: Literal["refused", "rate-limited", "failed"]
    #: raised for ``refused``; otherwise what the client sees if every candidate fails like this
    error: BastionError
    #: the attempt's reason in the audit record
    reason: str
    status_code: int | None = None
    #: how long a rate-limited provider asked to be left alone
    wait_s: float = 0.0


class Connection(msgspec.Struct, frozen=True, kw_only=True):
    """A provider's stream after its first delta arrived."""

    first: Delta
    rest: AsyncIterator[Delta]


def classify(exc: Exception, *, route: str) -> Failure:
    """What an exception raised before ``route``'s first delta means for failover."""
    if isinstance(exc, UpstreamRateLimitedError):
        wait = exc.retry_after_s if exc.retry_after_s is not None else 1.0
        return Failure(
            kind="rate-limited", error=exc, reason=exc.reason or "upstream-429", status_code=429, wait_s=wait
        )
    if isinstance(exc, BastionError):
        kind: Literal["refused", "failed"] = "failed" if exc.failover else "refused"
        return Failure(kind=kind, error=exc, reason=exc.reason or exc.code, status_code=exc.status_code)
    why = "empty-stream" if isinstance(exc, StopAsyncIteration) else "provider-error"
    return Failure(kind="failed", error=UpstreamError(f"{route}: {why}", reason=why), reason=why)


async def connect(provider: Provider, generation: GenerationRequest, *, route: str) -> Connection | Failure:
    """Start ``provider``'s stream and wait for its first delta.

    A failure closes the stream and comes back classified; the client going away
    (cancellation) closes it and propagates.
    """
    stream = provider.stream(generation)
    try:
        first = await anext(stream)
    except Exception as exc:
        await aclose(stream)
        return classify(exc, route=route)
    except BaseException:
        await aclose(stream)
        raise
    return Connection(first=first, rest=stream)


async def aclose(stream: AsyncIterator[Delta]) -> None:
    """Close a provider's stream if it can be closed (aborts its generation)."""
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()
