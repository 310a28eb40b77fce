"""The admin channel: shred, rotate-kek and retention against a running node, without a stop.

A Unix socket, ``<data_dir>/admin/admin.sock``: the socket 0600 in a 0700
folder, so only the node's own user reaches it (the kernel's peer credentials
are checked as well), and never a network port. One JSON object per line each
way, one request per connection::

    {"op": "shred", "tenant": "acme", "subject": "alice"}  ->  {"ok": true, "seqs": [41]}
    {"op": "shred", "tenant": "acme"}  ->  {"ok": true, "seqs": [42], "context": {"stores": 2, ...}}
    {"op": "rotate-kek", "new_kek_file": "/etc/bastion/kek.new"}    (the node reads the file itself)
    {"op": "retention"}  {"op": "ping"}
    {"op": "reload"}  ->  {"ok": true, "reloaded": false, "problems": ["..."]}   (``node.reload``)
    a failure:  {"ok": false, "error": "AuditKeyError", "message": "..."}

Each operation is the audit log's own method (``AuditLog.shred``, ``rotate_kek``,
``apply_retention``), run by its single writer between record
groups, so ``key.destroyed`` and the rest enter the chain in order, exactly as
when the CLI opens a stopped node's log. ``AdminClient`` is the CLI's side; it
satisfies ``audit.cli.LiveLog``. The same module runs retention on its schedule
(``[audit] retention_interval_s``). With the node's context store
(``context=``), a tenant's shred erases its retrieval data and a KEK rotation
rewraps its data keys as well (``node.context.operations``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import stat
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import msgspec

from audit import AuditError, AuditLog, errors, private_dir
from audit.kek import kek_from_file

from .config import NodeConfig, resolve
from .context.backend import ContextBackend
from .context.operations import describe_erased
from .periodic import every

__all__ = ["AdminClient", "admin_channel", "admin_socket_path", "retention_schedule"]

_log = logging.getLogger("bastion.admin")

_MAX_LINE: Final = 64 * 1024
_READ_TIMEOUT_S: Final = 10.0
#: the longest path an AF_UNIX address holds (sun_path, with its NUL)
_SUN_PATH_MAX: Final = 107


class _Shred(msgspec.Struct, tag="shred", tag_field="op", frozen=True, forbid_unknown_fields=True):
    tenant: str
    subject: str | None = None


class _RotateKek(msgspec.Struct, tag="rotate-kek", tag_field="op", frozen=True, forbid_unknown_fields=True):
    new_kek_file: str


class _Retention(msgspec.Struct, tag="retention", tag_field="op", frozen=True, forbid_unknown_fields=True):
    pass


class _Ping(msgspec.Struct, tag="ping", tag_field="op", frozen=True, forbid_unknown_fields=True):
    pass


class _Reload(msgspec.Struct, tag="reload", tag_field="op", frozen=True, forbid_unknown_fields=True):
    pass


#: ``node.reload.Reloader.reload``: ``{"reloaded": bool, ...}``
ReloadFn = Callable[[], Awaitable[dict[str, Any]]]

_Request = _Shred | _RotateKek | _Retention | _Ping | _Reload
_decoder = msgspec.json.Decoder(_Request)


def admin_socket_path(config: NodeConfig, config_dir: Path) -> Path:
    return resolve(config_dir, config.data_dir).resolve() / "admin" / "admin.sock"


# -- the node's side ---------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def admin_channel(
    path: Path, log: AuditLog, *, reload: ReloadFn | None = None, context: ContextBackend | None = None
) -> AsyncIterator[None]:
    """Serve the admin socket at ``path`` while the context is open."""
    if len(os.fsencode(path)) > _SUN_PATH_MAX:
        raise OSError(
            f"{path}: longer than a Unix socket path may be ({_SUN_PATH_MAX} bytes); shorten data_dir"
        )
    folder = path.parent
    if not folder.exists():
        # every missing level 0700: ``mkdir -p`` would leave a new data_dir 0755, which the
        # node's other stores then refuse (exit 6)
        private_dir(folder)
    os.chmod(folder, 0o700)  # a folder made before, or under a loose umask
    _remove_stale(path)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            reply = await _answer(reader, writer, log, reload, context)
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, TimeoutError):
            pass  # the client left; whatever it asked for is done or was never started
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_unix_server(handle, path=str(path), limit=_MAX_LINE)
    os.chmod(path, 0o600)
    try:
        yield
    finally:
        server.close()
        await server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _remove_stale(path: Path) -> None:
    """A socket left by a node that died is removed; one that answers belongs to a running node."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(f"{path}: exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()
        return
    finally:
        probe.close()
    raise OSError(f"{path}: another node is serving this data_dir")


def _peer_uid(writer: asyncio.StreamWriter) -> int | None:
    sock = writer.get_extra_info("socket")
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return None
    _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return int(uid)


