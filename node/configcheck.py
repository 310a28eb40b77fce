"""``bastion config check``: what ``serve`` checks before any engine, every problem at once.

The same functions as ``serve`` (``node.startup.check_node``), collecting every
problem instead of stopping at the first: one line per problem, prefixed with
its class (``config``, ``keys``, ``file-mode``, ``pin-mismatch``, ``port``), and
the first problem's exit status (``serve``'s codes; 0 when there is none).
Nothing is created or started; it takes seconds.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from .config import ConfigError, load_config
from .startup import ExitCode, StartupError, check_node

__all__ = ["config_check_command"]


def config_check_command(path: Path, *, out: TextIO = sys.stdout) -> int:
    """Print one line per problem of the config at ``path``; the exit status of the first."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        problems = [StartupError(ExitCode.CONFIG, str(exc))]
    else:
        _, problems = check_node(config, path.resolve().parent)
    lines = [(p.code, line) for p in problems for line in p.message.splitlines()]
    for code, line in lines:
        print(f"{code.name.lower().replace('_', '-')}: {line}", file=out)
    if lines:
        count = "1 problem" if len(lines) == 1 else f"{len(lines)} problems"
        print(f"{path}: {count}; `bastion serve` would refuse to start", file=out)
        return int(problems[0].code)
    print(f"{path}: ok (models, names, credentials, audit keys, file modes, model files, port)", file=out)
    return int(ExitCode.OK)
