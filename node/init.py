"""``bastion init [--dir D]``: the files of a first production node, and what to do next.

Writes, in ``D`` (made 0700 when new):

- ``node.toml``, commented: one tenant, the audit log on, ``/metrics`` behind a token,
  every path relative to ``D`` (``node.config`` resolves them against the file's folder);
- ``audit-kek.key``, the audit key-encryption key (``audit.generate_kek_file``);
- ``audit-signing.key``, the checkpoint signing key (``audit.generate_signing_key``);
- ``bastion.env``, ``BASTION_METRICS_TOKEN=...`` (a systemd ``EnvironmentFile``, ``docker --env-file``);
- ``models.toml``, the shipped pins (the tiny model), unless one is there already;

every secret 0600, folders it makes 0700, and the tenant's first API key in
``<data_dir>/api-keys.db`` (printed once). ``--data-dir`` puts the node's data
elsewhere (``/var/lib/bastion`` under the systemd unit, where ``/etc`` is
read-only). Keys and files already there are never overwritten: an existing key
file is kept (and said so), an existing ``node.toml`` stops ``init`` (exit 2)
before anything is written.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from audit import generate_kek_file, generate_signing_key, private_dir
from serving.models import ModelsConfigError, load_models_file

from .config import ConfigError, load_config
from .keystore import KeyStore
from .tenancy import create_key

__all__ = ["init_command"]

KEK_FILE = "audit-kek.key"
SIGNING_KEY_FILE = "audit-signing.key"
METRICS_ENV_FILE = "bastion.env"
METRICS_TOKEN_ENV = "BASTION_METRICS_TOKEN"  # noqa: S105 (a variable's name)

_NODE_TOML = """\
# node.toml written by `bastion init`. Relative paths resolve against this file's folder.
# Check it with `bastion config check --config {config}`;
# the README's Configuration section documents every setting.

# pinned models: add yours with its full revision and every file's hash
models_file = "models.toml"
# 0700: the audit log, budgets, API keys (api-keys.db), models/NAME
data_dir = "{data_dir}"

[server]
# "0.0.0.0" to serve other hosts (behind your TLS proxy)
host = "127.0.0.1"
port = {port}

[[tenants]]
name = "{tenant}"
# the models (or route aliases) this tenant may call
models = ["{model}"]
# never leaves this node; or a list of provider regions: ["eu-west"]
residency = "local-only"
# limits: requests per minute, tokens per day
# rpm = 600
# tokens_per_day = 2000000
# API keys: `bastion keys create --tenant {tenant}` (kept hashed in api-keys.db),
# then `bastion reload` applies them to the running node.

[audit]
path = "{data_dir}/audit/audit.db"
# 32 random bytes, base64, 0600: back it up offline, the log cannot be read without it
kek_file = "{kek}"
# an Ed25519 private key, PKCS#8 PEM, 0600
signing_key_file = "{signing}"
# signed checkpoints: point it at WORM storage or a folder your SIEM collects
checkpoint_path = "{data_dir}/checkpoints"

[metrics]
# GET /metrics needs this bearer token (in {metrics_env})
token_env = "{token_env}"
"""


class _InitError(Exception):
    pass


def init_command(
    folder: Path,
    *,
    tenant: str,
    model: str | None,
    port: int,
    data_dir: str,
    shipped_models: Path,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    try:
        return _init(
            folder,
            tenant=tenant,
            model=model,
            port=port,
            data_dir=data_dir,
            shipped_models=shipped_models,
            out=out,
        )
    except (_InitError, ConfigError, ModelsConfigError, OSError) as exc:
        print(f"bastion: init: {exc}", file=err)
        return 2


def _init(
    folder: Path,
    *,
    tenant: str,
    model: str | None,
    port: int,
    data_dir: str,
    shipped_models: Path,
    out: TextIO,
) -> int:
    config = folder / "node.toml"
    if config.exists():
        raise _InitError(
            f"{config} exists: not overwritten (`bastion config check --config {config}` checks it)"
        )
    if any(c in data_dir for c in '"\\\n'):
        raise _InitError(f"--data-dir {data_dir!r}: no quotes, backslashes or line breaks")
    if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,62}", tenant):
        raise _InitError(f"tenant name {tenant!r}: lowercase letters, digits, '_', '.', '-'")
    if not folder.exists():
        private_dir(folder)  # made 0700; an existing one (/etc/bastion, 0755 under systemd) is left as it is
    models_file = folder / "models.toml"
    if not models_file.exists():
        shutil.copyfile(shipped_models, models_file)
    names = list(load_models_file(models_file).names)
    model = model or (names[0] if names else None)
    if model is None or model not in names:
        raise _InitError(f"model {model!r} is not in {models_file} (models: {', '.join(names) or 'none'})")
    made: list[str] = []
    kept: list[str] = []
    for name, generate in ((KEK_FILE, generate_kek_file), (SIGNING_KEY_FILE, generate_signing_key)):
        _once(folder / name, generate, made, kept)
    _once(
        folder / METRICS_ENV_FILE,
        _write_metrics_env,
        made,
        kept,
    )
    config.write_text(
        _NODE_TOML.format(
            config=config,
            port=port,
            tenant=tenant,
            model=model,
            data_dir=data_dir,
            kek=KEK_FILE,
            signing=SIGNING_KEY_FILE,
            token_env=METRICS_TOKEN_ENV,
            metrics_env=METRICS_ENV_FILE,
        ),
        encoding="utf-8",
    )
    loaded = load_config(config)  # what serve will read, paths resolved
    data = private_dir(Path(loaded.data_dir))
    key = create_key()
    KeyStore.in_data_dir(data).add(tenant, key, expires=None)
    _report(out, folder, config, data, made, kept, tenant, key.key_id, key.key, model)
    return 0


def _write_metrics_env(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(f"{METRICS_TOKEN_ENV}={secrets.token_urlsafe(32)}\n")


def _once(path: Path, generate: Callable[[Path], None], made: list[str], kept: list[str]) -> None:
    """Generate ``path`` unless it exists: a key already there is never replaced."""
    if path.exists():
        kept.append(path.name)
        return
    generate(path)
    made.append(path.name)


def _report(
    out: TextIO,
    folder: Path,
    config: Path,
    data: Path,
    made: list[str],
    kept: list[str],
    tenant: str,
    key_id: str,
    key: str,
    model: str,
) -> None:
    def say(line: str = "") -> None:
        print(line, file=out)

    say(f"Wrote {config} and, in {folder}: {', '.join(made) or 'no new keys'} (0600)")
    if kept:
        say(f"Kept what was there (never overwritten): {', '.join(kept)}")
    say()
    say(f"API key {key_id} for tenant '{tenant}' (shown once; only its hash is kept):")
    say(f"  {key}")
    say()
    say("Next steps:")
    say(f"  1. Put the model on disk: `bastion models pull {model}` on a connected staging host, then")
    say(f"     copy the verified folder to {data}/models/{model}/ (for the tiny dev model:")
    say(f"     `bastion models build-dev --config {config}`). To serve your own model, pin it in")
    say(f"     {folder}/models.toml and name it in the tenant's models.")
    say(f"  2. Back up {KEK_FILE} and {SIGNING_KEY_FILE} offline: without the KEK the log cannot be read.")
    say(f"  3. bastion config check --config {config}")
    say(f"  4. set -a; . {folder}/{METRICS_ENV_FILE}; set +a; bastion serve --config {config}")
    say("     (systemd: EnvironmentFile=; docker: --env-file)")
