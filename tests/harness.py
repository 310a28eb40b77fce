"""The test harness for a real node: a config decoded from TOML, uvicorn on 127.0.0.1.

``running_node`` builds the node as ``bastion serve`` does (``build_node``, then
``create_app``) and serves the app on the test's own event loop, so it can share
the session's engine (``local_engine`` in tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from audit import AuditLog, generate_kek_file, generate_signing_key
from audit.cli import run_audit_command
from node.app import create_app
from node.assembly import build_node
from node.cli import build_parser
from node.config import NodeConfig, decode_config
from node.server import uvicorn_config
from node.state import NodeState
from node.tenancy import create_key
from router.limits import LimitState
from serving.protocol import Provider

ROOT = Path(__file__).resolve().parents[1]
TINY = "bastion-tiny"


@dataclass(frozen=True)
class NodeSetup:
    config: NodeConfig
    config_dir: Path
    keys: dict[str, str]
    #: the node.toml text ``config`` was decoded from (for a CLI subprocess: write it to a file)
    toml: str = ""


def node_setup(
    tmp_path: Path,
    *,
    tenants: tuple[str, ...] | Mapping[str, str] = ("acme", "globex"),
    audit: bool = True,
    extra: str = "",
    models_file: Path | None = None,
    data_dir: Path | None = None,
) -> NodeSetup:
    """A node.toml for the tiny model with one key per tenant (decoded like any config).

    ``tenants`` maps each tenant to its extra TOML lines (models, residency, limits);
    a plain tuple gives each a ``local-only`` tenant on the tiny model. ``audit=False``
    writes ``[audit] enabled = false`` (a config without ``[audit]`` is refused).
    """
    default = f'models = ["{TINY}"]\nresidency = "local-only"'
    policies = dict(tenants) if isinstance(tenants, Mapping) else {t: default for t in tenants}
    keys = {t: create_key() for t in policies}
    audit_toml = "\n[audit]\nenabled = false\n"
    if audit:
        generate_kek_file(tmp_path / "kek.key")
        generate_signing_key(tmp_path / "signing.key")
        audit_toml = f"""
[audit]
path = "{tmp_path / "audit.db"}"
kek_file = "{tmp_path / "kek.key"}"
signing_key_file = "{tmp_path / "signing.key"}"
checkpoint_path = "{tmp_path / "checkpoints"}"
checkpoint_every_s = 0.5
"""
    tenant_toml = "".join(
        f"""
[[tenants]]
name = "{t}"
keys = [{k.config_line()}]
{policies[t]}
"""
        for t, k in keys.items()
    )
    text = f"""
models_file = "{models_file or ROOT / "models.toml"}"
data_dir = "{data_dir or tmp_path / "data"}"
serve = ["{TINY}"]
{audit_toml}
{tenant_toml}
{extra}
"""
    return NodeSetup(
        config=decode_config(text), config_dir=tmp_path, keys={t: k.key for t, k in keys.items()}, toml=text
    )


@dataclass
class RunningNode:
    url: str
    state: NodeState


@asynccontextmanager
async def running_node(
    setup: NodeSetup,
    engines: Mapping[str, Provider],
    *,
    providers: Mapping[str, Provider] | None = None,
    audit: AuditLog | None = None,
    limits: LimitState | None = None,
    config_file: Path | None = None,
) -> AsyncIterator[RunningNode]:
    """The node under uvicorn on 127.0.0.1 (a free port), on this event loop.

    ``audit``: an opened log to use instead of the one the config names (the caller closes it);
    ``limits``: opened tenant counters instead of those ``[state]`` names;
    ``config_file``: the file ``setup.config`` was read from, reloaded on SIGHUP and admin ``reload``.
    """
    async with build_node(
        setup.config,
        config_dir=setup.config_dir,
        engines=engines,
        providers=providers,
        audit=audit,
        limits=limits,
        config_file=config_file,
    ) as node:
        # the node's own server settings ([server]: read deadlines, connection cap), on a free port
        server = uvicorn.Server(uvicorn_config(create_app(node), setup.config.server, port=0))
        task = asyncio.create_task(server.serve())
        deadline = time.monotonic() + 30
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("the node exited before it started")
            if time.monotonic() > deadline:
                raise TimeoutError("the node did not start within 30 s")
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            yield RunningNode(url=f"http://127.0.0.1:{port}", state=node)
        finally:
            server.should_exit = True
            await task


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def chat(client: httpx.AsyncClient, key: str, text: str = "hello") -> str:
    r = await client.post(
        "/v1/chat/completions",
        headers=bearer(key),
        json={"model": TINY, "messages": [{"role": "user", "content": text}], "max_tokens": 4},
    )
    assert r.status_code == 200, r.text
    request_id = r.json()["id"]
    assert isinstance(request_id, str)
    return request_id


async def audit_records_by_request(setup: NodeSetup) -> dict[str, list[dict[str, Any]]]:
    """The decrypted export of the log (as ``bastion audit export --decrypt``), by request id."""
    assert setup.config.audit is not None
    args = build_parser().parse_args(["audit", "export", "--decrypt"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = await asyncio.to_thread(run_audit_command, args, setup.config.audit)
    assert code == 0
    by_request: dict[str, list[dict[str, Any]]] = {}
    for line in out.getvalue().splitlines():
        record = json.loads(line)
        request_id = (record.get("meta") or {}).get("request_id")
        if request_id:
            by_request.setdefault(request_id, []).append(record)
    return by_request
