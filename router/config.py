"""Router configuration: external providers, routes (aliases) and tenant policy.

Decoded strictly from ``node.toml`` by the node (``[[providers]]``,
``[[routes]]``, an optional ``[routing]`` table, and each tenant's policy
fields). Keys are never in the file: only the environment variable or file that
holds them. External model ids must be dated versions, so that what a provider
serves cannot change under a name, unless the operator marks one ``floating``.
"""

from __future__ import annotations

import re
from typing import Annotated, Final, Literal

import msgspec
import phonenumbers
from msgspec import Meta

__all__ = [
    "BreakerConfig",
    "FallbackTarget",
    "ModelPrice",
    "ProviderConfig",
    "ProviderTimeouts",
    "RedactionConfig",
    "RouteConfig",
    "RouterConfig",
    "RoutingOptions",
    "TenantPolicy",
]

Name = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
Region = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9-]*$")]
Seconds = Annotated[float, Meta(gt=0, le=3600)]
Price = Annotated[float, Meta(ge=0, le=1_000_000)]
CountryCode = Annotated[str, Meta(pattern=r"^[A-Z]{2}$")]

# Dated snapshots: OpenAI ``gpt-4o-2024-08-06``, Anthropic ``claude-3-5-sonnet-20241022``.
_DATED = re.compile(r"(?:^|[-_@.:])(?:\d{4}-\d{2}-\d{2}|20\d{6})$")
LOCAL_ONLY: Final = "local-only"


