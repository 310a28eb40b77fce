from __future__ import annotations

import argparse
import asyncio
import contextlib
import io

from audit import AuditConfig, AuditEvent, AuditLog
from audit.cli import add_audit_commands, run_audit_command


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_audit_commands(p.add_subparsers(dest="audit_cmd", required=True))
    return p


def cli(config: AuditConfig, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_audit_command(parser().parse_args(list(argv)), config)
    return code, out.getvalue(), err.getvalue()


def event(i: int, tenant: str = "acme", subject: str | None = "alice") -> AuditEvent:
    return AuditEvent(
        type="request.start",
        tenant=tenant,
        subject=subject,
        meta={"request_id": f"req-{i}", "model": "tiny", "i": i},
        content={"prompt": f"secret prompt {i}"},
    )


async def populate(config: AuditConfig, n: int, **kw: object) -> list[int]:
    async with await AuditLog.open(config) as log:
        return list(await asyncio.gather(*(log.append(event(i, **kw)) for i in range(n))))  # type: ignore[arg-type]


def populate_sync(config: AuditConfig, n: int, **kw: object) -> list[int]:
    return asyncio.run(populate(config, n, **kw))
