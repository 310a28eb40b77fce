"""Offering load: closed-loop workers or an open-loop schedule, optionally capped.

``run_load`` is the library entry point: it sends the requests, streams each
finished record to JSONL, then summarises from that file.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from bench.client import ConnectionPool, StreamClient
from bench.config import LoadConfig
from bench.metrics import Window, summarize
from bench.prom import PrometheusScraper
from bench.records import RecordReader, RecordWriter, RequestRecord
from bench.result import ClientCeiling, RunResult, load_cached_ceiling, run_meta
from bench.schedule import arrival_offsets_ns, schedule_digest
from bench.timer import DeadlineTimer
from bench.tokens import load_token_counter
from bench.workload import Workload

__all__ = ["run_load"]

_LEAD_NS = 50_000_000


class _Live:
    """Counters for the progress line."""

    def __init__(self) -> None:
        self.sent = 0
        self.done = 0
        self.errors = 0
        self.max_lag_ns = 0
        self.events = 0


class _Run:
    def __init__(self, cfg: LoadConfig, records: Path, ceiling: ClientCeiling | None) -> None:
        self.cfg = cfg
        self.records = records
        self.ceiling = ceiling
        self.workload = Workload(cfg)
        self.pool = ConnectionPool(cfg.url)
        headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else None
        path = "/v1/chat/completions" if cfg.endpoint == "chat" else "/v1/completions"
        self.client = StreamClient(self.pool, path, headers)
        self.counter: Callable[[str], int] | None = (
            load_token_counter(cfg.tokenizer) if cfg.tokenizer else None
        )
        self.live = _Live()
        self.writer = RecordWriter(records, secrets=(cfg.api_key or "",))
        self.digest: str | None = None
        self.t0 = 0
        self.timer = DeadlineTimer()

    def _on_send(self, rec: RequestRecord) -> None:
        self.live.sent += 1

    async def _one(self, rec: RequestRecord, body: bytes, sem: asyncio.Semaphore | None) -> None:
        text: list[str] | None = [] if self.counter is not None else None
        if sem is not None:
            async with sem:
                await self.client.send(rec, body, self.cfg.timeout_s, text, self._on_send)
        else:
            await self.client.send(rec, body, self.cfg.timeout_s, text, self._on_send)
        if self.counter is not None and text is not None and rec.ok:
            rec.client_tokens = self.counter("".join(text))
        self.writer.write(rec)
        live = self.live
        live.done += 1
        live.events += len(rec.event_ns)
        if not rec.ok:
            live.errors += 1

    async def open_loop(self) -> None:
        cfg = self.cfg
        assert cfg.rate is not None
        n = cfg.num_requests or max(1, round(cfg.rate * (cfg.duration_s or 0)))
        offsets = arrival_offsets_ns(n, cfg.rate, cfg.arrival, cfg.burstiness, cfg.seed)
        self.digest = schedule_digest(offsets)
        sem = asyncio.Semaphore(cfg.concurrency) if cfg.concurrency else None
        tasks: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()
        self.t0 = t0 = time.monotonic_ns() + _LEAD_NS
        for i, off in enumerate(offsets):
            body, req_tokens = self.workload.request(i)
            t_sched = t0 + off
            await self.timer.sleep_until(t_sched)
            t_disp = time.monotonic_ns()
            self.live.max_lag_ns = max(self.live.max_lag_ns, t_disp - t_sched)
            rec = RequestRecord(index=i, t_sched=t_sched, t_dispatch=t_disp, requested_tokens=req_tokens)
            task = loop.create_task(self._one(rec, body, sem))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)

    async def closed_loop(self) -> None:
        cfg = self.cfg
        assert cfg.concurrency is not None
        self.t0 = t0 = time.monotonic_ns() + _LEAD_NS
        t_end = t0 + int(cfg.duration_s * 1e9) if cfg.duration_s else None
        next_index = iter(range(cfg.num_requests or sys.maxsize))

        async def worker() -> None:
            await self.timer.sleep_until(t0)
            for i in next_index:
                body, req_tokens = self.workload.request(i)
                now = time.monotonic_ns()
                if t_end is not None and now >= t_end:
                    return
                rec = RequestRecord(index=i, t_sched=now, t_dispatch=now, requested_tokens=req_tokens)
                await self._one(rec, body, None)

        await asyncio.gather(*(worker() for _ in range(cfg.concurrency)))

    async def progress(self, out: TextIO, stop: asyncio.Event) -> None:
        cfg = self.cfg
        last = 0
        cpu0, wall0 = time.process_time(), time.monotonic()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            el = max(1e-9, (time.monotonic_ns() - self.t0) / 1e9)
            lv = self.live
            cpu1, wall1 = time.process_time(), time.monotonic()
            cpu = (cpu1 - cpu0) / max(1e-9, wall1 - wall0)
            cpu0, wall0 = cpu1, wall1
            target = f"{cfg.rate:.1f}" if cfg.rate else "closed"
            out.write(
                f"[{el:7.1f}s] sent {lv.sent} done {lv.done} err {lv.errors} in-flight {lv.sent - lv.done} "
                f"rate {(lv.sent - last):.0f}/s (target {target}) dispatch-lag max "
                f"{lv.max_lag_ns / 1e6:.2f} ms client CPU {cpu:.0%}\n"
            )
            out.flush()
            last = lv.sent
            lv.max_lag_ns = 0


async def run_load(
    cfg: LoadConfig,
    *,
    ceiling: ClientCeiling | None = None,
    records_path: Path | None = None,
    progress: TextIO | None = None,
) -> RunResult:
    """Run one load level against ``cfg.url`` and summarise it.

    Records go to ``records_path`` (else ``cfg.records_path``, else a temp file),
    one JSON line per request, written as requests finish.
    """
    path = records_path or (Path(cfg.records_path) if cfg.records_path else None)
    if path is None:
        fd, name = tempfile.mkstemp(prefix="bench-", suffix=".jsonl")
        import os

        os.close(fd)
        path = Path(name)
    ceiling = ceiling or load_cached_ceiling()
    run = _Run(cfg, path, ceiling)
    stop = asyncio.Event()
    side: list[asyncio.Task[None]] = []
    scraper = PrometheusScraper(cfg.prometheus) if cfg.prometheus else None
    if scraper is not None:
        side.append(asyncio.get_running_loop().create_task(scraper.run(stop)))
    out = progress if progress is not None else (sys.stderr if cfg.progress else None)
    if out is not None:
        side.append(asyncio.get_running_loop().create_task(run.progress(out, stop)))
    try:
        with contextlib.suppress(OSError):
            await run.pool.warm(min(cfg.concurrency or 64, cfg.num_requests or 64, 1024))
        if cfg.closed_loop:
            await run.closed_loop()
        else:
            await run.open_loop()
    finally:
        stop.set()
        for t in side:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        run.writer.close()
        run.pool.close()
        run.timer.close()
    reader = RecordReader(path)
    t_end = max((r.t_close for r in reader), default=run.t0)
    window = Window(start=run.t0 + int(cfg.warmup_s * 1e9), end=t_end - int(cfg.cooldown_s * 1e9))
    if window.end <= window.start:
        raise ValueError("warm-up plus cool-down leave no measured window")
    summary = summarize(reader, window, dict(cfg.slos))
    loop_name = type(asyncio.get_running_loop()).__module__.split(".")[0]
    result = RunResult(
        meta=run_meta(cfg.seed, loop_name, secrets=(cfg.api_key or "",)),
        config=cfg.redacted(),
        summary=summary,
        ceiling=ceiling,
        prometheus=scraper.summary() if scraper else None,
        schedule_digest=run.digest,
        target_rate=cfg.rate,
        records_path=str(path),
    )
    result.warnings.extend(_warnings(result))
    return result


def _warnings(res: RunResult) -> list[str]:
    s = res.summary
    out: list[str] = []
    if s.failed:
        out.append(f"{s.failed} of {s.requests_in_window} requests failed (counted as SLO violations)")
    if s.token_mismatch is not None and s.token_mismatch > 0.01:
        out.append(
            f"client tokenizer counts {s.client_tokens_total} output tokens, server usage "
            f"{s.output_tokens_total}: {s.token_mismatch:.1%} mismatch (> 1%)"
        )
    lag = s.latency.get("dispatch_lag_ms")
    if lag is not None and lag.p99 > 1.0:
        out.append(f"client dispatch lag p99 {lag.p99:.2f} ms > 1 ms: the client is late sending")
    if res.target_rate and s.achieved_rate and s.achieved_rate < 0.99 * res.target_rate:
        out.append(
            f"achieved rate {s.achieved_rate:.2f}/s is below 99% of the target {res.target_rate:.2f}/s"
        )
    c = res.ceiling
    if c is None:
        out.append("no client ceiling measured on this host (run `bench ceiling`)")
    else:
        rps = s.requests_total / s.window_s if s.window_s else 0.0
        eps = s.events_total / s.window_s if s.window_s else 0.0
        if rps > 0.5 * c.max_requests_per_s or eps > 0.5 * c.max_events_per_s:
            out.append(
                f"load ({rps:.0f} req/s, {eps:.0f} events/s) is past half the client ceiling "
                f"({c.max_requests_per_s:.0f} req/s, {c.max_events_per_s:.0f} events/s): "
                "client overhead may show in the latencies"
            )
    return out
