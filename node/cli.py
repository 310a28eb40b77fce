"""The ``bastion`` command line.

``serve`` (dev mode without a config), ``init`` (``node.init``), ``config check``
(``node.configcheck``), ``reload`` (``node.reloadcli``), ``models`` (build-dev,
verify, list, pull, record-canaries), ``keys`` (create, revoke, list:
``node.keys``), ``audit`` (verify, export, prove, shred, ...), ``backup``,
``restore``, ``canary run``, ``status`` and ``context eval`` (``node.context.cli``).
Exit codes: ``serve``'s are
``node.startup.ExitCode`` (0 ok, 2 bad usage or config, 3 a model fails its
pins, ...); other subcommands use 2 and 3 alike and document the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from serving.egress import apply_no_egress_env

if TYPE_CHECKING:
    from .config import NodeConfig

__all__ = ["main"]

_log = logging.getLogger("bastion.node")


def _find_config(explicit: str | None) -> Path | None:
    if explicit:
        return Path(explicit)
    if env := os.environ.get("BASTION_CONFIG"):
        return Path(env)
    local = Path("node.toml")
    return local if local.exists() else None


def _fail(message: str, code: int = 2) -> int:
    print(f"bastion: {message}", file=sys.stderr)
    return code


# -- serve -------------------------------------------------------------------------------------------


def _cmd_serve(args: argparse.Namespace) -> int:
    apply_no_egress_env()
    from audit import AuditError

    from .config import ConfigError, load_config
    from .devmode import banner, default_data_dir, default_models_file, dev_config
    from .startup import ExitCode

    path = _find_config(args.config)
    key_banner: str | None = None
    try:
        if path is None:
            data_dir = Path(args.data_dir).resolve() if args.data_dir else default_data_dir()
            from serving.model_commands import ensure_model
            from serving.models import load_models_file

            from .devmode import DEV_MODELS

            models_file = default_models_file()
            setup = dev_config(  # refuses a non-loopback host before anything is built
                data_dir=data_dir,
                models_file=models_file,
                host=args.host or "127.0.0.1",
                port=args.port or 8000,
            )
            models = load_models_file(models_file)
            for name in DEV_MODELS:
                ensure_model(models.get(name), models_file, data_dir)
            config, config_dir, key_banner = setup.config, Path.cwd(), banner(setup)
        else:
            config = load_config(path)
            config_dir = path.resolve().parent
            if args.host or args.port is not None:
                import msgspec

                server = msgspec.structs.replace(
                    config.server, host=args.host or config.server.host, port=args.port or config.server.port
                )
                config = msgspec.structs.replace(config, server=server)
    except (ConfigError, ValueError) as exc:
        return _fail(str(exc))
    except AuditError as exc:  # dev mode's key folder
        return _fail(f"refusing to serve: {exc}", ExitCode.FILE_MODE)
    return _run_async(_serve(config, config_dir, key_banner, path))


async def _serve(config: object, config_dir: Path, key_banner: str | None, config_file: Path | None) -> int:
    _NodeServer = _node_server_class()
    from .app import create_app
    from .assembly import build_node
    from .config import ConfigError, NodeConfig
    from .drain import Drain
    from .logs import configure_node_logging
    from .server import uvicorn_config
    from .startup import ExitCode, StartupError, listen_socket, preflight

    assert isinstance(config, NodeConfig)
    # our records as JSON lines on their own handlers ([logging]); vLLM and uvicorn keep theirs
    try:
        configure_node_logging(config.logging, config_dir)
    except ConfigError as exc:
        return _fail(str(exc))
    async with AsyncExitStack() as stack:
        try:
            preflight(config, config_dir)  # all that needs no engine, in seconds
        except StartupError as exc:
            return _fail(f"refusing to serve: {exc.message}", exc.code)
        drain = Drain(timeout_s=config.server.drain_timeout_s)  # SIGTERM's drain (node.drain)
        try:
            # engines (pins verified), audit log, ...; with a config file: SIGHUP and
            # `bastion reload` re-read it (node.reload)
            node = await stack.enter_async_context(
                build_node(config, config_dir=config_dir, config_file=config_file, drain=drain)
            )
        except StartupError as exc:  # an engine or the audit log: the message is the whole line
            return _fail(exc.message, exc.code)
        except Exception:
            _log.exception("the node failed to start")
            return _fail("the node failed to start (see the error above)", ExitCode.ERROR)
        try:
            # bound only now: a socket open while vLLM forks its engine process would outlive
            # this one in it (preflight checked that the port was free)
            sock = stack.enter_context(listen_socket(config.server.host, config.server.port))
        except StartupError as exc:
            return _fail(exc.message, exc.code)
        host, port = sock.getsockname()[:2]
        server = _NodeServer(uvicorn_config(create_app(node), config.server, port=port))
        server.drain = drain
        server.announcement = key_banner or f"bastion: serving on http://{host}:{port}"
        try:
            await server.serve(sockets=[sock])
        except SystemExit:  # uvicorn's own start-up failure: logged above
            return _fail("the node failed to start (see the error above)", ExitCode.ERROR)
        return ExitCode.OK if server.started else ExitCode.ERROR


def _node_server_class() -> type:
    import uvicorn

    from .drain import Drain

    class NodeServer(uvicorn.Server):
        """Uvicorn re-raises a caught SIGTERM/SIGINT once HTTP has drained, which would kill
        the process before the engines and the audit log are closed. The node takes the
        signal as its cue to shut down in order instead, and exits 0. ``announcement`` is
        printed once the sockets listen.

        The first SIGTERM or SIGINT starts ``drain`` (``node.drain``): the node turns
        unready and refuses new requests at once, and uvicorn is told to stop only once
        the generations in flight have ended or been cut at the drain timeout. A second
        signal cuts them at once. Either way the node (``build_node``'s context: the
        engines, the audit log, ...) then closes in order."""

        announcement = ""
        drain: Drain | None = None
        _loop: asyncio.AbstractEventLoop | None = None
        _draining: asyncio.Task[None] | None = None

        async def serve(self, sockets: list[socket.socket] | None = None) -> None:
            self._loop = asyncio.get_running_loop()
            await super().serve(sockets)

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            # a signal handler: only flags here, the rest on the event loop
            drain, loop = self.drain, self._loop
            if drain is None or loop is None or not self.started:
                self.should_exit = True  # before serving: nothing to drain
                return
            if drain.draining:
                loop.call_soon_threadsafe(self._stop_now)
                return
            drain.begin()  # /readyz and new requests answer 503 from now on
            loop.call_soon_threadsafe(self._start_drain)

        def _start_drain(self) -> None:
            self._draining = asyncio.ensure_future(self._drain_then_exit())

        async def _drain_then_exit(self) -> None:
            assert self.drain is not None
            _log.warning("draining: waiting up to %g s for requests in flight", self.drain.timeout_s)
            await self.drain.wait()
            if cut := self.drain.cut():
                _log.warning("drain timeout passed: %d request(s) in flight were cut", cut)
            self.should_exit = True

        def _stop_now(self) -> None:
            assert self.drain is not None
            if self._draining is not None:
                self._draining.cancel()
            if cut := self.drain.cut():
                _log.warning("a second signal: %d request(s) in flight were cut", cut)
            self.should_exit = True

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started and self.announcement:
                print(self.announcement, flush=True)

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            inner = super().capture_signals()
            inner.__enter__()
            try:
                yield
            finally:
                self._captured_signals.clear()
                inner.__exit__(None, None, None)

    return NodeServer


def _run_async(coro: object) -> int:
    try:
        import uvloop

        return int(uvloop.run(coro))  # type: ignore[arg-type]
    except ImportError:
        return int(asyncio.run(coro))  # type: ignore[arg-type]
    except KeyboardInterrupt:
        return 130


# -- models ------------------------------------------------------------------------------------------


def _models_context(args: argparse.Namespace) -> tuple[Path, Path]:
    """(models file, data dir) from --config, or the repo's models.toml and ./data."""
    from .config import load_config, resolve
    from .devmode import default_models_file

    path = _find_config(getattr(args, "config", None))
    if path is None:
        data = Path(args.data_dir).resolve() if getattr(args, "data_dir", None) else Path("data").resolve()
        return default_models_file(), data
    config = load_config(path)
    base = path.resolve().parent
    return resolve(base, config.models_file), resolve(base, config.data_dir)


