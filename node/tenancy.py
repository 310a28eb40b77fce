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
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

import msgspec

from serving.errors import AuthenticationError

from .config import TenantConfig

__all__ = ["KeyUses", "NewKey", "Principal", "StoredKeyLike", "TenantRegistry", "create_key", "hash_key"]

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


class StoredKeyLike(Protocol):
    """A key from the API keys database (``node.keystore.StoredKey``)."""

    @property
    def id(self) -> str: ...
    @property
    def tenant(self) -> str: ...
    @property
    def sha256(self) -> str: ...
    @property
    def expires(self) -> float | None: ...


class KeyUses:
    """When each key was last used: noted on the request path, taken by the writer that stores it.

    One per node, handed from registry to registry across reloads, so no use is lost.
    """

    def __init__(self) -> None:
        self._at: dict[str, float] = {}

    def note(self, key_id: str, at: float) -> None:
        self._at[key_id] = at

    def take(self) -> dict[str, float]:
        taken, self._at = self._at, {}
        return taken

    def give_back(self, uses: Mapping[str, float]) -> None:
        """Uses that could not be stored: kept for the next try, unless a newer one came meanwhile."""
        for key_id, at in uses.items():
            self._at[key_id] = max(at, self._at.get(key_id, 0.0))


class _Entry(msgspec.Struct, frozen=True):
    tenant: TenantConfig
    sha256: str
    expires: float | None


class TenantRegistry:
    """Looks up the tenant of a bearer key and checks model access.

    Keys come from ``node.toml`` (``keys = [...]``) and from the API keys database
    (``stored``); an id may appear once across both. A stored key of a tenant the
    config no longer has is left out. A key past its ``expires`` gets a 401.
    """

    def __init__(
        self,
        tenants: Iterable[TenantConfig],
        stored: Iterable[StoredKeyLike] = (),
        *,
        uses: KeyUses | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._by_key_id: dict[str, _Entry] = {}
        self._by_name: dict[str, TenantConfig] = {}
        self._uses = uses
        self._clock = clock
        for tenant in tenants:
            self._by_name[tenant.name] = tenant
            for key in tenant.keys:
                self._by_key_id[key.id] = _Entry(tenant, key.sha256, None)
        for stored_key in stored:
            if stored_key.id in self._by_key_id:
                raise ValueError(
                    f"API key id {stored_key.id} is both in node.toml and in the API keys database"
                )
            owner = self._by_name.get(stored_key.tenant)
            if owner is not None:
                self._by_key_id[stored_key.id] = _Entry(owner, stored_key.sha256, stored_key.expires)

    def key_ids(self) -> dict[str, list[str]]:
        """Each tenant's key ids (as ``config.loaded`` records them)."""
        ids: dict[str, list[str]] = {name: [] for name in self._by_name}
        for key_id, entry in self._by_key_id.items():
            ids[entry.tenant.name].append(key_id)
        return {name: sorted(found) for name, found in ids.items()}

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
        entry = self._by_key_id.get(key_id or "")
        ok = hmac.compare_digest(hash_key(key), entry.sha256 if entry else "0" * 64)
        if entry is None or not ok or key_id is None:
            raise AuthenticationError("Incorrect API key provided.")
        now = self._clock()
        if entry.expires is not None and now >= entry.expires:
            raise AuthenticationError("This API key has expired.")
        if self._uses is not None:
            self._uses.note(key_id, now)
        return Principal(tenant=entry.tenant, key_id=key_id)
