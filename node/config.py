"""``node.toml``: the node's configuration, decoded strictly.

Every section is a msgspec Struct with ``forbid_unknown_fields``: a typo or a
wrong type is an error that names its location (``$.tenants[0].residency``),
never a silent default. Config is only ever built by decoding, tests included.
The router's and the audit log's own sections are their packages' Structs.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import parse_qsl, urlsplit

import msgspec

from audit import AuditConfig
from router.config import ProviderConfig, RouteConfig, RoutingOptions, TenantPolicy
from serving.errors import StartupFailure

from .context.records import ContextConfig, StaticChunking

__all__ = [
    "ApiKeyConfig",
    "ConfigError",
    "LimitsConfig",
    "LoggingConfig",
    "MetricsConfig",
    "NodeConfig",
    "PostgresConfig",
    "ServerConfig",
    "StateConfig",
    "TenantConfig",
    "anchored",
    "decode_config",
    "load_config",
]

_NAME = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")]
_HEX64 = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]


class ConfigError(StartupFailure):
    """The config file is missing, unreadable or invalid; the message names the location."""


class ServerConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8000
    #: requests with a larger body get 413
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024, le=64 * 1024 * 1024)] = 4 * 1024 * 1024
    #: seconds from a connection's start (or its next request's first byte) to the end of the headers
    header_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=600)] = 10.0
    #: seconds from the end of the headers to the end of the body; past either deadline: 408, closed
    body_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 30.0
    #: connections served at once; a request on a connection beyond them gets 503
    max_connections: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1024
    #: after SIGTERM: seconds generations in flight may take to finish before they are cut (``node.drain``)
    drain_timeout_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 30.0

    def __post_init__(self) -> None:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            if self.host != "localhost":
                raise ValueError(f"host must be an IP address or 'localhost', got {self.host!r}") from None


class LimitsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    #: highest ``max_tokens`` a request may ask for (the model's context still applies)
    max_tokens_cap: Annotated[int, msgspec.Meta(ge=1)] = 32768
    #: most messages in one chat request
    max_messages: Annotated[int, msgspec.Meta(ge=1)] = 1024


class MetricsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    #: environment variable holding a bearer token for ``GET /metrics`` (unset: open on the listen address)
    token_env: str | None = None
    gpu_interval_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    #: what a GPU-hour costs on this node, to price local requests beside API token prices
    gpu_hour_cost: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    currency: str = "EUR"
    #: replay the drift canaries every this many seconds (off when unset; `bastion canary run` records
    #: external providers' baselines first)
    canary_interval_s: Annotated[float, msgspec.Meta(ge=10)] | None = None


class LoggingConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[logging]``: the node's JSON lines go to stdout; ``file`` adds a size-rotated copy."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: also write the lines here (relative to the config file's folder), mode 0600, for hosts without
    #: journald; when it reaches ``max_bytes`` it becomes ``<file>.1`` and the oldest of ``backup_count`` goes
    file: str | None = None
    max_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 64 * 1024 * 1024
    backup_count: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 5


class PostgresConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A PostgreSQL database the node connects to: ``[state]``, and ``[context.postgres]``.

    The URL may hold a password, so it comes from an environment variable
    (``postgres_url_env``) or a file (``postgres_url_file``); a ``postgres_url``
    written in the file itself is accepted only without a password (peer, trust or
    ``.pgpass`` authentication). ``node.budgets.postgres_url`` reads it.
    """

    postgres_url: Annotated[str, msgspec.Meta(pattern=r"^postgres(ql)?://")] | None = None
    postgres_url_env: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None
    postgres_url_file: str | None = None
    #: a limit check (or a connection to the database) waiting longer than this fails (closed)
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 2.0
    max_connections: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 10

    def __post_init__(self) -> None:
        given = [n for n in ("postgres_url", "postgres_url_env", "postgres_url_file") if getattr(self, n)]
        if len(given) > 1:
            raise ValueError(f"set one of postgres_url, postgres_url_env, postgres_url_file, not {given}")
        if self.postgres_url is not None and _has_password(self.postgres_url):
            raise ValueError(
                "postgres_url holds a password: secrets never live in the config file; "
                "put the URL in an environment variable (postgres_url_env) or a file (postgres_url_file)"
            )

    @property
    def shared(self) -> bool:
        return any((self.postgres_url, self.postgres_url_env, self.postgres_url_file))


