"""``bastion audit ...``: verify, export, prove, check-proof, shred, rotate-kek, vkey.

Exit codes: 0 ok; 1 usage, configuration or I/O error; 2 tampered; 3 truncated
or rolled back (smaller than a signed checkpoint); 4 key problem (wrong or
missing KEK, keys database not this log's, a data key missing); 5 the log is
busy (another process holds the writer lock: run shred/rotate-kek through the
node, or stop it first).

``verify`` never repairs. It records its own run as a ``verify.run`` event
when it can take the writer lock; while the node runs (lock held) it says so
on stderr and the node's own start-up ``verify`` is what gets logged.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from .checkpoint import CheckpointStore, load_signing_key, open_checkpoint, split_notes, vkey
from .config import AuditConfig
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
from .verify import Outcome, VerifyReport, verify_log

__all__ = ["EXIT_BUSY", "EXIT_ERROR", "add_audit_commands", "run_audit_command"]

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

    p = subparsers.add_parser("vkey", help="print the checkpoint verifier key (for auditors)")
    p.set_defaults(audit_action="vkey")


def run_audit_command(args: argparse.Namespace, config: AuditConfig) -> int:
    """Run the parsed audit subcommand; returns the exit code."""
    action = getattr(args, "audit_action", None)
    handlers = {
        "verify": _verify,
        "export": _export,
        "prove": _prove,
        "check-proof": _check_proof,
        "shred": _shred,
        "rotate-kek": _rotate_kek,
        "vkey": _vkey,
    }
    if action not in handlers:
        print(f"unknown audit command {action!r}", file=sys.stderr)
        return EXIT_ERROR
    try:
        return handlers[action](args, config)
    except AuditTamperedError as exc:
        return _fail(exc, Outcome.TAMPERED)
    except AuditRollbackError as exc:
        return _fail(exc, Outcome.ROLLBACK)
    except AuditKeyError as exc:
        return _fail(exc, Outcome.KEY_ERROR)
    except AuditUnavailableError as exc:
        return _fail(exc, EXIT_BUSY)
    except (AuditConfigError, AuditError, OSError, ValueError) as exc:
        return _fail(exc, EXIT_ERROR)


def _fail(exc: BaseException, code: int) -> int:
    print(f"audit: {exc}", file=sys.stderr)
    return int(code)


def _open_keyring(config: AuditConfig, log_id: bytes) -> Keyring:
    return Keyring.open(
        config.resolved_keys_path, load_kek(config), log_id, allow_create=False, max_uses=config.dek_max_uses
    )


def _verify(args: argparse.Namespace, config: AuditConfig) -> int:
    public = load_signing_key(config.signing_key_file).public_key()
    if args.checkpoint:
        external = split_notes(Path(args.checkpoint).read_text(encoding="utf-8"))
    else:
        external = CheckpointStore(config.checkpoint_path).read_all()
    conn = connect_ro(config.path)
    keyring = None
    try:
        if args.decrypt:
            keyring = _open_keyring(config, read_log_id(conn))
        report = verify_log(
            conn, origin=config.origin, public_key=public, external_notes=external, keyring=keyring
        )
    finally:
        conn.close()
        if keyring is not None:
            keyring.close()
    logged = _log_verify_run(config, report)
    if args.json:
        out = msgspec.to_builtins(report)
        out["logged_seq"] = logged
        print(json.dumps(out, indent=2))
    else:
        print(
            f"{report.outcome}: {report.size} records, root {report.root}, "
            f"{report.checkpoints_checked} checkpoints checked"
        )
        for f in report.findings[:50]:
            print(f"  {f.outcome} {'' if f.seq is None else f'seq {f.seq}: '}{f.detail}")
        if report.payloads is not None:
            print("  payloads: " + ", ".join(f"{k} {v}" for k, v in report.payloads.items()))
    return report.exit_code


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
    conn = connect_ro(config.path)
    keyring = None
    try:
        if args.decrypt or args.tenant is not None:
            keyring = _open_keyring(config, read_log_id(conn))
        records = export_records(
            conn,
            keyring=keyring,
            tenant=args.tenant,
            since_ns=None if args.since is None else parse_time(args.since),
            until_ns=None if args.until is None else parse_time(args.until),
            decrypt=args.decrypt,
        )
        write = sys.stdout.write
        for record in records:
            write(json.dumps(record, default=str, ensure_ascii=False) + "\n")
    finally:
        conn.close()
        if keyring is not None:
            keyring.close()
    return 0


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


def _shred(args: argparse.Namespace, config: AuditConfig) -> int:
    async def go() -> list[int]:
        async with await AuditLog.open(config) as log:
            return await log.shred(args.tenant, args.subject)

    seqs = asyncio.run(go())
    print(f"shredded: destruction recorded at seq {', '.join(map(str, seqs))}")
    return 0


def _rotate_kek(args: argparse.Namespace, config: AuditConfig) -> int:
    new = kek_from_file(args.new_kek_file)

    async def go() -> list[int]:
        async with await AuditLog.open(config) as log:
            return await log.rotate_kek(new)

    seqs = asyncio.run(go())
    print(
        f"rewrapped under KEK {new.kek_id} (seq {', '.join(map(str, seqs))}); "
        f"point kek_file at {args.new_kek_file} before the next start"
    )
    return 0
