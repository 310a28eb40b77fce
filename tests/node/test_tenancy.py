"""API keys: hashed at rest, compared in constant time, tenants isolated."""

from __future__ import annotations

import pytest

from node.config import decode_config
from node.tenancy import TenantRegistry, create_key
from serving.errors import AuthenticationError


def _registry() -> tuple[TenantRegistry, str, str]:
    a, b = create_key(), create_key()
    config = decode_config(
        f"""
[[tenants]]
name = "alpha"
models = ["m-alpha"]
keys = [{a.config_line()}]

[[tenants]]
name = "beta"
models = ["m-beta"]
keys = [{b.config_line()}]

[audit]
enabled = false
"""
    )
    return TenantRegistry(config.tenants), a.key, b.key


def test_a_key_authenticates_its_own_tenant_only() -> None:
    registry, key_a, key_b = _registry()
    assert registry.authenticate(f"Bearer {key_a}").tenant.name == "alpha"
    assert registry.authenticate(f"Bearer {key_b}").tenant.name == "beta"


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Basic abc", "Bearer bst_nothere_x", "Bearer sk-openai-style"],
)
def test_missing_or_malformed_keys_are_401(header: str | None) -> None:
    registry, _, _ = _registry()
    with pytest.raises(AuthenticationError) as err:
        registry.authenticate(header)
    assert err.value.status_code == 401


def test_a_tampered_key_with_a_valid_id_is_401() -> None:
    registry, key_a, _ = _registry()
    with pytest.raises(AuthenticationError):
        registry.authenticate(f"Bearer {key_a[:-2]}xx")


def test_config_holds_only_the_hash() -> None:
    key = create_key()
    assert key.key not in key.config_line()
    assert key.sha256 in key.config_line()
