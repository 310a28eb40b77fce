"""``bastion reload --config node.toml``: the running node re-reads its config and keys.

It asks the node through its admin socket (``node.admin``) and prints the
outcome: the new config digest, or one line per problem (then nothing changed).
Exit status: 0 reloaded; 2 refused (the problems are printed); 1 no node answers.
``kill -HUP <pid>`` does the same (the outcome goes to the node's log).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from .admin import AdminClient, admin_socket_path
from .config import ConfigError, load_config

__all__ = ["reload_command"]


def reload_command(path: Path, *, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"bastion: reload refused, nothing changed: {exc}", file=err)
        return 2
    socket_path = admin_socket_path(config, path.resolve().parent)
    client = AdminClient.find(socket_path)
    if client is None:
        print(
            f"bastion: no node answers at {socket_path}: is it running? (the admin socket runs with an "
            "audit log; `kill -HUP PID` reloads any node)",
            file=err,
        )
        return 1
    reply = client.reload()
    if not reply.get("reloaded"):
        for problem in reply.get("problems", []):
            print(f"bastion: reload refused, nothing changed: {problem}", file=err)
        return 2
    keys = sum(len(ids) for ids in reply.get("api_keys", {}).values())
    print(f"reloaded {path}: config sha256 {reply['config_sha256']}, {keys} API keys", file=out)
    return 0