class ModelPrice(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Prices in the tenant's budget currency per million tokens."""

    input_per_mtok: Price
    output_per_mtok: Price
    #: the operator accepts that this id is an alias whose weights may change
    floating: bool = False


class ProviderTimeouts(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    connect_s: Seconds = 5.0
    #: until the response headers and the first body bytes (includes the upstream's prefill)
    first_byte_s: Seconds = 30.0
    between_chunks_s: Seconds = 30.0
    total_s: Seconds = 600.0

    def __post_init__(self) -> None:
        if self.total_s < max(self.connect_s, self.first_byte_s):
            raise ValueError("total_s must be at least connect_s and first_byte_s")


class BreakerConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Failure ratio over a sliding window opens the breaker; probes close it again."""

    window_s: Seconds = 30.0
    min_requests: Annotated[int, Meta(ge=1, le=10_000)] = 5
    failure_ratio: Annotated[float, Meta(gt=0, le=1)] = 0.5
    open_s: Seconds = 15.0
    half_open_probes: Annotated[int, Meta(ge=1, le=100)] = 1


class ProviderConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One external API (``[[providers]]``).

    ``base_url`` for ``openai`` ends before ``/chat/completions`` (e.g.
    ``https://api.openai.com/v1``); for ``anthropic`` before ``/v1/messages``.
    """

    name: Name
    kind: Literal["openai", "anthropic"]
    base_url: Annotated[str, Meta(pattern=r"^https?://[^\s]+$")]
    region: Region
    models: dict[str, ModelPrice]
    api_key_env: Annotated[str, Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None
    api_key_file: str | None = None
    #: how the key is sent: OpenAI-style bearer, Azure's ``api-key`` header; Anthropic always ``x-api-key``
    auth: Literal["bearer", "api-key"] = "bearer"
    #: extra query parameters (Azure: ``api-version``)
    query: dict[str, str] = {}
    timeouts: ProviderTimeouts = ProviderTimeouts()
    breaker: BreakerConfig = BreakerConfig()
    max_connections: Annotated[int, Meta(ge=1, le=10_000)] = 100
    #: egress proxy URL; environment proxy variables and .netrc are ignored on purpose
    proxy: Annotated[str, Meta(pattern=r"^https?://[^\s]+$")] | None = None
    #: Anthropic requires ``max_tokens``; used when the client sets none
    default_max_tokens: Annotated[int, Meta(ge=1, le=1_000_000)] = 4096
    #: refused when set: keys never live in node.toml
    api_key: str | None = None

    def __post_init__(self) -> None:
        if self.region == LOCAL_ONLY:
            raise ValueError(f"provider {self.name!r}: {LOCAL_ONLY!r} is not a region name")
        if self.api_key is not None:
            raise ValueError(
                f"provider {self.name!r}: a literal api_key is refused; name an environment "
                "variable (api_key_env) or a file (api_key_file) instead"
            )
        if self.api_key_env is not None and self.api_key_file is not None:
            raise ValueError(f"provider {self.name!r}: set api_key_env or api_key_file, not both")
        if not self.models:
            raise ValueError(f"provider {self.name!r}: at least one model is required")
        for model, price in self.models.items():
            if not price.floating and not _DATED.search(model):
                raise ValueError(
                    f"provider {self.name!r}: model {model!r} is not a dated version "
                    "(e.g. gpt-4o-2024-08-06); pin one, or mark it floating = true"
                )


class FallbackTarget(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    provider: Name
    model: Annotated[str, Meta(min_length=1, max_length=256)]


class RouteConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One model alias (``[[routes]]``): a local model first, then external fallbacks in order."""

    alias: Annotated[str, Meta(min_length=1, max_length=128)]
    local: Annotated[str, Meta(min_length=1, max_length=256)] | None = None
    fallbacks: tuple[FallbackTarget, ...] = ()
    #: a local request predicted to wait longer than this for its first token overflows
    ttft_budget_ms: Annotated[float, Meta(gt=0, le=600_000)] = 2000.0

    def __post_init__(self) -> None:
        if self.local is None and not self.fallbacks:
            raise ValueError(f"route {self.alias!r}: needs a local model or at least one fallback")


class RoutingOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Router-wide knobs (``[routing]``)."""

    local_breaker: BreakerConfig = BreakerConfig()
    #: assumed time to first token of one local request before any has been observed
    local_ttft_prior_ms: Annotated[float, Meta(gt=0, le=600_000)] = 200.0
    #: KV cache use at or above which the local engine counts as saturated
    kv_cache_high: Annotated[float, Meta(gt=0, le=1)] = 0.98
    #: how long a request may spend failing over before its first token
    failover_budget_s: Seconds = 10.0
    backoff_base_s: Annotated[float, Meta(ge=0, le=10)] = 0.05
    backoff_max_s: Annotated[float, Meta(ge=0, le=60)] = 1.0


class RouterConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    providers: tuple[ProviderConfig, ...] = ()
    routes: tuple[RouteConfig, ...] = ()
    routing: RoutingOptions = RoutingOptions()

    def __post_init__(self) -> None:
        providers = {p.name: p for p in self.providers}
        if len(providers) != len(self.providers):
            raise ValueError("provider names must be unique")
        aliases = [r.alias for r in self.routes]
        if len(set(aliases)) != len(aliases):
            raise ValueError("route aliases must be unique")
        for route in self.routes:
            for fb in route.fallbacks:
                if fb.provider not in providers:
                    raise ValueError(f"route {route.alias!r}: unknown provider {fb.provider!r}")
                if fb.model not in providers[fb.provider].models:
                    raise ValueError(
                        f"route {route.alias!r}: model {fb.model!r} is not listed for provider "
                        f"{fb.provider!r}"
                    )


class RedactionConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How a tenant's requests are redacted before egress (``[tenants.redaction]``)."""

    #: regions whose local phone formats are detected (ISO 3166 alpha-2, ``GB`` for the UK). None by
    #: default: no country is assumed, and then only numbers written with ``+`` or ``00`` are found
    phone_regions: tuple[CountryCode, ...] = ()
    #: the tenant's own identifiers (regular expressions) that are never redacted
    keep_patterns: tuple[Annotated[str, Meta(min_length=1, max_length=500)], ...] = ()
    #: a local model (served on this node) that finds names, birth dates, addresses and record
    #: numbers in free text; without one, free text is not redacted
    ner_model: Annotated[str, Meta(min_length=1, max_length=256)] | None = None
    #: how long the local model may take per request; past it the request is refused, not sent
    ner_timeout_s: Seconds = 10.0

    def __post_init__(self) -> None:
        unknown = [r for r in self.phone_regions if r not in phonenumbers.SUPPORTED_REGIONS]
        if unknown:
            raise ValueError(f"unknown phone_regions {unknown} (ISO 3166 alpha-2 codes; GB for the UK)")
        for pattern in self.keep_patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"keep_patterns: {pattern!r} is not a regular expression ({exc})") from None


class TenantPolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a tenant may do; the node's tenant config embeds or extends it.

    ``residency`` is ``"local-only"`` or the list of regions external providers
    may be in. Limits left out are unlimited. ``spend_per_month`` is in the
    currency of the providers' prices.
    """

    residency: Literal["local-only"] | tuple[Region, ...] = LOCAL_ONLY
    #: external providers this tenant may use (all that residency allows when left out)
    allowed_providers: tuple[Name, ...] | None = None
    redact: bool = True
    restore_pii: bool = False
    redaction: RedactionConfig = RedactionConfig()
    rpm: Annotated[int, Meta(ge=1)] | None = None
    tpm: Annotated[int, Meta(ge=1)] | None = None
    tokens_per_day: Annotated[int, Meta(ge=1)] | None = None
    spend_per_month: Annotated[float, Meta(ge=0)] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.residency, tuple) and LOCAL_ONLY in self.residency:
            raise ValueError(
                f"residency: {LOCAL_ONLY!r} is not a region name; a local-only tenant has "
                f'residency = "{LOCAL_ONLY}", not a list'
            )
        if self.restore_pii and not self.redact:
            raise ValueError("restore_pii needs redact = true")
