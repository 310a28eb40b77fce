"""The probe state machine on its own: a plain coroutine as the forward pass, a manual clock."""

from __future__ import annotations

import asyncio

from serving.prober import Prober, ProbeSettings


class ForwardPass:
    """A forward pass the test steers: it finishes, hangs until released, or raises."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.calls = 0
        self.release = asyncio.Event()
        self.started = asyncio.Event()

    async def __call__(self) -> None:
        self.calls += 1
        self.started.set()
        if self.mode == "hang":
            await self.release.wait()
        elif self.mode == "fail":
            raise RuntimeError("cuda error")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        self.now += 0.001
        return self.now


class Engine:
    """What the prober asks of an engine: has its process died, and end what is in flight."""

    def __init__(self) -> None:
        self.errored = False
        self.aborts = 0

    async def abort_inflight(self) -> None:
        self.aborts += 1


def make(forward: ForwardPass, engine: Engine, **settings: float) -> Prober:
    return Prober(
        "m",
        ProbeSettings(**{"interval_s": 60.0, "timeout_s": 0.05, "retry_interval_s": 0.01, **settings}),  # type: ignore[arg-type]
        forward=forward,
        errored=lambda: engine.errored,
        on_unready=engine.abort_inflight,
        clock=Clock(),
    )


async def wait_for(cond: object, deadline_s: float = 5.0) -> None:
    assert callable(cond)
    async with asyncio.timeout(deadline_s):
        while not cond():
            await asyncio.sleep(0.005)


async def test_a_finished_probe_makes_the_engine_ready() -> None:
    forward, engine = ForwardPass(), Engine()
    prober = make(forward, engine)
    assert prober.health.state == "starting"
    await prober.first_probe()
    assert prober.health.ready and forward.calls == 1
    assert prober.health.last_ok_s is not None and prober.inflight == 0
    assert engine.aborts == 0


async def test_misses_in_a_row_wedge_the_engine_and_a_finished_probe_recovers_it() -> None:
    forward, engine = ForwardPass(), Engine()
    prober = make(forward, engine, wedge_after_misses=2)
    await prober.probe()
    forward.mode = "hang"
    await prober.probe()
    assert prober.health.state == "ready", "one miss only brings the next probe forward"
    assert "did not finish" in prober.health.detail
    await prober.probe()
    assert prober.health.state == "wedged"
    assert engine.aborts == 1  # only the wedge ends the requests in flight, not the single miss
    forward.mode = "ok"
    await prober.probe()
    assert prober.health.ready


async def test_a_slow_probe_while_generations_progress_is_not_a_miss() -> None:
    forward, engine = ForwardPass(), Engine()
    prober = make(forward, engine, wedge_after_misses=1)
    await prober.probe()
    forward.mode = "hang"
    forward.started.clear()
    task = asyncio.create_task(prober.probe())
    await forward.started.wait()
    prober.note_output()  # a generation received output while the probe waited
    await task
    assert prober.health.ready
    assert "progressing" in prober.health.detail


async def test_a_failing_probe_wedges_and_a_died_process_is_dead_for_good() -> None:
    forward, engine = ForwardPass(), Engine()
    prober = make(forward, engine)
    forward.mode = "fail"
    await prober.probe()
    assert prober.health.state == "wedged" and "cuda error" in prober.health.detail
    engine.errored = True
    forward.mode = "ok"
    calls = forward.calls
    await prober.probe()
    assert prober.health.state == "dead"
    assert forward.calls == calls, "a dead engine is not probed"


async def test_the_background_loop_probes_again_soon_after_a_miss() -> None:
    forward, engine = ForwardPass(), Engine()
    prober = make(forward, engine, wedge_after_misses=3)
    await prober.first_probe()
    forward.mode = "hang"
    await prober.probe()  # a miss: the loop retries every retry_interval_s, not interval_s (60 s)
    prober.start()
    try:
        await wait_for(lambda: prober.health.state == "wedged")
        forward.mode = "ok"
        forward.release.set()
        await wait_for(lambda: prober.health.ready)
    finally:
        await prober.aclose()
    assert forward.calls >= 4


def test_settings_are_bounded() -> None:
    s = ProbeSettings(interval_s=1.0, timeout_s=5.0, start_timeout_s=2.0, retry_interval_s=3.0,
                      wedge_after_misses=0).normalised()  # fmt: skip
    assert (s.retry_interval_s, s.start_timeout_s, s.wedge_after_misses) == (1.0, 5.0, 1)
