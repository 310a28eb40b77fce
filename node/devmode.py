"""Dev mode: ``bastion serve`` with no ``node.toml``.

Loopback only, the built-in tiny chat and embedding models (built if missing), files and vector
stores on the tiny embedding model (``[context]``), one ``dev`` tenant
whose key is printed, an audit log with keys generated under the data folder,
and a banner that says all of this loudly. The config is still built by
decoding a generated TOML document, like any other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from audit import generate_kek_file, generate_signing_key, private_dir

from .config import NodeConfig, decode_config
from .tenancy import NewKey, create_key

__all__ = ["DEV_MODELS", "DevSetup", "banner", "default_data_dir", "default_models_file", "dev_config"]

DEV_TENANT = "dev"
TINY_MODEL = "bastion-tiny"
TINY_EMBED_MODEL = "bastion-tiny-embed"
#: what dev mode serves and lets the dev tenant use
DEV_MODELS = (TINY_MODEL, TINY_EMBED_MODEL)


@dataclass(frozen=True)
class DevSetup:
    config: NodeConfig
    key: NewKey
    data_dir: Path


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def dev_config(*, data_dir: Path, models_file: Path, host: str, port: int) -> DevSetup:
    """Generate the dev-mode config (refusing a non-loopback host) and its keys."""
    dev_dir = private_dir(data_dir / "dev")
    kek = dev_dir / "audit-kek.key"
    signing = dev_dir / "audit-signing.key"
    if not kek.exists():
        generate_kek_file(kek)
    if not signing.exists():
        generate_signing_key(signing)
    key = create_key()
    models = ", ".join(_toml_str(m) for m in DEV_MODELS)
    text = f"""
dev_mode = true
models_file = {_toml_str(str(models_file))}
data_dir = {_toml_str(str(data_dir))}
serve = [{models}]

[server]
host = {_toml_str(host)}
port = {port}

[audit]
path = {_toml_str(str(dev_dir / "audit.db"))}
kek_file = {_toml_str(str(kek))}
signing_key_file = {_toml_str(str(signing))}
checkpoint_path = {_toml_str(str(dev_dir / "checkpoints"))}
origin = "bastion.dev/audit"

[context]
embedding_model = {_toml_str(TINY_EMBED_MODEL)}

[[tenants]]
name = {_toml_str(DEV_TENANT)}
models = [{models}]
residency = "local-only"
keys = [{key.config_line()}]
"""
    return DevSetup(config=decode_config(text, source="dev mode"), key=key, data_dir=data_dir)


def banner(setup: DevSetup) -> str:
    host, port = setup.config.server.host, setup.config.server.port
    line = "=" * 78
    return "\n".join(
        [
            line,
            "  BASTION DEV MODE - not for production",
            f"  no node.toml found: serving the built-in tiny models '{TINY_MODEL}' and "
            f"'{TINY_EMBED_MODEL}' (random weights)",
            f"  listening on http://{host}:{port} (loopback only)",
            f"  tenant '{DEV_TENANT}', API key (shown once, new on every start):",
            f"      {setup.key.key}",
            f"  audit log and keys under {setup.data_dir / 'dev'}",
            "  try:",
            f"    curl http://{host}:{port}/v1/chat/completions \\",
            f"      -H 'Authorization: Bearer {setup.key.key}' \\",
            f'      -H \'content-type: application/json\' -d \'{{"model": "{TINY_MODEL}", '
            '"messages": [{"role": "user", "content": "hello"}], "max_tokens": 16}\'',
            f"    curl http://{host}:{port}/v1/embeddings \\",
            f"      -H 'Authorization: Bearer {setup.key.key}' \\",
            f'      -H \'content-type: application/json\' -d \'{{"model": "{TINY_EMBED_MODEL}", '
            '"input": "hello"}\'',
            line,
        ]
    )


def default_data_dir() -> Path:
    return Path(os.environ.get("BASTION_DATA_DIR", "data")).resolve()


#: the models.toml shipped beside the code (dev mode's tiny models are pinned there)
SHIPPED_MODELS_FILE = Path(__file__).resolve().parent.parent / "models.toml"


def default_models_file(*, shipped: Path = SHIPPED_MODELS_FILE) -> Path:
    """The models file without a config: ``$BASTION_MODELS_FILE``, else the shipped one,
    else ``./models.toml`` (an installed package has none beside its code). Absolute."""
    if env := os.environ.get("BASTION_MODELS_FILE"):
        return Path(env).resolve()
    return shipped if shipped.exists() else Path("models.toml").resolve()
