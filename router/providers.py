"""The one provider factory: an external API's client from its ``[[providers]]`` entry.

The router builds its own providers with it when none are passed in; the node
builds them once (``external_providers``) and hands the same clients to the
router and to the drift canaries.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager

from router.anthropic_provider import AnthropicProvider
from router.config import ProviderConfig
from router.openai_provider import OpenAIProvider
from serving.protocol import Provider

__all__ = ["build_provider", "external_providers"]


def build_provider(config: ProviderConfig) -> OpenAIProvider | AnthropicProvider:
    """The client for one configured provider (``kind`` says which API it speaks)."""
    return OpenAIProvider(config) if config.kind == "openai" else AnthropicProvider(config)


@asynccontextmanager
async def external_providers(configs: Sequence[ProviderConfig]) -> AsyncIterator[dict[str, Provider]]:
    """Every configured provider by name, each closed when the context ends."""
    async with AsyncExitStack() as stack:
        built: dict[str, Provider] = {}
        for config in configs:
            provider = build_provider(config)
            stack.push_async_callback(provider.aclose)
            built[config.name] = provider
        yield built