async def _answer(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    log: AuditLog,
    reload: ReloadFn | None,
    context: ContextBackend | None,
) -> dict[str, Any]:
    uid = _peer_uid(writer)
    if uid is not None and uid != os.getuid():
        _log.warning("admin: refused a connection from uid %d", uid)
        return {"ok": False, "error": "PermissionError", "message": "not the node's user"}
    try:
        line = await asyncio.wait_for(reader.readline(), _READ_TIMEOUT_S)
        request = _decoder.decode(line)
    except (ValueError, asyncio.LimitOverrunError, msgspec.DecodeError) as exc:
        return {"ok": False, "error": "BadRequest", "message": f"not an admin request: {exc}"}
    try:
        if isinstance(request, _Reload):
            if reload is None:
                return {
                    "ok": True,
                    "reloaded": False,
                    "problems": ["this node was started without a node.toml"],
                }
            return {"ok": True} | await reload()
        return {"ok": True} | await _run(request, log, context)
    except AuditError as exc:
        return {"ok": False, "error": type(exc).__name__, "message": str(exc)}
    except OSError as exc:
        return {"ok": False, "error": "OSError", "message": str(exc)}


async def _run(request: _Request, log: AuditLog, context: ContextBackend | None) -> dict[str, Any]:
    if isinstance(request, _Ping):
        return {}
    if isinstance(request, _Shred):
        # the subject is a data subject's id: it stays out of the node's own log
        _log.warning(
            "admin: shredding tenant %r%s", request.tenant, " (one data subject)" * bool(request.subject)
        )
        reply: dict[str, Any] = {"seqs": await log.shred(request.tenant, request.subject)}
        if context is not None and request.subject is None:
            reply["context"] = describe_erased(await context.erase_tenant(request.tenant))
        return reply
    if isinstance(request, _RotateKek):
        new = await asyncio.to_thread(kek_from_file, request.new_kek_file)
        _log.warning("admin: rewrapping every data key under KEK %s", new.kek_id)
        reply = {"seqs": await log.rotate_kek(new), "kek_id": new.kek_id}
        if context is not None:
            reply["context_keys"] = await context.rewrap(new)
        return reply
    assert isinstance(request, _Retention), request  # reload is answered before _run
    return {"seqs": await log.apply_retention()}


@contextlib.asynccontextmanager
async def retention_schedule(log: AuditLog, interval_s: float) -> AsyncIterator[None]:
    """Apply retention every ``interval_s`` while the node serves (opening the log applied it once)."""

    async def retain() -> None:
        try:
            if seqs := await log.apply_retention():
                _log.warning("audit retention expired keys (recorded at seq %s)", seqs)
        except Exception:  # the log refuses records, the keys database failed: the next run retries
            _log.exception("audit retention failed")

    async with every(interval_s, retain, name="bastion-audit-retention"):
        yield


# -- the CLI's side ----------------------------------------------------------------------------------


_ERRORS: Final[dict[str, type[Exception]]] = {name: getattr(errors, name) for name in errors.__all__} | {
    "OSError": OSError,
    "PermissionError": PermissionError,
}


class AdminClient:
    """A running node's log, through its admin socket (``audit.cli.LiveLog``)."""

    def __init__(self, path: Path, *, timeout_s: float = 600.0) -> None:
        self.path = path
        self._timeout_s = timeout_s

    @classmethod
    def find(cls, path: Path) -> AdminClient | None:
        """The client when a node answers at ``path``; None when no node runs there."""
        client = cls(path, timeout_s=10.0)
        try:
            client.call({"op": "ping"})
        except _NoNode:
            return None
        return cls(path)

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self._timeout_s)
        try:
            try:
                sock.connect(str(self.path))
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTDIR):
                    raise _NoNode from exc
                raise
            sock.sendall(json.dumps(request).encode() + b"\n")
            with sock.makefile("rb") as f:
                line = f.readline()
        finally:
            sock.close()
        if not line:
            raise errors.AuditUnavailableError("the node closed its admin channel without answering")
        reply: dict[str, Any] = json.loads(line)
        if not reply.get("ok"):
            kind = _ERRORS.get(str(reply.get("error")), errors.AuditError)
            raise kind(str(reply.get("message", "the node refused the request")))
        return reply

    def shred(self, tenant: str, subject: str | None) -> list[int]:
        return _seqs(self.call({"op": "shred", "tenant": tenant, "subject": subject}))

    def rotate_kek(self, new_kek_file: str) -> list[int]:
        return _seqs(self.call({"op": "rotate-kek", "new_kek_file": new_kek_file}))

    def apply_retention(self) -> list[int]:
        return _seqs(self.call({"op": "retention"}))

    def reload(self) -> dict[str, Any]:
        """``{"reloaded": True, "config_sha256": ...}`` or ``{"reloaded": False, "problems": [...]}``."""
        return self.call({"op": "reload"})


class _NoNode(Exception):
    """Nothing listens on the admin socket."""


def _seqs(reply: dict[str, Any]) -> list[int]:
    return [int(s) for s in reply.get("seqs", [])]