def _cmd_models(args: argparse.Namespace) -> int:
    from serving import model_commands as mc

    from .config import ConfigError

    try:
        models_file, data_dir = _models_context(args)
    except ConfigError as exc:
        return _fail(str(exc))
    if args.models_cmd == "build-dev":
        for name, out in mc.build_dev(data_dir, models_file).items():
            print(f"built the dev model {name!r} into {out} (verified against its pins)")
        return 0
    if args.models_cmd == "verify":
        results = [r for r in mc.verify_all(models_file, data_dir) if not args.names or r.name in args.names]
        for r in results:
            print(f"{r.status:8} {r.name}  {r.model_dir}" + (f"\n         {r.detail}" if r.detail else ""))
        return 0 if all(r.ok for r in results) else 3
    if args.models_cmd == "list":
        for m in mc.describe_models(models_file, data_dir):
            where = "on disk" if m.on_disk else "not on disk"
            print(
                f"{m.name}\n  source   {m.source}\n  revision {m.revision}\n  files    {m.files} pinned, "
                f"{where} at {m.model_dir}\n  engine   dtype={m.dtype} max_model_len={m.max_model_len}"
            )
        return 0
    if args.models_cmd == "pull":
        from serving.errors import PinMismatchError
        from serving.hub import HubUnavailableError

        try:
            out = mc.pull(args.name, models_file, data_dir)
        except KeyError:
            return _fail(f"no model named {args.name!r} in {models_file}")
        except (ValueError, HubUnavailableError) as exc:
            return _fail(str(exc))
        except PinMismatchError as exc:
            return _fail(f"downloaded files fail their pins: {exc}", 3)
        print(f"pulled and verified {args.name} into {out}")
        return 0
    if args.models_cmd == "record-canaries":
        apply_no_egress_env()
        from .canaries import record_canaries_command

        return _run_async(record_canaries_command(models_file, data_dir, args.name))
    return _fail("unknown models command")


