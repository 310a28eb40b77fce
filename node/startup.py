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

import contextlib
import socket
from collections.abc import Iterator
from enum import IntEnum
from pathlib import Path

from audit import SQLITE_SIDECARS, AuditError, check_files, check_keys, check_private, private_dir
from router.transport import load_api_key
from serving.errors import PinMismatchError
from serving.models import ModelsConfigError, ModelsFile, load_models_file, resolve_model_dir
from serving.pins import check_layout

from .budgets import BUDGETS_DB, postgres_url
from .canaries import BASELINES_FILE
from .config import ConfigError, NodeConfig, resolve
from .feedback import FEEDBACK_DB, secret_path
from .keystore import KEYS_DB, KeyStore, KeyStoreError
from .served import served_models
from .tenancy import TenantRegistry

__all__ = ["ExitCode", "StartupError", "check_node", "listen_socket", "preflight"]


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
    #: a PostgreSQL database the node keeps data in (``[context] backend = "postgres"``) cannot be reached
    DATABASE = 9
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
    for db in (BUDGETS_DB, FEEDBACK_DB, KEYS_DB):
        files += [data_dir / (db + suffix) for suffix in ("", *SQLITE_SIDECARS)]
    return files


class _Problems:
    """Runs the checks in order: raising at the first failure (``serve``) or collecting them all."""

    def __init__(self, *, first_only: bool) -> None:
        self.first_only = first_only
        self.found: list[StartupError] = []

    @contextlib.contextmanager
    def check(self, code: ExitCode, errors: tuple[type[Exception], ...], prefix: str = "") -> Iterator[None]:
        try:
            yield
        except StartupError as exc:
            self.add(exc)
        except errors as exc:
            message = exc.message if isinstance(exc, PinMismatchError) else str(exc)
            self.add(StartupError(code, prefix + message))

    def add(self, problem: StartupError) -> None:
        if self.first_only:
            raise problem
        self.found.append(problem)


def preflight(config: NodeConfig, config_dir: Path) -> ModelsFile:
    """Every check that needs no engine, cheapest first; raises the first ``StartupError``."""
    models, _ = check_node(config, config_dir, first_only=True)
    assert models is not None  # a models file that does not load raised
    return models


def check_node(
    config: NodeConfig, config_dir: Path, *, first_only: bool = False
) -> tuple[ModelsFile | None, list[StartupError]]:
    """What ``serve`` checks before any engine: the models file and the model names, provider
    credentials, the audit keys, the modes of the node's files, each served model's files and
    the port. ``bastion config check`` gets every problem; ``serve`` stops at the first."""
    problems = _Problems(first_only=first_only)
    models: ModelsFile | None = None
    served: list[str] = []
    with problems.check(ExitCode.CONFIG, (ModelsConfigError,)):
        models = load_models_file(resolve(config_dir, config.models_file))
    if models is not None:
        with problems.check(ExitCode.CONFIG, (ConfigError,)):
            served = served_models(config, models)
    for provider in config.providers:
        with problems.check(ExitCode.CONFIG, (ValueError,)):
            load_api_key(provider)
    if config.state.shared:  # the fleet's PostgreSQL URL: its variable or file must hold one
        with problems.check(ExitCode.CONFIG, (ConfigError,)):
            postgres_url(config.state, config_dir=config_dir)
    database = config.context.database(config.state) if config.context is not None else None
    if database is not None and database[0] is not config.state:  # the context store's own URL
        with problems.check(ExitCode.CONFIG, (ConfigError,)):
            postgres_url(database[0], config_dir=config_dir, section=database[1])
    if config.audit is not None:
        with problems.check(ExitCode.KEYS, (AuditError,), "audit key: "):
            check_keys(config.audit)
    data_dir = resolve(config_dir, config.data_dir)
    with problems.check(ExitCode.FILE_MODE, (AuditError,)):
        if first_only:
            private_dir(data_dir)  # serve makes it; a check only looks
        check_private(data_dir)
    for path in [*data_files(data_dir), (data_dir / BASELINES_FILE).parent]:
        with problems.check(ExitCode.FILE_MODE, (AuditError,)):
            check_private(path)
    if config.audit is not None:
        with problems.check(ExitCode.FILE_MODE, (AuditError,)):
            check_files(config.audit)
    with problems.check(ExitCode.CONFIG, (KeyStoreError, ValueError)):
        TenantRegistry(config.tenants, KeyStore.in_data_dir(data_dir).active())  # readable, ids unique
    models_dir = resolve(config_dir, config.models_file).parent
    for name in served:
        assert models is not None
        spec = models.get(name)
        with problems.check(ExitCode.PIN_MISMATCH, (PinMismatchError,)):
            check_layout(spec, resolve_model_dir(spec, data_dir=data_dir, models_file_dir=models_dir))
    with problems.check(ExitCode.PORT, ()):
        listen_socket(config.server.host, config.server.port).close()
    return models, problems.found


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
