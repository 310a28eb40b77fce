"""Routing: residency-safe policy, external providers, breakers, budgets, redaction.

Layer: may import ``serving`` (the provider interface and errors); never ``node``.

The node builds one ``Router(config, local=engines)`` per process and calls
``await router.open(RouteRequest(...), observer=...)`` per generation; the
returned ``RoutedStream`` yields ``serving.protocol.Delta`` and carries its
final ``ForwardDecision`` (``route``, ``reason``, ``provider``, ``model``,
``revision``, what was redacted: counts only) and what was tried
(``attempts``). The router reaches back into the node only through the
``RouteObserver`` protocol (``router.decision``). Failures raise from
``serving.errors`` (the one error tree), each with ``reason``
and, where it applies, ``retry_after_s``.
"""

from router.anthropic_provider import AnthropicProvider
from router.config import (
    BreakerConfig,
    FallbackTarget,
    ModelPrice,
    ProviderConfig,
    ProviderTimeouts,
    RedactionConfig,
    RouteConfig,
    RouterConfig,
    RoutingOptions,
    TenantPolicy,
)
from router.decision import Attempt, Charge, ForwardDecision, Outcome, Refusal, RouteObserver
from router.limits import Limiter, LimitState
from router.openai_provider import OpenAIProvider
from router.policy import RESIDENCY_HEADER
from router.providers import build_provider, external_providers
from router.redaction import Redactor
from router.router import Router, RouteRequest
from router.stream import RoutedStream

__all__ = [
    "RESIDENCY_HEADER",
    "AnthropicProvider",
    "Attempt",
    "BreakerConfig",
    "Charge",
    "FallbackTarget",
    "ForwardDecision",
    "LimitState",
    "Limiter",
    "ModelPrice",
    "OpenAIProvider",
    "Outcome",
    "ProviderConfig",
    "ProviderTimeouts",
    "RedactionConfig",
    "Redactor",
    "Refusal",
    "RouteConfig",
    "RouteObserver",
    "RouteRequest",
    "RoutedStream",
    "Router",
    "RouterConfig",
    "RoutingOptions",
    "TenantPolicy",
    "build_provider",
    "external_providers",
]