# -- keys ------------------------------------------------------------------------------------------


def _cmd_keys(args: argparse.Namespace) -> int:
    from .keys import keys_command

    return keys_command(args, _find_config(args.config))


def _cmd_init(args: argparse.Namespace) -> int:
    from .devmode import default_models_file
    from .init import init_command

    return init_command(
        Path(args.dir),
        tenant=args.tenant,
        model=args.model,
        port=args.port,
        data_dir=args.data_dir,
        shipped_models=default_models_file(),
    )


def _cmd_reload(args: argparse.Namespace) -> int:
    from .reloadcli import reload_command

    path = _find_config(args.config)
    if path is None:
        return _fail("no config: pass --config node.toml (or set BASTION_CONFIG)")
    return reload_command(path)


# -- config check ----------------------------------------------------------------------------------


def _cmd_config(args: argparse.Namespace) -> int:
    from .configcheck import config_check_command

    path = _find_config(args.config)
    if path is None:
        return _fail("no config: pass --config node.toml (or set BASTION_CONFIG)")
    return config_check_command(path)


# -- audit -----------------------------------------------------------------------------------------


def _node_config(args: argparse.Namespace) -> tuple[NodeConfig, Path]:
    """The config (dev mode's without one) and its folder; ConfigError or ValueError when invalid."""
    from .config import load_config
    from .devmode import default_data_dir, default_models_file, dev_config

    explicit = args.config
    if isinstance(explicit, list):  # `audit --config`, repeatable for a fleet: one here, maybe NAME=PATH
        explicit = explicit[0].partition("=")[2] or explicit[0] if explicit else None
    path = _find_config(explicit)
    if path is None:
        setup = dev_config(
            data_dir=default_data_dir(), models_file=default_models_file(), host="127.0.0.1", port=8000
        )
        return setup.config, Path.cwd()
    return load_config(path), path.resolve().parent


