"""Structured JSON logs on the standard ``logging`` module.

Every record is one JSON line. A finished request is logged once by
``log_request``, whose parameters are the only fields the line can carry:
identifiers, status, token counts and latencies. It takes no text parameter, so
a prompt or a completion cannot reach the log through it; fields that could
carry text (``prompt``, ``messages``, ``content``, ...) are dropped by the
formatter even if some caller passes them in ``extra``. Other ``extra`` keys,
flat or under ``extra={"fields": {...}}``, become fields of the line.

The node writes the lines to stdout and, with ``[logging] file`` set, to a file
that it rotates by size itself (``RotatingFileHandler``): a host without
journald or logrotate still gets bounded disk use, at most
``max_bytes * (backup_count + 1)``. Every log file is created 0600: the lines
name tenants and request ids.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Any, TextIO

from node.config import ConfigError, LoggingConfig, resolve
from node.metrics import RequestTimings

__all__ = ["REQUEST_LOGGER", "JsonFormatter", "configure_logging", "configure_node_logging", "log_request"]

#: the logger that carries one line per finished request
REQUEST_LOGGER = "bastion.requests"

# attribute of a LogRecord that carries structured fields (``extra={"fields": {...}}``)
_FIELDS_ATTR = "fields"
# keys that would carry request or response text; never written, whoever passes them
_TEXT_KEYS = frozenset(
    {"prompt", "prompts", "messages", "message_content", "content", "completion", "text", "input", "output"}
)
# what every LogRecord has; anything else on a record came from ``extra=`` and is a field
_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}
# identifiers come from clients (model names, request ids): bound their length in the log
_MAX_ID_CHARS = 200


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object: time, level, logger, message, structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, _FIELDS_ATTR, None)
        extra = {k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRS and k != _FIELDS_ATTR}
        if isinstance(fields, Mapping):
            extra.update(fields)
        for key, value in extra.items():
            if key not in _TEXT_KEYS and key not in out:
                out[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            out["exc_type"] = record.exc_info[0].__name__
            out["exc"] = self.formatException(record.exc_info)
        # ensure_ascii: U+2028 and friends stay escaped, so one record is one line everywhere
        return json.dumps(out, ensure_ascii=True, default=str, separators=(",", ":"))


def configure_logging(
    level: int | str = logging.INFO, *, stream: TextIO | None = None, logger: str = ""
) -> logging.Handler:
    """Send ``logger`` (the root by default) to ``stream`` (stdout) as JSON lines; returns the handler.

    The returned handler lets a caller remove it again.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stdout)
    handler.setFormatter(JsonFormatter())
    target = logging.getLogger(logger)
    target.addHandler(handler)
    target.setLevel(level)
    return handler


class _PrivateRotatingFileHandler(RotatingFileHandler):
    """Size-rotated log file whose every generation is opened 0600, whatever the umask."""

    def _open(self) -> io.TextIOWrapper:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        os.fchmod(fd, 0o600)  # a file that was already there, wider, is narrowed too
        return open(fd, "a", encoding=self.encoding, errors=self.errors)


def configure_node_logging(
    settings: LoggingConfig, config_dir: Path, *, logger: str = "bastion", stream: TextIO | None = None
) -> list[logging.Handler]:
    """The node's logging from ``[logging]``: JSON lines on stdout (or ``stream``) at ``level``, and in
    ``file`` rotated by size when set. ``logger`` stops propagating, so each line is written once.
    Raises ``ConfigError`` when the file cannot be opened; returns the handlers it added."""
    handlers = [configure_logging(settings.level, stream=stream, logger=logger)]
    target = logging.getLogger(logger)
    target.propagate = False
    if settings.file is not None:
        path = resolve(config_dir, settings.file)
        try:
            file_handler = _PrivateRotatingFileHandler(
                path, maxBytes=settings.max_bytes, backupCount=settings.backup_count, encoding="utf-8"
            )
        except OSError as exc:
            for handler in handlers:
                target.removeHandler(handler)
            raise ConfigError(f"[logging] file {path}: cannot open: {exc.strerror}") from None
        file_handler.setFormatter(JsonFormatter())
        target.addHandler(file_handler)
        handlers.append(file_handler)
    return handlers


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def _ident(value: str) -> str:
    return value if len(value) <= _MAX_ID_CHARS else value[:_MAX_ID_CHARS] + "..."


def log_request(
    logger: logging.Logger,
    *,
    request_id: str,
    tenant: str,
    alias: str,
    route: str,
    status: int,
    timings: RequestTimings,
    served_model: str = "",
    endpoint: str = "",
    code: str | None = None,
    stream: bool = False,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    cached_tokens: int = 0,
    route_reason: str | None = None,
) -> None:
    """Write the one line of a finished request (INFO; WARNING for 5xx).

    ``model`` in the line is the alias the client asked for (as in its response),
    ``served_model`` the model that served it (empty when none did).
    """
    fields: dict[str, Any] = {
        "request_id": _ident(request_id),
        "tenant": _ident(tenant),
        "model": _ident(alias),
        "served_model": _ident(served_model),
        "route": route,
        "endpoint": endpoint,
        "status": status,
        "code": code,
        "stream": stream,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "cached_tokens": cached_tokens,
        "queue_wait_ms": _ms(timings.queue_wait_s),
        "ttft_ms": _ms(timings.ttft_s),
        "itl_mean_ms": _ms(timings.itl_mean_s),
        "e2e_ms": _ms(timings.e2e_s),
        "gpu_seconds": round(timings.gpu_seconds, 6),
        "cost": round(timings.cost, 9),
        "route_reason": route_reason,
    }
    level = logging.WARNING if status >= 500 else logging.INFO
    logger.log(level, "request", extra={_FIELDS_ATTR: fields})
