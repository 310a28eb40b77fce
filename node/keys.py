"""``bastion keys create|revoke|list``: tenants' API keys in the API keys database (``node.keystore``).

With a config (``--config``, ``$BASTION_CONFIG``, ``./node.toml``) keys go to
``<data_dir>/api-keys.db``: ``create`` prints the new key once (only its SHA-256 is
stored), ``revoke`` marks one revoked, ``list`` shows every key (ids, tenant,
created, expires, last used, state), ``node.toml``'s own included. A running node
takes the change at its next reload (``bastion reload``, or SIGHUP). Without a
config, ``create`` prints a key and the line to paste into ``node.toml``, as before.
Exit status: 0 done; 2 bad usage (no such tenant or key, a bad date) or an
unreadable keys database.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TextIO

from .config import ConfigError, NodeConfig, load_config, resolve
from .keystore import KeyStore, KeyStoreError
from .tenancy import create_key

__all__ = ["add_keys_commands", "keys_command", "parse_expiry"]


def add_keys_commands(keys: argparse.ArgumentParser) -> None:
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--config", help="node.toml (default: $BASTION_CONFIG, ./node.toml)")
    ksub = keys.add_subparsers(dest="keys_cmd", required=True)
    create = ksub.add_parser("create", parents=[where], help="a new key for a tenant, printed once")
    create.add_argument("--tenant", required=True)
    create.add_argument(
        "--expires", help="when it stops working: a UTC date or time (2027-06-30, 2027-06-30T12:00) or 90d"
    )
    revoke = ksub.add_parser("revoke", parents=[where], help="revoke a key (at the node's next reload)")
    revoke.add_argument("key_id")
    ksub.add_parser("list", parents=[where], help="every key: tenant, created, expires, last used")


def parse_expiry(value: str, *, now: float | None = None) -> float:
    """``90d`` from now, or an ISO date (midnight UTC) or date and time (UTC unless it says)."""
    current = time.time() if now is None else now
    if match := re.fullmatch(r"(\d{1,5})d", value.strip()):
        return current + timedelta(days=int(match.group(1))).total_seconds()
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"--expires {value!r}: expected a date (2027-06-30), a time or Nd (90d)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if when.timestamp() <= current:
        raise ValueError(f"--expires {value!r} is in the past")
    return when.timestamp()


def keys_command(
    args: argparse.Namespace, config_path: Path | None, *, out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    if config_path is None:
        if args.keys_cmd != "create":
            print("bastion: no config: pass --config node.toml (or set BASTION_CONFIG)", file=err)
            return 2
        key = create_key()
        print(
            f"New API key for tenant '{args.tenant}' (shown once; store it in the client's secret store):",
            file=out,
        )
        print(f"  {key.key}", file=out)
        print(
            f'Add this entry to the tenant\'s keys in node.toml ([[tenants]] name = "{args.tenant}"):',
            file=out,
        )
        print(f"  keys = [{key.config_line()}]   # or append to the existing list", file=out)
        return 0
    try:
        config = load_config(config_path)
        store = KeyStore.in_data_dir(resolve(config_path.resolve().parent, config.data_dir))
        if args.keys_cmd == "create":
            return _create(args, config, store, config_path, out)
        if args.keys_cmd == "revoke":
            return _revoke(args.key_id, config, store, config_path, out, err)
        return _list(config, store, out)
    except (ConfigError, KeyStoreError, ValueError) as exc:
        print(f"bastion: {exc}", file=err)
        return 2


def _create(args: argparse.Namespace, config: NodeConfig, store: KeyStore, path: Path, out: TextIO) -> int:
    tenants = [t.name for t in config.tenants]
    if args.tenant not in tenants:
        raise ValueError(f"no tenant {args.tenant!r} in {path} (tenants: {', '.join(tenants) or 'none'})")
    expires = parse_expiry(args.expires) if args.expires else None
    key = create_key()
    stored = store.add(args.tenant, key, expires=expires)
    print(
        f"New API key {stored.id} for tenant '{args.tenant}' (shown once; only its hash is kept):", file=out
    )
    print(f"  {key.key}", file=out)
    if expires is not None:
        print(f"It expires at {_when(expires)}.", file=out)
    print(f"A running node takes it at its next reload: bastion reload --config {path}", file=out)
    return 0


def _revoke(key_id: str, config: NodeConfig, store: KeyStore, path: Path, out: TextIO, err: TextIO) -> int:
    if any(k.id == key_id for t in config.tenants for k in t.keys):
        raise ValueError(f"{key_id} is listed in {path}: remove it there, then reload")
    revoked = store.revoke(key_id)
    if revoked is None:
        raise ValueError(f"no key {key_id} in {store.path}")
    print(f"Revoked {key_id} (tenant '{revoked.tenant}') at {_when(revoked.revoked)}.", file=out)
    print(f"A running node stops accepting it at its next reload: bastion reload --config {path}", file=out)
    return 0


def _list(config: NodeConfig, store: KeyStore, out: TextIO) -> int:
    now = time.time()
    tenants = {t.name for t in config.tenants}
    used = store.last_used()
    rows = [("ID", "TENANT", "CREATED", "EXPIRES", "LAST USED", "STATE")]
    for t in config.tenants:
        for k in t.keys:
            rows.append((k.id, t.name, "node.toml", "-", _when(used.get(k.id)), "active"))
    for s in store.all():
        if s.revoked is not None:
            state = "revoked " + _when(s.revoked)
        elif s.tenant not in tenants:
            state = "no such tenant"
        elif s.expired(now):
            state = "expired"
        else:
            state = "active"
        rows.append((s.id, s.tenant, _when(s.created), _when(s.expires), _when(s.last_used), state))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip(), file=out)
    return 0


def _when(at: float | None) -> str:
    if at is None:
        return "-"
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
