"""Tenants and their API keys.

A key reads ``bst_<id>_<secret>``: the id (not secret) selects the stored
record, the whole key's SHA-256 is compared in constant time. Keys carry 256
bits of randomness, so a fast hash is the right storage (a slow KDF protects
low-entropy passwords, which these are not). The config holds hashes only.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable

import msgspec

from serving.errors import AuthenticationError, ModelNotFoundError

from .config import TenantConfig

__all__ = ["NewKey", "Principal", "TenantRegistry", "create_key", "hash_key"]

_PREFIX = "bst_"


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """Who is calling: the tenant and which of its keys."""

    tenant: TenantConfig
    key_id: str


class NewKey(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    key_id: str
    sha256: str

    def config_line(self) -> str:
        """The line an operator adds under ``[[tenants]]`` (as a ``[[tenants.keys]]`` entry)."""
        return f'{{ id = "{self.key_id}", sha256 = "{self.sha256}" }}'


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_key() -> NewKey:
    key_id = "k_" + secrets.token_hex(6)
    key = f"{_PREFIX}{key_id[2:]}_{secrets.token_urlsafe(32)}"
    return NewKey(key=key, key_id=key_id, sha256=hash_key(key))


def _key_id_of(key: str) -> str | None:
    if not key.startswith(_PREFIX):
        return None
    rest = key[len(_PREFIX) :]
    ident, sep, _secret = rest.partition("_")
    return "k_" + ident if sep and ident else None


class TenantRegistry:
    """Looks up the tenant of a bearer key and checks model access."""

    def __init__(self, tenants: Iterable[TenantConfig]) -> None:
        self._by_key_id: dict[str, tuple[TenantConfig, str]] = {}
        self._by_name: dict[str, TenantConfig] = {}
        for tenant in tenants:
            self._by_name[tenant.name] = tenant
            for key in tenant.keys:
                self._by_key_id[key.id] = (tenant, key.sha256)

    def tenants(self) -> list[TenantConfig]:
        return list(self._by_name.values())

    def get(self, name: str) -> TenantConfig | None:
        return self._by_name.get(name)

    def authenticate(self, authorization: str | None) -> Principal:
        """Resolve ``Authorization: Bearer <key>``; 401 on anything else."""
        if not authorization:
            raise AuthenticationError("Missing API key: send 'Authorization: Bearer <key>'.")
        scheme, _, key = authorization.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise AuthenticationError("Malformed Authorization header: expected 'Bearer <key>'.")
        key_id = _key_id_of(key)
        # Compare against a dummy digest when the id is unknown, so timing does not
        # tell a caller whether a key id exists.
        tenant, expected = self._by_key_id.get(key_id or "", (None, "0" * 64))
        ok = hmac.compare_digest(hash_key(key), expected)
        if tenant is None or not ok or key_id is None:
            raise AuthenticationError("Incorrect API key provided.")
        return Principal(tenant=tenant, key_id=key_id)

    @staticmethod
    def check_model(principal: Principal, model: str) -> None:
        """404 for a model this tenant may not use, whether or not another tenant may.

        Like OpenAI ("does not exist or you do not have access"), so a tenant cannot
        learn which models other tenants are served.
        """
        if model not in principal.tenant.models:
            raise ModelNotFoundError(
                f"The model '{model}' does not exist or you do not have access to it.", param="model"
            )