def _cmd_audit(args: argparse.Namespace) -> int:
    from audit import AuditConfig
    from audit.cli import run_audit_command

    from .config import ConfigError, load_config
    from .opscli import audit_command

    given: list[str] = args.config or []
    if len(given) > 1:  # a fleet: one log per node, named NAME=PATH or by its path
        configs: dict[str, AuditConfig] = {}
        for item in given:
            name, sep, where = item.partition("=")
            name, where = (name, where) if sep else (item, item)
            if name in configs:
                return _fail(f"--config {name!r} is given twice")
            try:
                one = load_config(Path(where)).audit
            except (ConfigError, ValueError) as exc:
                return _fail(str(exc))
            if one is None:
                return _fail(f"{where}: this node's audit log is disabled ([audit] enabled = false)")
            configs[name] = one
        return run_audit_command(args, configs)
    try:
        config, config_dir = _node_config(args)
    except (ConfigError, ValueError) as exc:
        return _fail(str(exc))
    if config.audit is None:
        return _fail("this node's audit log is disabled ([audit] enabled = false)")
    return audit_command(args, config.audit, config, config_dir)


def _cmd_operations(args: argparse.Namespace) -> int:
    from .config import ConfigError
    from .opscli import backup_command, restore_command

    try:
        config, config_dir = _node_config(args)
    except (ConfigError, ValueError) as exc:
        return _fail(str(exc))
    command = backup_command if args.command == "backup" else restore_command
    return command(args, config, config_dir)


# -- status and canary -------------------------------------------------------------------------------


def _cmd_status(args: argparse.Namespace) -> int:
    from .status import status_command

    return status_command(args.url, token=os.environ.get(args.token_env) if args.token_env else None)


def _cmd_engine_bench(args: argparse.Namespace) -> int:
    from serving.engine_bench import run_engine_bench

    return run_engine_bench(args)


def _cmd_canary(args: argparse.Namespace) -> int:
    apply_no_egress_env()
    from .canaries import run_canaries_command

    return _run_async(run_canaries_command(_find_config(args.config), args.names or None))


def _cmd_context(args: argparse.Namespace) -> int:
    apply_no_egress_env()
    from .context.cli import run_context_command

    kek, config = None, None
    if args.config:
        from audit import AuditError
        from audit.log import load_kek

        from .config import ConfigError, load_config

        try:
            config = load_config(Path(args.config))
            if config.audit is not None:
                kek = load_kek(config.audit)
            if args.reranker is None and config.context is not None:
                args.reranker = config.context.reranker
        except (ConfigError, AuditError) as exc:
            return _fail(str(exc))
    models_file, data_dir = _models_context(args)
    where = None if config is None else (config, Path(args.config).resolve().parent)
    return run_context_command(args, models_file, data_dir, kek, where)


