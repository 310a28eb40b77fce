"""An operator's first production node, as processes: ``bastion init``, ``config check``, ``serve``
from another folder (relative paths), ``keys create`` + ``bastion reload``, ``keys revoke`` + SIGHUP."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

import httpx

from tests.node.test_serve_cli import BASTION, _env


def _run(
    tmp_path: Path, *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BASTION, *args], env=env or _env(tmp_path), cwd=cwd, capture_output=True, text=True, timeout=120
    )


def _key_of(stdout: str) -> str:
    return next(word for word in stdout.split() if word.startswith("bst_"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _status(url: str, key: str) -> int:
    return httpx.get(f"{url}/v1/models", headers={"authorization": f"Bearer {key}"}, timeout=10).status_code


def test_init_writes_a_node_that_serves_and_reloads_keys(tmp_path: Path, tiny_model_dir: Path) -> None:
    etc, elsewhere = tmp_path / "etc", tmp_path / "elsewhere"
    elsewhere.mkdir()
    port = _free_port()
    init = _run(tmp_path, "init", "--dir", str(etc), "--tenant", "acme", "--port", str(port), cwd=elsewhere)
    assert init.returncode == 0, init.stderr
    first_key = _key_of(init.stdout)
    assert "bastion serve --config" in init.stdout and "bastion models pull" in init.stdout
    assert stat.S_IMODE(etc.stat().st_mode) == 0o700
    for name in ("audit-kek.key", "audit-signing.key", "bastion.env", "data/api-keys.db"):
        assert stat.S_IMODE((etc / name).stat().st_mode) == 0o600, name
    kek = (etc / "audit-kek.key").read_bytes()
    again = _run(tmp_path, "init", "--dir", str(etc), cwd=elsewhere)
    assert again.returncode == 2 and "not overwritten" in again.stderr
    assert (etc / "audit-kek.key").read_bytes() == kek

    # the model, copied in as an operator copies a verified folder (an eager engine starts faster)
    shutil.copytree(tiny_model_dir, etc / "data" / "models" / "bastion-tiny")
    models = etc / "models.toml"
    models.write_text(models.read_text().replace("enforce_eager = false", "enforce_eager = true"))
    check = _run(tmp_path, "config", "check", "--config", "../etc/node.toml", cwd=elsewhere)
    assert check.returncode == 0, check.stdout + check.stderr

    env = _env(tmp_path)
    name, _, token = (etc / "bastion.env").read_text().strip().partition("=")
    env[name] = token
    url = f"http://127.0.0.1:{port}"
    out = tmp_path / "stdout"
    with out.open("wb") as stdout:
        proc = subprocess.Popen(
            [*BASTION, "serve", "--config", "../etc/node.toml"],
            env=env,
            cwd=elsewhere,  # kek_file = "audit-kek.key" is found beside node.toml, not here
            stdout=stdout,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 240
        while f"serving on {url}" not in out.read_text(errors="replace"):
            assert proc.poll() is None, out.read_text(errors="replace")
            assert time.monotonic() < deadline, "the node did not say it was serving"
            time.sleep(0.05)
        assert _status(url, first_key) == 200
        assert httpx.get(f"{url}/metrics", timeout=10).status_code == 401
        metrics = httpx.get(f"{url}/metrics", headers={"authorization": f"Bearer {token}"}, timeout=10)
        assert metrics.status_code == 200

        made = _run(
            tmp_path, "keys", "create", "--tenant", "acme", "--config", "../etc/node.toml", cwd=elsewhere
        )
        assert made.returncode == 0, made.stderr
        second_key = _key_of(made.stdout)
        assert _status(url, second_key) == 401  # stored; the node has not reloaded yet
        reload = _run(tmp_path, "reload", "--config", str(etc / "node.toml"), cwd=elsewhere)
        assert reload.returncode == 0, reload.stderr
        assert "reloaded" in reload.stdout and "config sha256" in reload.stdout
        assert _status(url, second_key) == 200

        # a bad edit: `bastion reload` says why, and nothing changes
        config = etc / "node.toml"
        good = config.read_text()
        config.write_text(good.replace('models = ["bastion-tiny"]', 'models = ["bastion-tiyn"]'))
        refused = _run(tmp_path, "reload", "--config", str(config), cwd=elsewhere)
        assert refused.returncode == 2
        assert "reload refused, nothing changed" in refused.stderr and "bastion-tiyn" in refused.stderr
        assert _status(url, second_key) == 200
        config.write_text(good)

        second_id = "k_" + second_key.split("_")[1]
        revoked = _run(tmp_path, "keys", "revoke", second_id, "--config", str(config), cwd=elsewhere)
        assert revoked.returncode == 0, revoked.stderr
        os.kill(proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 30
        while _status(url, second_key) != 401:
            assert time.monotonic() < deadline, "SIGHUP did not reload the revocation"
            time.sleep(0.05)
        assert _status(url, first_key) == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    listing = _run(tmp_path, "keys", "list", "--config", str(etc / "node.toml"), cwd=elsewhere)
    rows = {line.split()[0]: line.split() for line in listing.stdout.splitlines()[1:]}
    first_id = "k_" + first_key.split("_")[1]
    assert rows[first_id][4] != "-"  # last used, written by the node
    assert rows[second_id][5] == "revoked"
    verify = _run(tmp_path, "audit", "--config", "../etc/node.toml", "verify", cwd=elsewhere)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_init_keeps_existing_keys_and_folders_and_takes_a_data_dir(tmp_path: Path) -> None:
    etc, data = tmp_path / "etc", tmp_path / "var" / "lib" / "bastion"
    etc.mkdir(mode=0o755)
    os.chmod(etc, 0o755)  # /etc/bastion under the systemd unit: root's, 0755
    from audit import generate_kek_file

    generate_kek_file(etc / "audit-kek.key")  # the operator's own KEK, made before
    kek = (etc / "audit-kek.key").read_bytes()
    init = _run(
        tmp_path,
        "init",
        "--dir",
        str(etc),
        "--data-dir",
        str(data),
        "--port",
        str(_free_port()),
        cwd=tmp_path,
    )
    assert init.returncode == 0, init.stderr
    assert "Kept what was there (never overwritten): audit-kek.key" in init.stdout
    assert (etc / "audit-kek.key").read_bytes() == kek
    assert stat.S_IMODE(etc.stat().st_mode) == 0o755  # left as it was
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert (data / "api-keys.db").exists()
    check = _run(tmp_path, "config", "check", "--config", str(etc / "node.toml"), cwd=tmp_path)
    problems = check.stdout.splitlines()[:-1]
    assert problems == [p for p in problems if p.startswith("pin-mismatch: ")] and len(problems) == 1, (
        check.stdout
    )
    assert str(data / "models" / "bastion-tiny") in problems[0]  # only the model is missing
