"""``bastion serve`` checks what it can before it starts an engine, and fails in seconds with
the exit code of each failure class; everything the node writes is private (0600/0700)."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from audit import generate_kek_file, generate_signing_key
from node.startup import ExitCode
from serving.models import ModelSpec
from serving.protocol import Provider
from tests.harness import bearer, chat, node_setup, running_node
from tests.node.test_serve_cli import BASTION, _env, _path_model

# An engine takes 20-60 s to start here (minutes on a GPU model): every refusal below must come
# well before one could have started. A bound on behaviour on a loaded machine, not a timing goal.
NO_ENGINE_S = 10.0


def _config(
    tmp_path: Path, models: Path, *, port: int, tenant_model: str = "bastion-tiny", audit: bool = True
) -> Path:
    audit_toml = ""
    if audit:
        generate_kek_file(tmp_path / "kek.key")
        generate_signing_key(tmp_path / "signing.key")
        audit_toml = f"""
[audit]
path = "{tmp_path / "audit" / "audit.db"}"
kek_file = "{tmp_path / "kek.key"}"
signing_key_file = "{tmp_path / "signing.key"}"
checkpoint_path = "{tmp_path / "checkpoints"}"
"""
    config = tmp_path / "node.toml"
    config.write_text(
        f"""
models_file = "{models}"
data_dir = "{tmp_path / "data"}"
[server]
host = "127.0.0.1"
port = {port}
[[tenants]]
name = "acme"
models = ["{tenant_model}"]
residency = "local-only"
{audit_toml}
"""
    )
    return config


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.fixture
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(tmp_path: Path, config: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    run = subprocess.run(
        [*BASTION, "serve", "--config", str(config)],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    return run, time.monotonic() - t0


def test_a_port_in_use_fails_before_any_engine_starts(
    tmp_path: Path, tiny_spec: ModelSpec, tiny_model_dir: Path, busy_port: int
) -> None:
    config = _config(tmp_path, _path_model(tmp_path, tiny_spec, tiny_model_dir), port=busy_port)
    run, elapsed = _serve(tmp_path, config)
    assert run.returncode == ExitCode.PORT == 7, run.stderr
    assert f"127.0.0.1:{busy_port}" in run.stderr and "in use" in run.stderr
    assert "serving on" not in run.stdout
    assert elapsed < NO_ENGINE_S, f"took {elapsed:.1f} s: was an engine started first?"


def test_a_misspelt_tenant_model_fails_naming_tenant_name_and_closest(
    tmp_path: Path, tiny_spec: ModelSpec, tiny_model_dir: Path, free_port: int
) -> None:
    models = _path_model(tmp_path, tiny_spec, tiny_model_dir)
    run, elapsed = _serve(tmp_path, _config(tmp_path, models, port=free_port, tenant_model="bastion-tiyn"))
    assert run.returncode == ExitCode.CONFIG == 2, run.stderr
    assert "tenant 'acme' names model 'bastion-tiyn'" in run.stderr
    assert "did you mean 'bastion-tiny'?" in run.stderr
    assert elapsed < NO_ENGINE_S


def test_a_model_not_on_disk_says_how_to_get_it(tmp_path: Path, free_port: int) -> None:
    models = tmp_path / "models.toml"
    models.write_text(
        '[[models]]\nname = "bastion-tiny"\nrepo = "org/model"\nrevision = "' + "a" * 40 + '"\n'
        'max_model_len = 64\n[models.files]\n"config.json" = "' + "0" * 64 + '"\n'
    )
    run, elapsed = _serve(tmp_path, _config(tmp_path, models, port=free_port))
    assert run.returncode == ExitCode.PIN_MISMATCH == 3, run.stderr
    assert "does not exist; run `bastion models pull bastion-tiny`" in run.stderr
    assert elapsed < NO_ENGINE_S


@pytest.mark.parametrize("key", ["kek.key", "signing.key"])
def test_a_key_file_open_to_others_fails_with_its_own_code(
    tmp_path: Path, tiny_spec: ModelSpec, tiny_model_dir: Path, free_port: int, key: str
) -> None:
    config = _config(tmp_path, _path_model(tmp_path, tiny_spec, tiny_model_dir), port=free_port)
    (tmp_path / key).chmod(0o644)
    run, elapsed = _serve(tmp_path, config)
    assert run.returncode == ExitCode.KEYS == 5, run.stderr
    assert str(tmp_path / key) in run.stderr and "mode 644" in run.stderr
    assert elapsed < NO_ENGINE_S


@pytest.mark.parametrize(
    "target", ["data", "data/budgets.db", "data/feedback.db-wal", "audit/audit.db", "checkpoints"]
)
def test_a_data_file_or_folder_open_to_others_fails_naming_it(
    tmp_path: Path, tiny_spec: ModelSpec, tiny_model_dir: Path, free_port: int, target: str
) -> None:
    config = _config(tmp_path, _path_model(tmp_path, tiny_spec, tiny_model_dir), port=free_port)
    path = tmp_path / target
    if "." in path.name:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        path.write_bytes(b"")
        path.chmod(0o644)
    else:
        path.mkdir(mode=0o755)
        path.chmod(0o755)
    run, elapsed = _serve(tmp_path, config)
    assert run.returncode == ExitCode.FILE_MODE == 6, run.stderr
    assert f"{path}: " in run.stderr and "lets group or others in" in run.stderr
    assert elapsed < NO_ENGINE_S


def _open_to_others(root: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here == root / "data":
            dirnames.remove("models")  # the operator's, keeping their modes
        for p in [here, *(here / f for f in filenames)]:
            if p.stat().st_mode & 0o077:
                found.append(f"{p.relative_to(root)} {stat.S_IMODE(p.stat().st_mode):o}")
    return found


@pytest.mark.engine
async def test_every_file_and_folder_the_node_writes_is_private(
    tmp_path: Path, local_engine: Provider, tiny_model_dir: Path
) -> None:
    root = tmp_path / "node"
    root.mkdir(mode=0o700)
    (root / "data").mkdir(mode=0o700)
    (root / "data" / "models").mkdir(mode=0o755)
    (root / "data" / "models" / "operators-model").mkdir(mode=0o755)  # left alone
    setup = node_setup(root, data_dir=root / "data")
    async with (
        running_node(setup, {"bastion-tiny": local_engine}) as node,
        httpx.AsyncClient(base_url=node.url) as client,
    ):
        request_id = await chat(client, setup.keys["acme"])
        r = await client.post(
            "/v1/feedback", headers=bearer(setup.keys["acme"]), json={"request_id": request_id, "rating": 1}
        )
        assert r.status_code == 201, r.text
        names = {p.name for p in root.rglob("*")}
        # the databases are open: their WAL and shared-memory files exist now, made by SQLite
        assert {
            "audit.db-wal",
            "audit.db-shm",
            "audit.db.keys-wal",
            "feedback.db-wal",
            "feedback.db-shm",
        } <= names
        assert {"budgets.db", "feedback.db.key", "audit.db.lock"} <= names
        assert _open_to_others(root) == []
    assert {"checkpoint", "checkpoints.log"} <= {p.name for p in (root / "checkpoints").iterdir()}
    assert _open_to_others(root) == []


def test_listen_socket_binds_localhost_as_ipv4_loopback_and_refuses_a_busy_port(busy_port: int) -> None:
    from node.startup import StartupError, listen_socket

    with listen_socket("localhost", 0) as sock:
        assert sock.getsockname()[0] == "127.0.0.1"
    with pytest.raises(StartupError) as err:
        listen_socket("127.0.0.1", busy_port)
    assert err.value.code == ExitCode.PORT and f"127.0.0.1:{busy_port}" in err.value.message


def test_a_fleet_state_url_that_is_not_there_fails_as_config(
    tmp_path: Path, tiny_spec: ModelSpec, tiny_model_dir: Path, free_port: int
) -> None:
    """``[state] postgres_url_env`` naming an unset variable: exit 2 before any engine, naming it."""
    config = _config(tmp_path, _path_model(tmp_path, tiny_spec, tiny_model_dir), port=free_port)
    config.write_text(config.read_text() + '\n[state]\npostgres_url_env = "BASTION_TEST_UNSET_PG_URL"\n')
    run, elapsed = _serve(tmp_path, config)
    assert run.returncode == ExitCode.CONFIG == 2, run.stderr
    assert "BASTION_TEST_UNSET_PG_URL is empty" in run.stderr
    assert elapsed < NO_ENGINE_S