def _add_models_location(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: an option given before the subcommand is not reset by the subcommand's default
    parser.add_argument("--config", default=argparse.SUPPRESS, help="node.toml (its models_file, data_dir)")
    parser.add_argument("--data-dir", default=argparse.SUPPRESS, help="without a config: the data folder")


def build_parser() -> argparse.ArgumentParser:
    from audit.cli import add_audit_commands

    parser = argparse.ArgumentParser(prog="bastion", description="Local-first, residency-safe LLM node")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the node (dev mode without a config)")
    serve.add_argument("--config", help="node.toml (default: $BASTION_CONFIG, ./node.toml, else dev mode)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--data-dir", help="dev mode's data folder (default: ./data)")
    serve.set_defaults(func=_cmd_serve)

    models = sub.add_parser("models", help="pinned models")
    _add_models_location(models)
    msub = models.add_subparsers(dest="models_cmd", required=True)
    where = argparse.ArgumentParser(add_help=False)  # the same options after the subcommand
    _add_models_location(where)
    msub.add_parser("build-dev", parents=[where], help="build the tiny dev model deterministically")
    verify = msub.add_parser("verify", parents=[where], help="check every model on disk against its pins")
    verify.add_argument("names", nargs="*")
    msub.add_parser("list", parents=[where], help="show the pinned models")
    pull = msub.add_parser(
        "pull", parents=[where], help="download a model at its pinned revision and verify it"
    )
    pull.add_argument("name")
    rec = msub.add_parser(
        "record-canaries", parents=[where], help="record a model's drift canaries into the models file"
    )
    rec.add_argument("name")
    models.set_defaults(func=_cmd_models)

    from .keys import add_keys_commands

    keys = sub.add_parser("keys", help="tenants' API keys (create, revoke, list)")
    add_keys_commands(keys)
    keys.set_defaults(func=_cmd_keys)

    init = sub.add_parser("init", help="write a production node.toml, its keys and a first API key")
    init.add_argument("--dir", default=".", help="the folder for node.toml and its keys (default: .)")
    init.add_argument("--tenant", default="default", help="the first tenant's name (default: default)")
    init.add_argument("--model", help="the model it may use (default: the first in models.toml)")
    init.add_argument("--port", type=int, default=8000)
    init.add_argument(
        "--data-dir",
        default="data",
        help="the node's data folder, relative to --dir or absolute (default: data)",
    )
    init.set_defaults(func=_cmd_init)

    reload = sub.add_parser("reload", help="the running node re-reads node.toml and its keys (no restart)")
    reload.add_argument("--config", help="node.toml (default: $BASTION_CONFIG, ./node.toml)")
    reload.set_defaults(func=_cmd_reload)

    config_cmd = sub.add_parser("config", help="node.toml")
    config_sub = config_cmd.add_subparsers(dest="config_cmd", required=True)
    check = config_sub.add_parser("check", help="every problem `serve` would refuse to start for, in seconds")
    check.add_argument("--config", help="node.toml (default: $BASTION_CONFIG, ./node.toml)")
    config_cmd.set_defaults(func=_cmd_config)

    audit = sub.add_parser("audit", help="the audit log")
    audit.add_argument(
        "--config",
        action="append",
        help="node.toml; repeat it (as NAME=PATH) to verify or export a fleet's logs together",
    )
    add_audit_commands(audit.add_subparsers(dest="audit_cmd", required=True))
    audit.set_defaults(func=_cmd_audit)

    from .opscli import add_operations_commands

    add_operations_commands(sub, _cmd_operations)

    status = sub.add_parser("status", help="one-screen view of a running node")
    status.add_argument("--url", default="http://127.0.0.1:8000")
    status.add_argument("--token-env", help="environment variable with the metrics token")
    status.set_defaults(func=_cmd_status)

    from .context.cli import add_context_commands

    add_context_commands(sub)
    sub.choices["context"].set_defaults(func=_cmd_context)

    canary = sub.add_parser("canary", help="drift canaries")
    csub = canary.add_subparsers(dest="canary_cmd", required=True)
    crun = csub.add_parser("run", help="replay canaries against local models and providers")
    crun.add_argument("names", nargs="*")
    canary.add_argument("--config")
    canary.set_defaults(func=_cmd_canary)

    from serving.engine_bench import add_engine_bench_arguments

    engine_bench = sub.add_parser(
        "engine-bench", help="the local engine's streaming ceiling, no HTTP (run by bench.serve_compare)"
    )
    add_engine_bench_arguments(engine_bench)
    engine_bench.set_defaults(func=_cmd_engine_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
