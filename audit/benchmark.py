"""``python -m audit.benchmark``: records/s and per-append latency with synchronous=FULL.

Runs 1, 16 and 256 concurrent writers against a fresh log in a temporary
directory (``--dir`` to put it on the disk you care about) and prints one
line per level. A script, not a timed test: the numbers depend on the disk.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import msgspec

from .checkpoint import generate_signing_key
from .config import AuditConfig
from .events import AuditEvent
from .kek import generate_kek_file
from .log import AuditLog

__all__ = ["main", "run_level"]


async def run_level(directory: Path, writers: int, records: int) -> tuple[float, float, float]:
    """Returns (records/s, p50 ms, p99 ms) for ``writers`` tasks appending ``records`` in total."""
    d = directory / f"w{writers}"
    d.mkdir()
    generate_kek_file(d / "kek")
    generate_signing_key(d / "sig")
    config = msgspec.json.decode(
        msgspec.json.encode(
            {
                "path": str(d / "audit.db"),
                "kek_file": str(d / "kek"),
                "signing_key_file": str(d / "sig"),
                "checkpoint_path": str(d / "cp"),
            }
        ),
        type=AuditConfig,
    )
    content = {"messages": [{"role": "user", "content": "x" * 600}]}
    latencies: list[float] = []
    per_writer = records // writers

    async def one(w: int) -> None:
        for i in range(per_writer):
            # A distinct request id per record, as the node sends: no id-cache hits flatter the numbers.
            meta = {"model": "tiny", "route": "local", "request_id": f"r{w}-{i}", "prompt_tokens": 812}
            event = AuditEvent(
                type="request.start", tenant=f"t{w % 8}", subject=f"s{i % 4}", meta=meta, content=content
            )
            t0 = time.perf_counter()
            await log.append(event)
            latencies.append(time.perf_counter() - t0)

    async with await AuditLog.open(config) as log:
        start = time.perf_counter()
        await asyncio.gather(*(one(w) for w in range(writers)))
        elapsed = time.perf_counter() - start
    qs = statistics.quantiles(latencies, n=100)
    return len(latencies) / elapsed, qs[49] * 1000, qs[98] * 1000


async def _main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        print(f"{'writers':>8} {'records':>8} {'rec/s':>10} {'p50 ms':>8} {'p99 ms':>8}   (synchronous=FULL)")
        for writers in args.writers:
            n = args.records if writers > 1 else min(args.records, 2000)
            rate, p50, p99 = await run_level(Path(tmp), writers, n)
            print(f"{writers:>8} {n:>8} {rate:>10.0f} {p50:>8.2f} {p99:>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 16, 256])
    parser.add_argument("--dir", default=None)
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
