"""What the side-by-side harnesses share: servers as subprocesses, and a node set up by its own commands.

The harnesses (``bench.serve_compare``, ``bench.gateway_overhead``,
``bench.embed_compare``) stay pure HTTP clients: Bastion runs as the installed
``bastion`` command, and its configuration goes through that command too. A
harness writes only the ``node.toml`` settings it needs (the documented file
format, with no keys in it); ``bastion config check`` refuses a wrong one
before a node starts, and ``bastion keys create`` makes the tenant's key (kept
hashed in the node's data folder), so no harness knows how keys are made or
stored.

Peak memory needs ``psutil`` (the ``bench`` extra: ``pip install bastion[bench]``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

__all__ = [
    "ProcessTreeMemory",
    "Server",
    "bastion_command",
    "bastion_from_args",
    "bastion_server",
    "check_config",
    "cpu_seconds_by_role",
    "create_key",
    "free_port",
    "key_in_output",
    "no_audit_config",
    "no_egress_env",
    "running",
    "stop",
    "vllm_server",
    "wait_ready",
]

_KEY = re.compile(r"\b(bst_[A-Za-z0-9_-]+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def no_egress_env(**extra: str) -> dict[str, str]:
    """This process's environment for a server that must not phone home (vLLM's usage stats, hubs)."""
    return dict(os.environ, VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1", HF_HUB_OFFLINE="1", **extra)


def bastion_command() -> list[str]:
    """The installed ``bastion`` command: the one beside this interpreter, else the one on ``PATH``."""
    found = shutil.which("bastion", path=str(Path(sys.executable).parent)) or shutil.which("bastion")
    if found is None:
        raise RuntimeError("no `bastion` command: install the project (pip install -e .)")
    return [found]


def _bastion(*args: str, env: Mapping[str, str] | None = None) -> str:
    done = subprocess.run(
        [*bastion_command(), *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    if done.returncode != 0:
        said = (done.stdout + done.stderr).strip()
        raise RuntimeError(f"bastion {' '.join(args)} exited with {done.returncode}: {said}")
    return done.stdout


def check_config(config: Path, env: Mapping[str, str] | None = None) -> None:
    """``bastion config check`` (in ``env``, the node's environment): raises with its complaints
    if the node would refuse to start."""
    _bastion("config", "check", "--config", str(config), env=env)


def create_key(config: Path, tenant: str) -> str:
    """``bastion keys create``: a new API key for ``tenant`` of the node ``config`` describes."""
    out = _bastion("keys", "create", "--tenant", tenant, "--config", str(config))
    m = _KEY.search(out)
    if m is None:
        raise RuntimeError(f"bastion keys create printed no key: {out!r}")
    return m.group(1)


def key_in_output(line: str) -> str | None:
    """An API key a node printed (dev mode prints its generated key once at start)."""
    m = _KEY.search(line)
    return m.group(1) if m else None


def wait_ready(url: str, proc: subprocess.Popen[bytes], path: str, timeout_s: float) -> None:
    """Until ``url + path`` answers 200; raises if the process exits first or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url} not ready after {timeout_s} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then after a minute SIGKILL to the whole process group; SIGKILL to what is left of
    the group once the server is gone too (a node stopped while its engines start leaves them)."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group outlives its leader while members remain
    except (ProcessLookupError, PermissionError):
        pass  # nothing left
    proc.wait()


