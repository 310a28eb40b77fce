"""``bastion keys create|revoke|list`` and the keys database: hashes only, 0600, expiry enforced at
authentication, last use recorded by the node."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import httpx

from node.keystore import KeyStore
from node.tenancy import create_key
from serving.engine import LocalEngine
from tests.harness import TINY, bearer, chat, node_setup, running_node
from tests.node.test_serve_cli import BASTION, _env


def _keys(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BASTION, "keys", *args, "--config", str(tmp_path / "node.toml")],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )


def _rows(listing: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in listing.splitlines()[1:]}


def test_keys_create_list_revoke(tmp_path: Path) -> None:
    setup = node_setup(tmp_path, audit=False)
    (tmp_path / "node.toml").write_text(setup.toml)
    made = _keys(tmp_path, "create", "--tenant", "acme", "--expires", "2099-06-30")
    assert made.returncode == 0, made.stderr
    key = next(word for word in made.stdout.split() if word.startswith("bst_"))
    key_id = next(word for word in made.stdout.split() if word.startswith("k_"))
    assert "2099-06-30T00:00:00Z" in made.stdout
    db = tmp_path / "data" / "api-keys.db"
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(db.parent).st_mode) == 0o700
    assert key.encode() not in db.read_bytes()  # printed once, never stored
    (stored,) = KeyStore(db).all()
    assert (stored.id, stored.tenant) == (key_id, "acme")

    listing = _keys(tmp_path, "list")
    assert listing.returncode == 0, listing.stderr
    rows = _rows(listing.stdout)
    assert rows[key_id][1:] == ["acme", rows[key_id][2], "2099-06-30T00:00:00Z", "-", "active"]
    config_key = setup.config.tenants[0].keys[0].id
    assert rows[config_key][1:3] == ["acme", "node.toml"]  # node.toml's keys are listed too

    revoked = _keys(tmp_path, "revoke", key_id)
    assert revoked.returncode == 0, revoked.stderr
    assert _rows(_keys(tmp_path, "list").stdout)[key_id][5] == "revoked"
    assert KeyStore(db).active() == []


def test_keys_create_refuses_an_unknown_tenant_and_a_past_expiry(tmp_path: Path) -> None:
    (tmp_path / "node.toml").write_text(node_setup(tmp_path, audit=False).toml)
    unknown = _keys(tmp_path, "create", "--tenant", "acmee")
    assert unknown.returncode == 2
    assert "no tenant 'acmee'" in unknown.stderr and "acme, globex" in unknown.stderr
    past = _keys(tmp_path, "create", "--tenant", "acme", "--expires", "2020-01-01")
    assert past.returncode == 2 and "in the past" in past.stderr
    assert _keys(tmp_path, "revoke", "k_000000000000").returncode == 2
    assert (
        not (tmp_path / "data" / "api-keys.db").exists()
        or KeyStore(tmp_path / "data" / "api-keys.db").all() == []
    )


async def test_an_expired_key_gets_401_and_the_node_records_last_use(
    tmp_path: Path, local_engine: LocalEngine
) -> None:
    setup = node_setup(tmp_path, audit=False)
    store = KeyStore.in_data_dir(tmp_path / "data")
    live, expired = create_key(), create_key()
    store.add("acme", live, expires=time.time() + 3600)
    store.add("acme", expired, expires=time.time() - 1)
    t0 = time.time()
    async with running_node(setup, {TINY: local_engine}) as node:
        async with httpx.AsyncClient(base_url=node.url, timeout=60) as http:
            await chat(http, live.key)
            refused = await http.get("/v1/models", headers=bearer(expired.key))
            assert refused.status_code == 401
            assert refused.json()["error"]["message"] == "This API key has expired."
    used = store.last_used()  # written at shutdown (and every few seconds while serving)
    assert used[live.key_id] >= t0
    assert expired.key_id not in used
    (tmp_path / "node.toml").write_text(setup.toml)
    rows = _rows(_keys(tmp_path, "list").stdout)
    assert rows[live.key_id][4] != "-" and rows[live.key_id][5] == "active"
    assert rows[expired.key_id][5] == "expired"


def test_backup_and_restore_carry_the_api_keys(tmp_path: Path) -> None:
    import asyncio

    from audit import AuditLog

    setup = node_setup(tmp_path)
    (tmp_path / "node.toml").write_text(setup.toml)
    assert setup.config.audit is not None
    audit = setup.config.audit

    async def make_log() -> None:
        async with await AuditLog.open(audit):
            pass

    asyncio.run(make_log())
    key = create_key()
    db = tmp_path / "data" / "api-keys.db"
    KeyStore(db).add("acme", key, expires=None)

    def bastion(*args: str) -> subprocess.CompletedProcess[str]:
        command = [*BASTION, *args, "--config", str(tmp_path / "node.toml")]
        return subprocess.run(command, env=_env(tmp_path), capture_output=True, text=True, timeout=120)

    made = bastion("backup", "--to", str(tmp_path / "backup"))
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE((tmp_path / "backup" / "api-keys.db").stat().st_mode) == 0o600
    db.unlink()
    restored = bastion("restore", "--from", str(tmp_path / "backup"), "--only", "api-keys")
    assert restored.returncode == 0, restored.stderr
    assert [k.id for k in KeyStore(db).active()] == [key.key_id]
