"""``bastion audit ...``: verify, export, prove, check-proof, shred, rotate-kek, retention, vkey.

A fleet's logs (one per node, each with its own tree, checkpoints and signing
key) are verified and exported together by ``run_audit_command`` given several
named configs: ``verify`` reports each node and the fleet's worst outcome,
``export`` merges the records in time order, each naming its node.

Exit codes: 0 ok; 1 usage, configuration or I/O error; 2 tampered; 3 truncated
or rolled back (smaller than a signed checkpoint); 4 key problem (wrong or
missing KEK, keys database not this log's, a data key missing); 5 the log is
busy (another process holds the writer lock and no running node answered).

``shred``, ``rotate-kek`` and ``retention`` change the keys: given a ``LiveLog``
(a running node's admin channel, supplied by the caller) they run inside that
node, through its writer; without one they open the log here.

``verify`` never repairs. It records its own run as a ``verify.run`` event
when it can take the writer lock; while the node runs (lock held) it says so
on stderr and the node's own start-up ``verify`` is what gets logged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import json
import sqlite3
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import msgspec

from .checkpoint import CheckpointStore, load_signing_key, open_checkpoint, split_notes, vkey
from .config import AuditConfig
from .destroyed import destroyed_keys, retention_cutoff
from .errors import (
    AuditConfigError,
    AuditError,
    AuditKeyError,
    AuditRollbackError,
    AuditTamperedError,
    AuditUnavailableError,
)
from .events import AuditEvent
from .export import export_records, parse_time
from .kek import kek_from_file
from .keystore import Keyring
from .log import AuditLog, load_kek
from .proofs import build_proof, check_proof
from .store import connect_ro, read_checkpoints, read_log_id
from .verify import Outcome, VerifyReport, verify_log, worst

__all__ = [
    "EXIT_BUSY",
    "EXIT_ERROR",
    "LIVE_ACTIONS",
    "LiveLog",
    "add_audit_commands",
    "exit_code_of",
    "run_audit_command",
]

#: the subcommands that run inside a running node when one answers
LIVE_ACTIONS = frozenset({"shred", "rotate-kek", "retention"})


class LiveLog(Protocol):
    """A running node's open log, reached through its admin channel; each call returns the
    sequence numbers of the records it wrote, and raises the audit error the node met."""

    def shred(self, tenant: str, subject: str | None) -> list[int]: ...

    def rotate_kek(self, new_kek_file: str) -> list[int]: ...

    def apply_retention(self) -> list[int]: ...


EXIT_ERROR = 1
EXIT_BUSY = 5


def add_audit_commands(subparsers: Any) -> None:
    """Register the audit subcommands on an argparse subparsers object (dest of the caller's choosing)."""
    p = subparsers.add_parser("verify", help="recompute leaves, chain and tree; check checkpoints")
    p.add_argument("--checkpoint", help="a trusted checkpoint file (default: the configured checkpoint dir)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--decrypt", action="store_true", help="also decrypt every payload (needs the KEK)")
    p.set_defaults(audit_action="verify")

    p = subparsers.add_parser("export", help="JSONL export for auditors, to stdout")
    p.add_argument("--tenant")
    p.add_argument("--since", help="ISO date/datetime (UTC), inclusive")
    p.add_argument("--until", help="ISO date/datetime (UTC), exclusive")
    p.add_argument("--decrypt", action="store_true")
    p.set_defaults(audit_action="export")

    p = subparsers.add_parser("prove", help="C2SP tlog-proof that a record is in a signed checkpoint")
    p.add_argument("--seq", type=int, required=True)
    p.add_argument("--checkpoint", help="prove against this checkpoint file (default: latest exported)")
    p.set_defaults(audit_action="prove")

    p = subparsers.add_parser("check-proof", help="check a proof offline against the log's verifier key")
    p.add_argument("proof", help="the proof file ('-' for stdin)")
    p.add_argument("--vkey", help="verifier key (default: derived from the configured signing key)")
    p.set_defaults(audit_action="check-proof")

    p = subparsers.add_parser("shred", help="crypto-shred a tenant's or a data subject's keys")
    p.add_argument("--tenant", required=True)
    p.add_argument("--subject")
    p.set_defaults(audit_action="shred")

    p = subparsers.add_parser("rotate-kek", help="rewrap every data key under a new key-encryption key")
    p.add_argument("--new-kek-file", required=True)
    p.set_defaults(audit_action="rotate-kek")

    p = subparsers.add_parser("retention", help="expire the months past retention_months now")
    p.set_defaults(audit_action="retention")

    p = subparsers.add_parser("vkey", help="print the checkpoint verifier key (for auditors)")
    p.set_defaults(audit_action="vkey")


#: the subcommands that take several logs (a fleet)
FLEET_ACTIONS = ("verify", "export")


def run_audit_command(
    args: argparse.Namespace, config: AuditConfig | Mapping[str, AuditConfig], live: LiveLog | None = None
) -> int:
    """Run the parsed audit subcommand; returns the exit code. ``live``: see the module docstring.

    ``config`` may name several logs (node name -> config) for ``verify`` and ``export``.
    """
    action = getattr(args, "audit_action", None)
    if not isinstance(config, AuditConfig):
        if len(config) == 1:
            (config,) = config.values()
        elif action not in FLEET_ACTIONS:
            print(f"audit: {action} works on one log; give one --config", file=sys.stderr)
            return EXIT_ERROR
        else:
            fleet = _verify_fleet if action == "verify" else _export_fleet
            try:
                return fleet(args, config)
            except (AuditError, OSError, ValueError) as exc:
                return _fail(exc, exit_code_of(exc))
    handlers = {
        "verify": _verify,
        "export": _export,
        "prove": _prove,
        "check-proof": _check_proof,
        "vkey": _vkey,
    }
    live_handlers = {"shred": _shred, "rotate-kek": _rotate_kek, "retention": _retention}
    if action not in handlers and action not in live_handlers:
        print(f"unknown audit command {action!r}", file=sys.stderr)
        return EXIT_ERROR
    try:
        if action in live_handlers:
            return live_handlers[action](args, config, live)
        return handlers[action](args, config)
    except (AuditError, OSError, ValueError) as exc:
        return _fail(exc, exit_code_of(exc))


def exit_code_of(exc: BaseException) -> int:
    """The exit code this module documents for an error of the audit tree (1 for anything else)."""
    if isinstance(exc, AuditTamperedError):
        return Outcome.TAMPERED
    if isinstance(exc, AuditRollbackError):
        return Outcome.ROLLBACK
    if isinstance(exc, AuditKeyError):
        return Outcome.KEY_ERROR
    if isinstance(exc, AuditUnavailableError):
        return EXIT_BUSY
    return EXIT_ERROR


def _fail(exc: BaseException, code: int) -> int:
    print(f"audit: {exc}", file=sys.stderr)
    return int(code)


def _open_keyring(config: AuditConfig, conn: sqlite3.Connection) -> Keyring:
    """The keys for reading, refusing any key the log says was destroyed (a restored keys database)."""
    log_id = read_log_id(conn)
    keyring = Keyring.open(
        config.resolved_keys_path, load_kek(config), log_id, allow_create=False, max_uses=config.dek_max_uses
    )
    try:
        months = config.retention_months
        cutoff = None if months is None else retention_cutoff(time.time_ns(), months)
        destroyed = destroyed_keys(conn, keyring, log_id, expired_before=cutoff)
        destroyed.check()
        if held := keyring.held(destroyed.kids.keys()):
            print(
                f"audit: the keys database holds {len(held)} data key(s) that the log records as "
                f"destroyed (a restored backup?): treated as shredded; the node deletes them when it "
                f"opens the log: {', '.join(sorted(k.hex() for k in held))}",
                file=sys.stderr,
            )
        keyring.treat_as_destroyed(destroyed.kids.keys())
    except BaseException:
        keyring.close()
        raise
    return keyring


def _verify_one(config: AuditConfig, *, checkpoint: str | None, decrypt: bool) -> VerifyReport:
    public = load_signing_key(config.signing_key_file).public_key()
    if checkpoint:
        external = split_notes(Path(checkpoint).read_text(encoding="utf-8"))
    else:
        external = CheckpointStore(config.checkpoint_path).read_all()
    conn = connect_ro(config.path)
    keyring = None
    try:
        if decrypt:
            keyring = _open_keyring(config, conn)
        return verify_log(
            conn, origin=config.origin, public_key=public, external_notes=external, keyring=keyring
        )
    finally:
        conn.close()
        if keyring is not None:
            keyring.close()


def _verify(args: argparse.Namespace, config: AuditConfig) -> int:
    report = _verify_one(config, checkpoint=args.checkpoint, decrypt=args.decrypt)
    logged = _log_verify_run(config, report)
    if args.json:
        out = msgspec.to_builtins(report)
        out["logged_seq"] = logged
        print(json.dumps(out, indent=2))
    else:
        _print_report(report)
    return report.exit_code


def _print_report(report: VerifyReport, indent: str = "") -> None:
    print(
        f"{indent}{report.outcome}: {report.size} records, root {report.root}, "
        f"{report.checkpoints_checked} checkpoints checked"
    )
    for f in report.findings[:50]:
        print(f"{indent}  {f.outcome} {'' if f.seq is None else f'seq {f.seq}: '}{f.detail}")
    if report.payloads is not None:
        print(f"{indent}  payloads: " + ", ".join(f"{k} {v}" for k, v in report.payloads.items()))


def _verify_fleet(args: argparse.Namespace, configs: Mapping[str, AuditConfig]) -> int:
    """Each node's log on its own (its tree, its checkpoints, its key), then the fleet's worst outcome.

    A node whose log cannot be read at all reports the error and the exit code it would have alone.
    """
    if args.checkpoint:
        raise AuditConfigError("--checkpoint names one log's checkpoint; a fleet uses each config's")
    nodes: dict[str, dict[str, Any]] = {}
    codes: list[int] = []
    for name, config in configs.items():
        try:
            report = _verify_one(config, checkpoint=None, decrypt=args.decrypt)
        except (AuditError, OSError, ValueError) as exc:
            code = exit_code_of(exc)
            codes.append(code)
            nodes[name] = {"outcome": "ERROR", "exit_code": code, "error": str(exc)}
            continue
        codes.append(report.exit_code)
        nodes[name] = msgspec.to_builtins(report) | {"logged_seq": _log_verify_run(config, report)}
    code = worst(codes)
    outcome = Outcome(code).name if code in Outcome._value2member_map_ else "ERROR"
    records = sum(int(n.get("size", 0)) for n in nodes.values())
    if args.json:
        fleet = {"outcome": outcome, "exit_code": code, "records": records, "nodes": nodes}
        print(json.dumps(fleet, indent=2))
        return code
    for name, node in nodes.items():
        if "error" in node:
            print(f"{name}: ERROR: {node['error']}")
        else:
            _print_report(msgspec.convert(node, VerifyReport, strict=False), indent=f"{name}: ")
    print(f"fleet: {outcome}: {len(nodes)} logs, {records} records")
    return code


def _log_verify_run(config: AuditConfig, report: VerifyReport) -> int | None:
    meta = {
        "outcome": report.outcome,
        "size": report.size,
        "root": report.root,
        "findings": len(report.findings),
        "checkpoints_checked": report.checkpoints_checked,
    }

    async def go() -> int:
        async with await AuditLog.open(config) as log:
            return await log.append(AuditEvent(type="verify.run", tenant="", meta=meta))

    try:
        return asyncio.run(go())
    except AuditUnavailableError:
        print("audit: the node holds the writer lock; this verify run is not logged", file=sys.stderr)
    except AuditError as exc:
        print(f"audit: this verify run is not logged: {exc}", file=sys.stderr)
    return None


def _export(args: argparse.Namespace, config: AuditConfig) -> int:
    return _export_fleet(args, {"": config})


def _export_fleet(args: argparse.Namespace, configs: Mapping[str, AuditConfig]) -> int:
    """One log: its records in seq order. Several: every log's records merged by time (then node,
    then seq), each with ``"node"``; each log is read in time order by its own connection."""
    fleet = len(configs) > 1
    with contextlib.ExitStack() as stack:
        streams: list[Iterator[tuple[int, str, int, dict[str, Any]]]] = []
        for name, config in configs.items():
            conn = connect_ro(config.path)
            stack.callback(conn.close)
            keyring = None
            if args.decrypt or args.tenant is not None:
                keyring = _open_keyring(config, conn)
                stack.callback(keyring.close)
            records = export_records(
                conn,
                keyring=keyring,
                tenant=args.tenant,
                since_ns=None if args.since is None else parse_time(args.since),
                until_ns=None if args.until is None else parse_time(args.until),
                decrypt=args.decrypt,
                by_time=fleet,
            )
            streams.append(_keyed(name, records, fleet=fleet))
        write = sys.stdout.write
        for _, _, _, record in heapq.merge(*streams, key=lambda item: item[:3]):
            write(json.dumps(record, default=str, ensure_ascii=False) + "\n")
    return 0


def _keyed(
    node: str, records: Iterator[dict[str, Any]], *, fleet: bool
) -> Iterator[tuple[int, str, int, dict[str, Any]]]:
    for record in records:
        if fleet:
            record = {"node": node} | record
        yield (record["ts_ns"] if fleet else 0), node, record["seq"], record


def _prove(args: argparse.Namespace, config: AuditConfig) -> int:
    public = load_signing_key(config.signing_key_file).public_key()
    conn = connect_ro(config.path)
    try:
        if args.checkpoint:
            notes = split_notes(Path(args.checkpoint).read_text(encoding="utf-8"))
        else:
            notes = CheckpointStore(config.checkpoint_path).read_all() + [
                n for _, n in read_checkpoints(conn)
            ]
        best = None
        for note in notes:
            cp = open_checkpoint(note, config.origin, public)
            if cp.size > args.seq and (best is None or cp.size > best[1].size):
                best = (note, cp)
        if best is None:
            raise AuditError(f"no signed checkpoint covers seq {args.seq} yet")
        sys.stdout.write(build_proof(conn, args.seq, best[0], best[1]))
    finally:
        conn.close()
    return 0


def _vkey_of(config: AuditConfig) -> str:
    return vkey(config.origin, load_signing_key(config.signing_key_file).public_key())


def _check_proof(args: argparse.Namespace, config: AuditConfig) -> int:
    text = sys.stdin.read() if args.proof == "-" else Path(args.proof).read_text(encoding="utf-8")
    checked = check_proof(text, args.vkey or _vkey_of(config))
    print(
        f"OK: record {checked.index} is in the signed tree of size {checked.checkpoint.size} "
        f"({checked.checkpoint.origin})"
    )
    return 0


def _vkey(args: argparse.Namespace, config: AuditConfig) -> int:
    print(_vkey_of(config))
    return 0


def _where(live: LiveLog | None) -> str:
    return "by the running node" if live is not None else "offline"


def _shred(args: argparse.Namespace, config: AuditConfig, live: LiveLog | None) -> int:
    async def go() -> list[int]:
        async with await AuditLog.open(config) as log:
            return await log.shred(args.tenant, args.subject)

    seqs = live.shred(args.tenant, args.subject) if live is not None else asyncio.run(go())
    print(f"shredded {_where(live)}: destruction recorded at seq {', '.join(map(str, seqs))}")
    return 0


def _rotate_kek(args: argparse.Namespace, config: AuditConfig, live: LiveLog | None) -> int:
    new = kek_from_file(args.new_kek_file)  # checked here first: a bad file fails fast, in one place

    async def go() -> list[int]:
        async with await AuditLog.open(config) as log:
            return await log.rotate_kek(new)

    path = str(Path(args.new_kek_file).resolve())
    seqs = live.rotate_kek(path) if live is not None else asyncio.run(go())
    print(
        f"rewrapped {_where(live)} under KEK {new.kek_id} (seq {', '.join(map(str, seqs))}); "
        f"point kek_file at {args.new_kek_file} before the next start"
    )
    return 0


def _retention(args: argparse.Namespace, config: AuditConfig, live: LiveLog | None) -> int:
    if config.retention_months is None:
        raise AuditConfigError("retention_months is not set: nothing expires")

    async def go() -> list[int]:
        async with await AuditLog.open(config) as log:  # opening applied it already: nothing left due
            return await log.apply_retention()

    seqs = live.apply_retention() if live is not None else asyncio.run(go())
    if live is None:
        print("retention applied offline (months expired, if any, are logged as retention.expired)")
    elif seqs:
        print(f"retention applied by the running node: recorded at seq {', '.join(map(str, seqs))}")
    else:
        print("retention applied by the running node: nothing was due")
    return 0