@contextmanager
def running(
    cmd: list[str],
    *,
    port: int,
    ready_path: str,
    timeout_s: float,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    log: IO[bytes] | int = subprocess.DEVNULL,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A server subprocess on ``port`` (its own session), ready when ``ready_path`` answers 200;
    stopped on exit. Yields its base URL and the process."""
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, proc, ready_path, timeout_s)
        yield url, proc
    finally:
        stop(proc)


class ProcessTreeMemory:
    """Peak resident memory of a process and all its descendants, sampled every 0.25 s while in use."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        import psutil  # the `bench` extra

        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self._stop.wait(0.25):
            total = 0
            try:
                for p in [root, *root.children(recursive=True)]:
                    total += p.memory_info().rss
            except psutil.Error:
                continue
            self.peak_rss = max(self.peak_rss, total)

    def __enter__(self) -> ProcessTreeMemory:
        self.peak_rss = 0
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


#: vLLM's engine processes (the same in vLLM's server and in Bastion's in-process AsyncLLM)
_ENGINE_NAMES = ("VLLM::EngineCore", "VLLM::Worker")


def cpu_seconds_by_role(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of a server's process tree, by role: ``front`` (the
    server process itself: HTTP, the node's request path), ``engine`` (vLLM's engine core and
    workers) and ``other`` (any other descendant, e.g. the audit log's writer). Differences of two
    readings say where a load's CPU went."""
    import psutil  # the `bench` extra

    roles = {"front": 0.0, "engine": 0.0, "other": 0.0}
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return roles
    for p in tree:
        try:
            t = p.cpu_times()
            name = p.name()
        except psutil.Error:
            continue
        role = "front" if p is root else "engine" if name.startswith(_ENGINE_NAMES) else "other"
        roles[role] += t.user + t.system
    return roles


@dataclass
class Server:
    """A server under test: its URL and key, its process, and the path that says it is ready."""

    name: str
    url: str
    api_key: str | None
    proc: subprocess.Popen[bytes]
    peak_rss: int = 0
    #: for the in-process engine (no URL): its stdout, one JSON result line per ``run SEED``
    lines: Iterator[bytes] | None = None
    #: what says the server is ready (its health probe passed)
    ready_path: str = "/health"


@contextmanager
def vllm_server(
    model_dir: Path, model: str, engine_args: list[str], *, log_path: Path, start_timeout_s: float
) -> Iterator[Server]:
    """vLLM's own OpenAI server on ``model_dir`` (safetensors only), with ``engine_args`` added."""
    port = free_port()
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir), "--served-model-name", model,
        "--host", "127.0.0.1", "--port", str(port),
        "--load-format", "safetensors", "--disable-uvicorn-access-log", *engine_args,
    ]  # fmt: skip
    with (
        open(log_path, "wb") as log,
        running(
            cmd, port=port, ready_path="/health", timeout_s=start_timeout_s, env=no_egress_env(), log=log
        ) as (url, proc),
    ):
        yield Server("vllm", url, None, proc)


def no_audit_config(
    work: Path, *, models_file: Path, data_dir: Path, model: str, port: int
) -> tuple[Path, str]:
    """A node.toml like dev mode's but with the audit log off, checked by ``bastion config check``,
    and a key for its tenant from ``bastion keys create``. The node gets its own data folder (its
    API key goes there, not into dev mode's) holding ``data_dir``'s models."""
    data = work / "data"
    data.mkdir(mode=0o700)
    (data / "models").symlink_to(data_dir.resolve() / "models")
    config = work / "node.toml"
    config.write_text(
        f"models_file = {json.dumps(str(models_file.resolve()))}\n"
        f"data_dir = {json.dumps(str(data))}\n"
        f"serve = [{json.dumps(model)}]\n"
        f'[server]\nhost = "127.0.0.1"\nport = {port}\n'
        f'[[tenants]]\nname = "bench"\nmodels = [{json.dumps(model)}]\nresidency = "local-only"\n'
        "[audit]\nenabled = false\n"
    )
    check_config(config)
    return config, create_key(config, "bench")


@contextmanager
def bastion_server(
    *,
    data_dir: Path,
    models_file: Path,
    model: str,
    log_dir: Path,
    start_timeout_s: float,
    audit: bool = True,
) -> Iterator[Server]:
    """``bastion serve``: dev mode on ``data_dir`` and ``models_file`` (audit log on; it prints its
    generated key), or with ``audit=False`` the node ``no_audit_config`` describes, serving
    ``model`` alone."""
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="bastion-bench-"))
    env = dict(
        os.environ, BASTION_DATA_DIR=str(data_dir.resolve()), BASTION_MODELS_FILE=str(models_file.resolve())
    )
    env.pop("BASTION_CONFIG", None)
    cmd = [*bastion_command(), "serve", "--port", str(port)]
    key: list[str] = []
    if not audit:
        config, plain_key = no_audit_config(
            work, models_file=models_file, data_dir=data_dir, model=model, port=port
        )
        cmd += ["--config", str(config)]
        key.append(plain_key)
    proc = subprocess.Popen(cmd, env=env, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    log = open(log_dir / f"bastion{'' if audit else '-noaudit'}.log", "wb")

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            if not key and (found := key_in_output(line.decode(errors="replace"))):
                key.append(found)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, proc, "/readyz", start_timeout_s)
        yield Server("bastion" if audit else "bastion-noaudit", url, key[0] if key else None, proc,
                     ready_path="/readyz")  # fmt: skip
    finally:
        stop(proc)
        reader.join(timeout=10)
        log.close()


def bastion_from_args(args: argparse.Namespace, *, audit: bool = True) -> AbstractContextManager[Server]:
    """``bastion_server`` from a harness's options (``--data-dir``, ``--models-file``, ``--model``,
    ``--log-dir``, ``--start-timeout-s``)."""
    return bastion_server(
        data_dir=Path(args.data_dir),
        models_file=Path(args.models_file),
        model=args.model,
        log_dir=Path(args.log_dir),
        start_timeout_s=args.start_timeout_s,
        audit=audit,
    )
