"""The GPU sampler: NVML parsing through a fake NVML passed in, and degradation without NVML."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest

from serving.gpu import GpuSampler, decode_throttle_reasons, load_nvml
from serving.gpu_check import format_reading, main

# --- a fake NVML: the same function names as pynvml, fixed readings per device ---


class FakeNVMLError(Exception):
    pass


class FakeNotSupported(FakeNVMLError):
    pass


class FakeTimeout(FakeNVMLError):
    pass


class FakeGpuIsLost(FakeNVMLError):
    pass


class FakeLibraryNotFound(FakeNVMLError):
    pass


@dataclass
class Util:
    gpu: int
    memory: int


@dataclass
class Memory:
    used: int
    total: int


@dataclass
class Event:
    eventType: int
    eventData: int


@dataclass
class FakeDevice:
    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = "GPU-00000000-1111-2222-3333-444444444444"
    util: Util = field(default_factory=lambda: Util(gpu=87, memory=41))
    memory: Memory = field(default_factory=lambda: Memory(used=30 * 2**30, total=80 * 2**30))
    temperature_c: int = 71
    power_mw: int = 512_345
    power_limit_mw: int = 700_000
    sm_clock_mhz: int = 1980
    throttle_mask: int = 0x004 | 0x020  # sw power cap + sw thermal slowdown
    ecc: tuple[int, int] = (3, 0)
    #: functions that raise NotSupported on this device
    not_supported: set[str] = field(default_factory=set)
    #: functions that raise a transient error on their next call only
    fail_once: set[str] = field(default_factory=set)
    xid_supported: bool = True
    pending_events: list[Event] = field(default_factory=list)


@dataclass
class FakeEventSet:
    device: FakeDevice
    freed: bool = False


class FakeNvml:
    """A stand-in for ``pynvml`` with the functions the sampler calls."""

    NVMLError = FakeNVMLError
    NVMLError_NotSupported = FakeNotSupported
    NVMLError_Timeout = FakeTimeout

    def __init__(self, devices: list[FakeDevice], *, init_error: Exception | None = None) -> None:
        self.devices = devices
        self.init_error = init_error
        self.calls: Counter[str] = Counter()
        self.event_sets: list[FakeEventSet] = []
        self.initialised = False

    def _call(self, name: str, handle: FakeDevice) -> None:
        self.calls[name] += 1
        if name in handle.not_supported:
            raise FakeNotSupported()
        if name in handle.fail_once:
            handle.fail_once.discard(name)
            raise FakeGpuIsLost()

    def nvmlInit(self) -> None:
        self.calls["nvmlInit"] += 1
        if self.init_error is not None:
            raise self.init_error
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.calls["nvmlShutdown"] += 1
        self.initialised = False

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeDevice:
        return self.devices[index]

    def nvmlDeviceGetName(self, h: FakeDevice) -> str:
        return h.name

    def nvmlDeviceGetUUID(self, h: FakeDevice) -> bytes:
        return h.uuid.encode()  # old bindings return bytes

    def nvmlDeviceGetUtilizationRates(self, h: FakeDevice) -> Util:
        self._call("nvmlDeviceGetUtilizationRates", h)
        return h.util

    def nvmlDeviceGetMemoryInfo(self, h: FakeDevice) -> Memory:
        self._call("nvmlDeviceGetMemoryInfo", h)
        return h.memory

    def nvmlDeviceGetTemperature(self, h: FakeDevice, sensor: int) -> int:
        assert sensor == 0  # NVML_TEMPERATURE_GPU
        self._call("nvmlDeviceGetTemperature", h)
        return h.temperature_c

    def nvmlDeviceGetPowerUsage(self, h: FakeDevice) -> int:
        self._call("nvmlDeviceGetPowerUsage", h)
        return h.power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, h: FakeDevice) -> int:
        self._call("nvmlDeviceGetEnforcedPowerLimit", h)
        return h.power_limit_mw

    def nvmlDeviceGetClockInfo(self, h: FakeDevice, clock: int) -> int:
        assert clock == 1  # NVML_CLOCK_SM
        self._call("nvmlDeviceGetClockInfo", h)
        return h.sm_clock_mhz

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: FakeDevice) -> int:
        self._call("nvmlDeviceGetCurrentClocksEventReasons", h)
        return h.throttle_mask

    def nvmlDeviceGetTotalEccErrors(self, h: FakeDevice, error_type: int, counter_type: int) -> int:
        assert counter_type == 0  # volatile
        self._call("nvmlDeviceGetTotalEccErrors", h)
        return h.ecc[error_type]

    def nvmlEventSetCreate(self) -> FakeEventSet:
        event_set = FakeEventSet(device=FakeDevice())
        self.event_sets.append(event_set)
        return event_set

    def nvmlDeviceRegisterEvents(self, h: FakeDevice, event_types: int, event_set: FakeEventSet) -> None:
        assert event_types & 0x8  # XID critical errors
        if not h.xid_supported:
            raise FakeNotSupported()
        event_set.device = h

    def nvmlEventSetWait(self, event_set: FakeEventSet, timeout_ms: int) -> Event:
        assert timeout_ms == 0  # never block the sampler thread
        self.calls["nvmlEventSetWait"] += 1
        if not event_set.device.pending_events:
            raise FakeTimeout()
        return event_set.device.pending_events.pop(0)

    def nvmlEventSetFree(self, event_set: FakeEventSet) -> None:
        event_set.freed = True


class OldFakeNvml(FakeNvml):
    """A binding from before NVML renamed throttle reasons to clocks-event reasons."""

    def __getattribute__(self, name: str) -> Any:
        if name == "nvmlDeviceGetCurrentClocksEventReasons":
            raise AttributeError(name)
        return super().__getattribute__(name)

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, h: FakeDevice) -> int:
        self._call("nvmlDeviceGetCurrentClocksThrottleReasons", h)
        return h.throttle_mask


async def _started(nvml: Any, interval_s: float = 3600.0) -> GpuSampler:
    sampler = GpuSampler(nvml=nvml, interval_s=interval_s, clock=lambda: 1234.5)
    await sampler.start()
    return sampler


# --- parsing ---


async def test_readings_are_parsed_and_converted() -> None:
    nvml = FakeNvml([FakeDevice(), FakeDevice(name="NVIDIA L4", uuid="GPU-l4", temperature_c=40)])
    sampler = await _started(nvml)
    try:
        snap = sampler.snapshot()
        assert snap.available and snap.sampled_at_s == 1234.5
        assert [d.index for d in snap.devices] == [0, 1]
        d0 = snap.devices[0]
        assert d0.name == "NVIDIA H100 80GB HBM3"
        assert d0.uuid == "GPU-00000000-1111-2222-3333-444444444444"
        assert (d0.gpu_utilization_pct, d0.memory_utilization_pct) == (87, 41)
        assert (d0.memory_used_bytes, d0.memory_total_bytes) == (30 * 2**30, 80 * 2**30)
        assert d0.temperature_c == 71
        assert d0.power_w == pytest.approx(512.345)
        assert d0.power_limit_w == pytest.approx(700.0)
        assert d0.sm_clock_mhz == 1980
        assert d0.throttle_reasons == ("sw_power_cap", "sw_thermal_slowdown")
        assert (d0.ecc_corrected_volatile, d0.ecc_uncorrected_volatile) == (3, 0)
        assert (d0.xid_events_total, d0.last_xid) == (0, None)
        assert snap.devices[1].name == "NVIDIA L4" and snap.devices[1].temperature_c == 40
    finally:
        await sampler.aclose()
    assert nvml.calls["nvmlShutdown"] == 1
    assert all(es.freed for es in nvml.event_sets) and len(nvml.event_sets) == 2
    assert not sampler.available


def test_throttle_reasons_decode_every_bit_and_bound_unknown_ones() -> None:
    assert decode_throttle_reasons(0) == ()
    assert decode_throttle_reasons(0x001) == ("gpu_idle",)
    assert decode_throttle_reasons(0x040 | 0x080 | 0x008) == (
        "hw_slowdown",
        "hw_thermal_slowdown",
        "hw_power_brake_slowdown",
    )
    assert decode_throttle_reasons(0x1000 | 0x010) == ("sync_boost", "other")


async def test_not_supported_field_is_none_others_read_and_not_asked_again() -> None:
    device = FakeDevice(not_supported={"nvmlDeviceGetTotalEccErrors", "nvmlDeviceGetPowerUsage"})
    nvml = FakeNvml([device])
    sampler = await _started(nvml)
    try:
        await sampler.sample_once()
        d = sampler.snapshot().devices[0]
        assert d.ecc_corrected_volatile is None and d.ecc_uncorrected_volatile is None
        assert d.power_w is None
        assert d.power_limit_w == pytest.approx(700.0)
        assert d.temperature_c == 71 and d.gpu_utilization_pct == 87
        # two samples, but each unsupported counter was asked once (corrected, uncorrected)
        assert nvml.calls["nvmlDeviceGetTotalEccErrors"] == 2
        assert nvml.calls["nvmlDeviceGetPowerUsage"] == 1
        assert nvml.calls["nvmlDeviceGetTemperature"] == 2
    finally:
        await sampler.aclose()


async def test_transient_error_blanks_one_sample_then_reads_again() -> None:
    device = FakeDevice(fail_once={"nvmlDeviceGetTemperature"})
    sampler = await _started(FakeNvml([device]))
    try:
        assert sampler.snapshot().devices[0].temperature_c is None
        assert sampler.snapshot().devices[0].sm_clock_mhz == 1980
        snap = await sampler.sample_once()
        assert snap.devices[0].temperature_c == 71
    finally:
        await sampler.aclose()


async def test_old_binding_reads_throttle_reasons_under_the_old_name() -> None:
    nvml = OldFakeNvml([FakeDevice(throttle_mask=0x040)])
    sampler = await _started(nvml)
    try:
        assert sampler.snapshot().devices[0].throttle_reasons == ("hw_thermal_slowdown",)
        assert nvml.calls["nvmlDeviceGetCurrentClocksThrottleReasons"] == 1
    finally:
        await sampler.aclose()


# --- XID events ---


async def test_xid_events_are_counted_and_other_events_ignored() -> None:
    device = FakeDevice()
    nvml = FakeNvml([device, FakeDevice(xid_supported=False)])
    sampler = await _started(nvml)
    try:
        assert sampler.snapshot().devices[0].xid_events_total == 0
        device.pending_events.extend([Event(eventType=0x8, eventData=79), Event(eventType=0x4, eventData=0)])
        device.pending_events.append(Event(eventType=0x8, eventData=48))
        snap = await sampler.sample_once()
        assert (snap.devices[0].xid_events_total, snap.devices[0].last_xid) == (2, 48)
        # the device whose driver reports no events says so rather than "0 events"
        assert snap.devices[1].xid_events_total is None
        snap = await sampler.sample_once()
        assert (snap.devices[0].xid_events_total, snap.devices[0].last_xid) == (2, 48)
    finally:
        await sampler.aclose()
    # the refused event set was freed at once, the other at shutdown
    assert [es.freed for es in nvml.event_sets] == [True, True]


async def test_an_xid_storm_does_not_stall_one_sample() -> None:
    device = FakeDevice()
    sampler = await _started(FakeNvml([device]))
    try:
        device.pending_events.extend(Event(eventType=0x8, eventData=31) for _ in range(100))
        first = (await sampler.sample_once()).devices[0].xid_events_total
        second = (await sampler.sample_once()).devices[0].xid_events_total
        assert first is not None and first < 100
        assert second == 100
    finally:
        await sampler.aclose()


# --- degradation ---


async def test_nvml_init_failure_is_unavailable_with_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    nvml = FakeNvml([FakeDevice()], init_error=FakeLibraryNotFound())
    with caplog.at_level(logging.INFO, logger="bastion.gpu"):
        sampler = await _started(nvml, interval_s=0.01)
        assert not sampler.available
        assert await sampler.sample_once() == sampler.snapshot()
        await sampler.aclose()
    records = [r for r in caplog.records if r.name == "bastion.gpu"]
    assert len(records) == 1 and "FakeLibraryNotFound" in records[0].getMessage()
    assert "FakeLibraryNotFound" in sampler.snapshot().detail


async def test_no_gpu_is_unavailable_and_releases_nvml(caplog: pytest.LogCaptureFixture) -> None:
    nvml = FakeNvml([])
    with caplog.at_level(logging.INFO, logger="bastion.gpu"):
        sampler = await _started(nvml)
    assert not sampler.available and sampler.snapshot().devices == ()
    assert sampler.snapshot().detail == "NVML found no GPU"
    assert nvml.calls["nvmlShutdown"] == 1
    assert len([r for r in caplog.records if r.name == "bastion.gpu"]) == 1


async def test_no_binding_at_all_is_unavailable() -> None:
    sampler = await _started(None)
    assert not sampler.available
    assert "not installed" in sampler.snapshot().detail


@pytest.mark.skipif(load_nvml() is None, reason="nvidia-ml-py not installed")
async def test_real_pynvml_on_a_machine_without_nvml(caplog: pytest.LogCaptureFixture) -> None:
    pynvml = load_nvml()
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("this machine has NVML")
    with caplog.at_level(logging.INFO, logger="bastion.gpu"):
        async with GpuSampler(nvml=pynvml, interval_s=0.01) as sampler:
            assert not sampler.available
            assert sampler.snapshot().devices == ()
    assert len([r for r in caplog.records if r.name == "bastion.gpu"]) == 1


def test_gpu_check_exits_non_zero_without_a_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    pynvml = load_nvml()
    if pynvml is not None:
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError:
            pass
        else:
            pynvml.nvmlShutdown()
            pytest.skip("this machine has NVML")
    assert main(["--samples", "1"]) == 2
    assert "no GPU telemetry" in capsys.readouterr().err


# --- the background task ---


async def test_background_task_keeps_sampling_until_closed() -> None:
    nvml = FakeNvml([FakeDevice()])
    async with GpuSampler(nvml=nvml, interval_s=0.001) as sampler:
        deadline = time.monotonic() + 10
        while nvml.calls["nvmlDeviceGetMemoryInfo"] < 5:
            assert time.monotonic() < deadline, "sampler did not keep sampling"
            await asyncio.sleep(0.001)
        assert sampler.available
    assert nvml.calls["nvmlShutdown"] == 1 and not nvml.initialised
    assert not sampler.available and sampler.snapshot().detail == "stopped"


async def test_format_reading_marks_missing_fields() -> None:
    sampler = await _started(FakeNvml([FakeDevice(not_supported={"nvmlDeviceGetTotalEccErrors"})]))
    try:
        text = format_reading(sampler.snapshot().devices[0])
    finally:
        await sampler.aclose()
    assert "30720 MiB used of 81920 MiB" in text
    assert "512.3 W of limit 700.0 W" in text
    assert "sw_power_cap,sw_thermal_slowdown" in text
    assert "corrected n/a" in text


@pytest.mark.gpu
async def test_real_gpu_readings() -> None:
    pynvml = load_nvml()
    if pynvml is None:
        pytest.skip("nvidia-ml-py not installed")
    try:
        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        pytest.skip("no NVML on this machine")
    if count == 0:
        pytest.skip("no GPU")
    async with GpuSampler(nvml=pynvml, interval_s=3600) as sampler:
        snap = sampler.snapshot()
        assert snap.available and len(snap.devices) == count
        d = snap.devices[0]
        assert d.memory_total_bytes is not None and d.memory_total_bytes > 0
        assert d.temperature_c is not None and 0 < d.temperature_c < 120
