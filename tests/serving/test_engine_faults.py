"""Fault drills on engines of their own: wedged and dead engines are reported, fail fast,
and leave no processes behind; a model failing its pins is never loaded."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import psutil
import pytest

from serving.engine import LocalEngine
from serving.errors import EngineUnavailableError, PinMismatchError
from serving.models import ModelSpec
from serving.protocol import Delta, GenerationRequest, SamplingOptions

pytestmark = pytest.mark.engine


def _long(i: int) -> GenerationRequest:
    return GenerationRequest(
        request_id=f"fault-{i}",
        model="bastion-tiny",
        prompt=f"long run {i}",
        sampling=SamplingOptions(max_tokens=1800, ignore_eos=True),
    )


def _short() -> GenerationRequest:
    return GenerationRequest(
        request_id="short", model="bastion-tiny", prompt="short", sampling=SamplingOptions(max_tokens=2)
    )


async def _wait_for(predicate: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.05)


async def _healthy(engine: LocalEngine) -> bool:
    return (await engine.health()).healthy


async def _wait_health(engine: LocalEngine, healthy: bool, timeout_s: float = 60.0) -> str:
    deadline = time.monotonic() + timeout_s
    while (h := await engine.health()).healthy != healthy:
        if time.monotonic() > deadline:
            raise AssertionError(f"engine never became healthy={healthy}: {h.detail}")
        await asyncio.sleep(0.05)
    return h.detail


async def _start_inflight(engine: LocalEngine, i: int) -> asyncio.Task[int]:
    first = asyncio.Event()

    async def consume() -> int:
        n = 0
        async for d in engine.stream(_long(i)):
            n = d.completion_tokens
            first.set()
        return n

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 60)
    return task


def _engine_tree(engine: LocalEngine) -> list[psutil.Process]:
    procs = [psutil.Process(pid) for pid in engine.engine_pids()]
    assert procs, "engine reported no processes"
    return procs + [c for p in procs for c in p.children(recursive=True)]


def _gone(procs: list[psutil.Process]) -> bool:
    for p in procs:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            continue
    return True


async def test_wedged_engine_is_reported_fails_fast_and_recovers(
    eager_tiny_spec: ModelSpec, tiny_model_dir: Path
) -> None:
    engine = LocalEngine(eager_tiny_spec, tiny_model_dir, probe_interval_s=0.3, probe_timeout_s=3.0)
    await engine.start()
    try:
        tree = _engine_tree(engine)
        core = engine.engine_pids()[0]
        inflight = await _start_inflight(engine, 1)
        os.kill(core, signal.SIGSTOP)
        try:
            detail = await _wait_health(engine, healthy=False)
            assert "wedged" in detail
            # the stream in flight ends with 503 instead of hanging
            with pytest.raises(EngineUnavailableError):
                await asyncio.wait_for(inflight, 30)
            # a new request fails fast, before anything is queued
            with pytest.raises(EngineUnavailableError) as info:
                await asyncio.wait_for(anext(engine.stream(_short())), 5)
            assert info.value.status_code == 503 and info.value.retryable
        finally:
            os.kill(core, signal.SIGCONT)
        await _wait_health(engine, healthy=True)
        deltas = [d async for d in engine.stream(_short())]
        assert deltas[-1].finish_reason is not None
    finally:
        await engine.aclose()
    # a clean close leaves no engine process behind
    await _wait_for(lambda: _gone(tree), 30)
    assert not (await engine.health()).healthy


async def test_a_busy_engine_whose_probe_is_slow_is_not_wedged(
    eager_tiny_spec: ModelSpec, tiny_model_dir: Path
) -> None:
    """Every sequence slot busy: the probe queues behind the batch and misses its deadline while
    the running streams keep producing tokens. The engine stays ready and the streams finish;
    once idle, a missed deadline with nothing progressing marks it wedged."""
    spec = msgspec.structs.replace(eager_tiny_spec, max_num_seqs=2)
    engine = LocalEngine(spec, tiny_model_dir, probe_interval_s=0.05, probe_timeout_s=0.25)
    await engine.start()  # the first probe has its own, longer deadline
    try:
        details: set[str] = set()

        async def run(i: int) -> Delta:
            last = Delta()
            async for d in engine.stream(_long(10 + i)):
                details.add((await engine.health()).detail)
                last = d
            return last

        ends = await asyncio.wait_for(asyncio.gather(run(0), run(1)), 120)
        assert [d.finish_reason for d in ends] == ["length", "length"]  # never aborted
        assert any("progressing meanwhile" in d for d in details), details
        assert not any("wedged" in d for d in details), details
    finally:
        await engine.aclose()


async def test_killed_engine_is_reported_dead_and_fails_fast(
    eager_tiny_spec: ModelSpec, tiny_model_dir: Path
) -> None:
    engine = LocalEngine(eager_tiny_spec, tiny_model_dir, probe_interval_s=0.3, probe_timeout_s=3.0)
    await engine.start()
    try:
        tree = _engine_tree(engine)
        inflight = await _start_inflight(engine, 2)
        os.kill(engine.engine_pids()[0], signal.SIGKILL)
        with pytest.raises(EngineUnavailableError):
            await asyncio.wait_for(inflight, 30)
        detail = await _wait_health(engine, healthy=False)
        assert "dead" in detail
        with pytest.raises(EngineUnavailableError):
            await asyncio.wait_for(anext(engine.stream(_short())), 5)
        probed = await asyncio.wait_for(engine.probe(), 10)
        assert not probed.healthy and "dead" in probed.detail
    finally:
        await engine.aclose()
    await _wait_for(lambda: _gone(tree), 30)


async def test_model_failing_its_pins_is_never_loaded(
    eager_tiny_spec: ModelSpec, tiny_model_dir: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "model"
    shutil.copytree(tiny_model_dir, bad)
    cfg = bad / "config.json"
    cfg.write_bytes(cfg.read_bytes().replace(b'"num_hidden_layers": 2', b'"num_hidden_layers": 3'))
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    engine = LocalEngine(eager_tiny_spec, bad)
    with pytest.raises(PinMismatchError, match=r"'config.json'.*expected sha256 .*actual sha256 "):
        await engine.start()
    assert engine.engine_pids() == ()
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before
    with pytest.raises(EngineUnavailableError):
        await anext(engine.stream(_short()))


async def test_one_missed_probe_is_not_a_wedge_and_a_wedged_engine_is_probed_again_soon(
    eager_tiny_spec: ModelSpec, tiny_model_dir: Path
) -> None:
    """A single missed probe (a host starved of CPU for a moment) leaves the engine serving;
    the second in a row marks it wedged. The regular probe runs every minute here; after a miss,
    every 0.5 s, so the engine serves again within seconds of recovering."""
    engine = LocalEngine(
        eager_tiny_spec,
        tiny_model_dir,
        probe_interval_s=60.0,
        probe_timeout_s=2.0,
        retry_probe_interval_s=0.5,
    )
    await engine.start()
    try:
        core = engine.engine_pids()[0]
        os.kill(core, signal.SIGSTOP)
        try:
            health = await engine.probe()  # on demand: misses its deadline, nothing progressing
            assert health.healthy and "did not finish" in health.detail
            health = await engine.probe()  # the second miss in a row
            assert not health.healthy and "wedged" in health.detail
        finally:
            os.kill(core, signal.SIGCONT)
        # well before the next regular probe (60 s away)
        await _wait_health(engine, healthy=True, timeout_s=20)
    finally:
        await engine.aclose()