class StateConfig(PostgresConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where tenant limits and budgets are counted (``[state]``).

    Left out: this node alone (memory, with day and month budgets in
    ``data_dir/budgets.db``). With PostgreSQL, every node that names the same
    database shares its tenants' rpm, tpm, tokens per day and spend per month.
    """


def _has_password(url: str) -> bool:
    parts = urlsplit(url)
    if parts.password:
        return True
    return "password" in {k.lower() for k, _ in parse_qsl(parts.query)}


class ApiKeyConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A tenant API key, stored only as the SHA-256 of the key (keys are 256-bit random)."""

    id: Annotated[str, msgspec.Meta(pattern=r"^k_[0-9a-z]{8,32}$")]
    sha256: _HEX64


class TenantConfig(TenantPolicy, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A tenant: its keys, the models (aliases) it may use, and its routing policy."""

    name: _NAME
    keys: tuple[ApiKeyConfig, ...] = ()
    models: tuple[str, ...] = ()


class ContextSection(ContextConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[context]``: files, vector stores and ``file_search`` (``node.context``), on when present."""

    enabled: bool = True
    #: how a file is chunked when a request names no ``chunking_strategy`` (OpenAI's ``auto``)
    chunking: StaticChunking = StaticChunking()
    #: tokens of retrieved text a ``file_search`` request may add to the prompt (the chat model's tokens)
    file_search_tokens: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 2000
    #: ``file_search`` results when the tool names no ``max_num_results``
    file_search_results: Annotated[int, msgspec.Meta(ge=1, le=50)] = 10
    #: where stores live: ``sqlite`` (``path`` in ``data_dir``) or ``postgres`` (the database of
    #: ``[context.postgres]``, else ``[state]``'s)
    backend: Literal["sqlite", "postgres"] = "sqlite"
    #: ``backend = "postgres"``: its own database (left out: the fleet's ``[state]`` database)
    postgres: PostgresConfig | None = None

    def __post_init__(self) -> None:
        if self.backend == "sqlite" and self.postgres is not None:
            raise ValueError(
                '`postgres` is for backend = "postgres"; this store is SQLite (the default): '
                'remove [context.postgres] or set backend = "postgres"'
            )
        if self.backend == "postgres" and self.path is not None:
            raise ValueError(
                '`path` names the SQLite file; backend = "postgres" keeps stores in PostgreSQL: remove it'
            )
        if self.backend == "postgres" and self.fulltext_cache_bytes != _default(self, "fulltext_cache_bytes"):
            raise ValueError(
                '`fulltext_cache_bytes` caches SQLite\'s BM25 score lists; backend = "postgres" ranks '
                "in the server (ts_rank): remove it"
            )
        if self.reranker is None and self.rerank_candidates != _default(self, "rerank_candidates"):
            raise ValueError(
                "`rerank_candidates` is how many chunks `reranker` re-scores; no reranker is set"
            )
        if self.postgres is not None and not self.postgres.shared:
            raise ValueError(
                "[context.postgres] names no database: set postgres_url_env, postgres_url_file "
                "or postgres_url (without a password)"
            )

    def database(self, state: StateConfig) -> tuple[PostgresConfig, str] | None:
        """The PostgreSQL database of ``backend = "postgres"`` and the section naming it (None: SQLite)."""
        if self.backend != "postgres":
            return None
        if self.postgres is not None:
            return self.postgres, "[context.postgres]"
        return state, "[state]"


def _default(struct: msgspec.Struct, name: str) -> object:
    return next(f.default for f in msgspec.structs.fields(struct) if f.name == name)


class NodeConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    server: ServerConfig = ServerConfig()
    limits: LimitsConfig = LimitsConfig()
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()
    state: StateConfig = StateConfig()
    #: relative paths resolve against the config file's folder
    models_file: str = "models.toml"
    data_dir: str = "data"
    #: serve only these models from models.toml (default: every model that a tenant or route names)
    serve: tuple[str, ...] | None = None
    tenants: tuple[TenantConfig, ...] = ()
    #: required: ``None`` only when the file says ``[audit] enabled = false`` (see ``decode_config``)
    audit: AuditConfig | None
    providers: tuple[ProviderConfig, ...] = ()
    routes: tuple[RouteConfig, ...] = ()
    routing: RoutingOptions = RoutingOptions()
    #: set by dev mode only: loopback-only bind, banner
    dev_mode: bool = False
    #: files and vector stores (``[context]``): absent, the endpoints answer 404
    context: ContextSection | None = None

    def __post_init__(self) -> None:
        names = [t.name for t in self.tenants]
        if len(set(names)) != len(names):
            raise ValueError(f"tenant names must be unique, got {names}")
        key_ids = [k.id for t in self.tenants for k in t.keys]
        if len(set(key_ids)) != len(key_ids):
            raise ValueError("API key ids must be unique across tenants")
        if self.context is not None and self.context.enabled and self.audit is None:
            raise ValueError("[context] encrypts files under the audit log's KEK: it needs [audit] enabled")
        ctx = self.context
        if ctx is not None and ctx.backend == "postgres" and ctx.postgres is None and not self.state.shared:
            raise ValueError(
                '[context] backend = "postgres" needs a database: [context.postgres] postgres_url_env '
                "(or postgres_url_file, postgres_url), or the fleet's [state] database"
            )
        if self.dev_mode and not _is_loopback(self.server.host):
            raise ValueError(f"dev mode binds to loopback only; refusing host {self.server.host!r}")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def decode_config(text: str | bytes, *, source: str = "node.toml", base: Path | None = None) -> NodeConfig:
    """Decode ``node.toml`` text strictly; errors name the file and the location.

    A node keeps an audit log: a file without ``[audit]`` is an error, and running
    without one takes ``[audit] enabled = false`` (with no other audit setting).
    With ``base`` (the file's folder), every relative path in it is made absolute
    against that folder, whatever the working directory (see ``anchored``).
    """
    try:
        raw = msgspec.toml.decode(text)
        missing = "audit" not in raw
        raw["audit"] = None if missing else _audit_section(raw["audit"])
        _refuse_unsupported(raw)
        config = msgspec.convert(raw, type=NodeConfig)  # every other error first, with its location
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    if missing:
        raise ConfigError(
            f"{source}: no [audit] section: a node keeps an audit log. Configure [audit] (path, "
            "kek_file or kek_env, signing_key_file, checkpoint_path), or set `[audit] enabled = false` "
            "to run without one"
        )
    return config if base is None else anchored(config, base)


def anchored(config: NodeConfig, base: Path) -> NodeConfig:
    """``config`` with every relative path in it resolved against ``base`` (the config file's folder).

    Operators write ``kek_file = "kek.key"`` beside ``node.toml`` and expect it found
    there, not in whatever folder the node was started from. One place does it, so
    every consumer (``serve``, ``audit``, ``models``, ``keys``) sees the same files.
    """

    def at(value: str) -> str:
        return str(resolve(base, value))

    replace = msgspec.structs.replace
    audit = config.audit
    if audit is not None:
        audit = replace(
            audit,
            path=at(audit.path),
            keys_path=None if audit.keys_path is None else at(audit.keys_path),
            kek_file=None if audit.kek_file is None else at(audit.kek_file),
            signing_key_file=at(audit.signing_key_file),
            checkpoint_path=at(audit.checkpoint_path),
        )
    providers = tuple(
        p if p.api_key_file is None else replace(p, api_key_file=at(p.api_key_file)) for p in config.providers
    )
    logging = config.logging
    if logging.file is not None:
        logging = replace(logging, file=at(logging.file))
    return replace(
        config,
        models_file=at(config.models_file),
        data_dir=at(config.data_dir),
        audit=audit,
        providers=providers,
        logging=logging,
    )


#: settings an earlier release accepted without acting on them: refused with what to do instead
_UNSUPPORTED: dict[tuple[str, str], str] = {
    ("metrics", "otlp_endpoint"): "tracing (OpenTelemetry) is not supported by this node; remove the setting",
}


def _refuse_unsupported(raw: dict[str, object]) -> None:
    for (section, key), why in _UNSUPPORTED.items():
        table = raw.get(section)
        if isinstance(table, dict) and key in table:
            raise msgspec.ValidationError(f"`{key}`: {why} - at `$.{section}.{key}`")


def _audit_section(section: object) -> object:
    """The ``[audit]`` table as ``AuditConfig`` decodes it, or ``None`` when explicitly disabled."""
    if not isinstance(section, dict) or "enabled" not in section:
        return section  # AuditConfig's decoding names whatever is wrong
    section = dict(section)
    enabled = section.pop("enabled")
    if not isinstance(enabled, bool):
        got = type(enabled).__name__
        raise msgspec.ValidationError(f"Expected `bool`, got `{got}` - at `$.audit.enabled`")
    if enabled:
        return section
    if section:
        raise msgspec.ValidationError(
            f"`enabled = false` takes no other audit setting, got {sorted(section)} - at `$.audit`"
        )
    return None


_SECRETISH = re.compile(r"^\s*(api_key|password|secret|token)\s*=", re.MULTILINE)


def load_config(path: Path) -> NodeConfig:
    """Read and decode a config file; relative paths inside it resolve against its folder."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    if match := _SECRETISH.search(text):
        raise ConfigError(
            f"{path}: '{match.group(1)}' looks like a secret in the config file; "
            "name an environment variable or a file instead (e.g. api_key_env)"
        )
    return decode_config(text, source=str(path), base=path.resolve().parent)


def resolve(config_dir: Path, value: str) -> Path:
    """A path from the config, relative to the config file's folder."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else (config_dir / p)
