"""Run ``bench mock`` in a child process (its own event loop and core), for tests and scripts."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["mock_process"]


@contextmanager
def mock_process(*args: str, startup_timeout_s: float = 20.0) -> Iterator[str]:
    """Start ``bench mock --port 0 ARGS...``; yield its base URL; stop it on exit."""
    cmd = [sys.executable, "-m", "bench.cli", "mock", "--port", "0", *args]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + startup_timeout_s
        url = None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if "listening on " in line:
                url = line.strip().rsplit(" ", 1)[1]
                break
        if url is None:
            err = proc.stderr.read() if proc.stderr and proc.poll() is not None else ""
            raise RuntimeError(f"bench mock did not start: {err[-2000:]}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
