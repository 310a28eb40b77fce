"""The command line's side of operating a node's audit log: live when a node runs, offline when not.

``bastion audit shred|rotate-kek|retention`` ask the running node first,
through its admin socket (``node.admin``); when no node answers there they
open the log themselves (and, should a process still hold the log's lock, exit
5: busy). ``bastion backup`` copies the files itself, serving or not
(``node.backup``); ``bastion restore`` needs the node stopped.

Exit codes (as ``bastion audit``'s): 0 ok; 1 configuration, I/O error or not
a backup; 2 the backup was altered (a file differs from its manifest, or its
log does not verify); 3 the backup's log is behind the configured checkpoints
(a rollback); 4 a key problem; 5 busy (a node runs: stop it before a restore).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from audit import AuditConfig, AuditError
from audit.cli import LIVE_ACTIONS, exit_code_of, run_audit_command
from audit.kek import kek_from_file
from audit.log import load_kek
from serving.errors import StartupFailure

from .admin import AdminClient, admin_socket_path
from .backup import PARTS, BackupError, restore, take_backup
from .config import NodeConfig
from .context.operations import check_database, describe_erased, offline_rewrap, offline_shred

__all__ = ["add_operations_commands", "audit_command", "backup_command", "restore_command"]


def add_operations_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], func: Callable[[argparse.Namespace], int]
) -> None:
    backup = sub.add_parser(
        "backup", help="copy the audit log, its keys, budgets and feedback (while serving)"
    )
    backup.add_argument("--config")
    backup.add_argument("--to", required=True, help="a new (or empty) folder")
    restore_p = sub.add_parser("restore", help="verify a backup, then install it (the node stopped)")
    restore_p.add_argument("--config")
    restore_p.add_argument("--from", dest="source", required=True, help="a folder `bastion backup` wrote")
    restore_p.add_argument(
        "--only",
        action="append",
        choices=sorted(PARTS),
        help="restore only this part (repeatable; default: every part the backup holds)",
    )
    backup.set_defaults(func=func)
    restore_p.set_defaults(func=func)


def _fail(exc: BaseException, code: int) -> int:
    print(f"bastion: {exc}", file=sys.stderr)
    return code


def audit_command(args: argparse.Namespace, audit: AuditConfig, config: NodeConfig, config_dir: Path) -> int:
    """``bastion audit ...``: the key-changing subcommands through a running node when one answers;
    with none running, a tenant's shred and a KEK rotation cover the context store here too."""
    live = None
    action = getattr(args, "audit_action", None)
    if action in LIVE_ACTIONS:
        try:
            live = AdminClient.find(admin_socket_path(config, config_dir))
        except (AuditError, OSError) as exc:
            return _fail(exc, exit_code_of(exc))
    offline = live is None and (action == "rotate-kek" or (action == "shred" and args.subject is None))
    if offline:
        try:  # the context store's PostgreSQL must answer before the log's keys change
            check_database(config, config_dir)
        except StartupFailure as exc:
            return _fail(exc, 1)
    code = run_audit_command(args, audit, live)
    if code != 0 or not offline:
        return code
    try:
        kek = load_kek(audit)
        if action == "shred":
            erased = offline_shred(config, config_dir, kek, args.tenant)
            if erased is not None:
                print(f"erased tenant {args.tenant!r} from the context store: {describe_erased(erased)}")
        else:
            rewrapped = offline_rewrap(config, config_dir, kek, kek_from_file(args.new_kek_file))
            if rewrapped is not None:
                print(f"rewrapped {rewrapped} context data key(s)")
    except (AuditError, OSError) as exc:
        return _fail(exc, exit_code_of(exc))
    except StartupFailure as exc:
        return _fail(exc, 1)
    return 0


def backup_command(args: argparse.Namespace, config: NodeConfig, config_dir: Path) -> int:
    if config.audit is None:
        return _fail(Exception("this node's audit log is disabled: nothing to back up"), 1)
    dest = Path(args.to).resolve()
    try:
        manifest = take_backup(config, config_dir, dest)
    except (AuditError, OSError, BackupError) as exc:
        return _fail(exc, exit_code_of(exc))
    print(f"backup written to {dest}: {', '.join(sorted(manifest.files))}")
    return 0


def restore_command(args: argparse.Namespace, config: NodeConfig, config_dir: Path) -> int:
    if config.audit is None:
        return _fail(Exception("this node's audit log is disabled: nothing to restore"), 1)
    src = Path(args.source).resolve()
    try:
        report = restore(config, config_dir, src, set(args.only) if args.only else None)
    except (AuditError, OSError, BackupError) as exc:
        return _fail(exc, exit_code_of(exc))
    plan = report.plan
    print(
        f"restored {', '.join(report.parts)} from {src} (taken {report.manifest.created_at} on "
        f"{report.manifest.host}); the log has {plan.log_size} records"
    )
    refused = plan.refused + report.refused_at_open
    if refused:
        print(
            f"REFUSED {len(refused)} data key(s) the backup held though the log records them destroyed "
            f"(shredded or expired since the backup); they were deleted and key.refused recorded: "
            f"{', '.join(refused)}",
            file=sys.stderr,
        )
    if plan.missing:
        print(
            f"warning: {plan.missing} data key(s) used by the log are not in the restored keys database "
            "(made after the backup): their records stay unreadable",
            file=sys.stderr,
        )
    return 0
