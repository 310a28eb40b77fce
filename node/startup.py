"""What ``bastion serve`` checks before it starts an engine, and its exit codes.

Starting an engine takes a minute on the tiny model and many on a real one, so
everything that can be known without one is checked first, in seconds: the
models file and every model name the config gives, the audit keys, the modes of
the files and folders the node writes, each served model's files (present, and
nothing unpinned beside them; their hashes are checked as each engine starts),
and the listening port. Each class of failure has its own exit code
(``ExitCode``, documented in the README).
"""

from __future__ import annotations

import socket
from enum import IntEnum
from pathlib import Path

from audit import SQLITE_SIDECARS, AuditError, check_files, check_keys, check_private, private_dir
from serving.errors import PinMismatchError
from serving.models import ModelsConfigError, ModelsFile, load_models_file, resolve_model_dir
from serving.pins import check_layout

from .app import FEEDBACK_DB, served_models
from .budgets import BUDGETS_DB
from .canaries import BASELINES_FILE
from .config import ConfigError, NodeConfig, resolve
from .feedback import secret_path

__all__ = ["ExitCode", "StartupError", "listen_socket", "preflight"]


class ExitCode(IntEnum):
    """``bastion serve``'s exit status, one per class of failure."""

    OK = 0
    #: an unexpected error (a traceback says where)
    ERROR = 1
    #: bad usage or config: node.toml, models.toml, a model name that leads nowhere
    CONFIG = 2
    #: a model's files are missing or fail their pins
    PIN_MISMATCH = 3
    #: the audit log refuses to open (tampered, rolled back, its keys do not open it, locked)
    AUDIT = 4
    #: an audit key (KEK file or variable, signing key) is missing, malformed or open to others
    KEYS = 5
    #: a file or folder the node writes is open to group or others, or cannot be created
    FILE_MODE = 6
    #: the listening address is in use or cannot be bound
    PORT = 7
    #: an engine failed to start or to pass its first forward pass
    ENGINE = 8
    #: interrupted (Ctrl-C) during start-up
    INTERRUPTED = 130


class StartupError(Exception):
    """A start-up check failed; ``code`` is the exit status, the message names the cause."""

    def __init__(self, code: ExitCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def data_files(data_dir: Path) -> list[Path]:
    """Every file the node writes in ``data_dir`` (model folders under ``models/`` are the operator's)."""
    files = [data_dir / BASELINES_FILE, secret_path(data_dir / FEEDBACK_DB)]
    for db in (BUDGETS_DB, FEEDBACK_DB):
        files += [data_dir / (db + suffix) for suffix in ("", *SQLITE_SIDECARS)]
    return files


def preflight(config: NodeConfig, config_dir: Path) -> ModelsFile:
    """Every check that needs no engine, cheapest first; raises ``StartupError``."""
    try:
        models = load_models_file(resolve(config_dir, config.models_file))
        served = served_models(config, models)
    except (ModelsConfigError, ConfigError) as exc:
        raise StartupError(ExitCode.CONFIG, str(exc)) from None
    if config.audit is not None:
        try:
            check_keys(config.audit)
        except AuditError as exc:
            raise StartupError(ExitCode.KEYS, f"audit key: {exc}") from None
    data_dir = resolve(config_dir, config.data_dir)
    try:
        private_dir(data_dir)
        for path in data_files(data_dir):
            check_private(path)
        check_private((data_dir / BASELINES_FILE).parent)
        if config.audit is not None:
            check_files(config.audit)
    except AuditError as exc:
        raise StartupError(ExitCode.FILE_MODE, str(exc)) from None
    models_dir = resolve(config_dir, config.models_file).parent
    for name in served:
        spec = models.get(name)
        try:
            check_layout(spec, resolve_model_dir(spec, data_dir=data_dir, models_file_dir=models_dir))
        except PinMismatchError as exc:
            raise StartupError(ExitCode.PIN_MISMATCH, exc.message) from None
    listen_socket(config.server.host, config.server.port).close()
    return models


def listen_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (not yet listening); ``StartupError`` (PORT) when it cannot be.

    SO_REUSEADDR as uvicorn sets it: a port left in TIME_WAIT is free, one a
    process listens on is not. The config allows an IP address or ``localhost``,
    bound as 127.0.0.1 (the name may resolve to ::1 first, out of IPv4 clients' reach).
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            "127.0.0.1" if host == "localhost" else host,
            port,
            type=socket.SOCK_STREAM,
            flags=socket.AI_PASSIVE,
        )[0]
    except socket.gaierror as exc:
        raise StartupError(ExitCode.PORT, f"cannot resolve {host}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise StartupError(ExitCode.PORT, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock
