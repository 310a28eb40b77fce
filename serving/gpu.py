"""GPU telemetry from NVML, sampled by one background task off the request path.

``GpuSampler`` reads every device's utilisation, memory, temperature, power,
SM clock, throttle reasons, volatile ECC counts and XID events at a fixed
interval and keeps the latest ``GpuSnapshot``; the metrics endpoint reads that
snapshot and never calls NVML itself. NVML calls block (they talk to the
driver), so each sample runs in a worker thread.

The NVML binding is injected (``GpuSampler(nvml=pynvml)``): tests pass a fake
object with the same function names and error classes. Without NVML or without
a GPU the sampler reports ``available = False``, logs one line and never raises.
A single field that the device does not support reads as ``None`` while the
others are still read; a field that answered NotSupported once is not asked again.

Only the standard library and ``pynvml`` (nvidia-ml-py) are used here, so the
GPU check (``python -m serving.gpu_check``) runs on a bare GPU machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

__all__ = [
    "THROTTLE_REASONS",
    "GpuReading",
    "GpuSampler",
    "GpuSnapshot",
    "decode_throttle_reasons",
    "load_nvml",
]

_log = logging.getLogger("bastion.gpu")

# NVML ABI constants from nvml.h. They are fixed by the driver ABI, so the
# sampler does not read them from the binding and a fake NVML needs only functions.
_TEMPERATURE_GPU = 0
_CLOCK_SM = 1
_MEMORY_ERROR_CORRECTED = 0
_MEMORY_ERROR_UNCORRECTED = 1
_VOLATILE_ECC = 0
_EVENT_TYPE_XID_CRITICAL = 0x0000000000000008
# events drained per device per sample: a storm of XIDs must not stall the sampler
_MAX_EVENTS_PER_SAMPLE = 64

#: ``nvmlClocksEventReason*`` bits and the names exported for them
THROTTLE_REASONS: tuple[tuple[int, str], ...] = (
    (0x001, "gpu_idle"),
    (0x002, "applications_clocks_setting"),
    (0x004, "sw_power_cap"),
    (0x008, "hw_slowdown"),
    (0x010, "sync_boost"),
    (0x020, "sw_thermal_slowdown"),
    (0x040, "hw_thermal_slowdown"),
    (0x080, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
)
_KNOWN_THROTTLE_BITS = sum(bit for bit, _ in THROTTLE_REASONS)


def decode_throttle_reasons(mask: int) -> tuple[str, ...]:
    """Names of the reasons set in an NVML clocks-event mask; unknown bits read as ``other``."""
    names = tuple(name for bit, name in THROTTLE_REASONS if mask & bit)
    return (*names, "other") if mask & ~_KNOWN_THROTTLE_BITS else names


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuReading:
    """One device at one sample. ``None``: the device does not report that field."""

    index: int
    name: str
    uuid: str
    gpu_utilization_pct: int | None = None
    memory_utilization_pct: int | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    temperature_c: int | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    sm_clock_mhz: int | None = None
    throttle_reasons: tuple[str, ...] | None = None
    ecc_corrected_volatile: int | None = None
    ecc_uncorrected_volatile: int | None = None
    #: XID critical errors seen since the sampler started (``None``: the driver reports no events)
    xid_events_total: int | None = None
    last_xid: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuSnapshot:
    """The latest sample of every device, or why there is none."""

    available: bool
    devices: tuple[GpuReading, ...] = ()
    #: wall-clock seconds of the sample (``None`` before the first)
    sampled_at_s: float | None = None
    detail: str = ""


@dataclass(slots=True)
class _Device:
    """Per-device sampler state: the NVML handle and what it has refused to answer."""

    index: int
    handle: Any
    name: str
    uuid: str
    event_set: Any = None
    xid_total: int = 0
    last_xid: int | None = None
    unsupported: set[str] = field(default_factory=set)


def load_nvml() -> Any:
    """The ``pynvml`` module, or ``None`` when nvidia-ml-py is not installed."""
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


class GpuSampler:
    """Samples NVML in a background task every ``interval_s``; ``snapshot()`` is the latest reading.

    Use as an async context manager (or ``start()`` / ``aclose()``) in ``node.assembly.build_node``.
    """

    def __init__(
        self,
        *,
        nvml: Any,
        interval_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self._nvml = nvml
        self._interval_s = interval_s
        self._clock = clock
        self._devices: list[_Device] = []
        self._initialised = False
        self._snapshot = GpuSnapshot(available=False, detail="not started")
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._throttle_fn_name = "nvmlDeviceGetCurrentClocksEventReasons"

    @property
    def available(self) -> bool:
        return self._snapshot.available

    @property
    def interval_s(self) -> float:
        return self._interval_s

    def snapshot(self) -> GpuSnapshot:
        """The latest sample; cheap, never touches NVML."""
        return self._snapshot

    async def start(self) -> None:
        """Initialise NVML, take the first sample and start the background task (if a GPU is there)."""
        if self._task is not None or self._initialised:
            return
        detail = await asyncio.to_thread(self._init)
        if detail:
            self._snapshot = GpuSnapshot(available=False, detail=detail)
            # the one log line of a node without GPU telemetry
            _log.warning("GPU telemetry off: %s", detail)
            return
        await self.sample_once()
        self._task = asyncio.create_task(self._run(), name="bastion-gpu-sampler")

    async def sample_once(self) -> GpuSnapshot:
        """Sample every device now (in a worker thread) and keep the result."""
        if not self._initialised:
            return self._snapshot
        async with self._lock:
            devices = await asyncio.to_thread(self._sample)
            self._snapshot = GpuSnapshot(available=True, devices=devices, sampled_at_s=self._clock())
        return self._snapshot

    async def aclose(self) -> None:
        """Stop the task and release NVML."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._initialised:
            async with self._lock:
                await asyncio.to_thread(self._shutdown)
            self._snapshot = GpuSnapshot(available=False, detail="stopped")

    async def __aenter__(self) -> GpuSampler:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _run(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.sample_once()
            except Exception:
                # a failing sample is logged once per streak, not once per interval
                if not failing:
                    _log.exception("GPU sample failed; keeping the last reading")
                failing = True
            else:
                failing = False

    # --- worker-thread side: everything below calls NVML and blocks ---

    def _init(self) -> str:
        """Initialise NVML and enumerate devices; returns why telemetry is off, or ``""``."""
        nvml = self._nvml
        if nvml is None:
            return "pynvml (nvidia-ml-py) is not installed"
        try:
            nvml.nvmlInit()
        except (nvml.NVMLError, OSError) as exc:
            return f"NVML did not initialise ({type(exc).__name__}: {exc})"
        try:
            count = int(nvml.nvmlDeviceGetCount())
            devices = [self._open_device(i) for i in range(count)]
        except nvml.NVMLError as exc:
            self._safe_shutdown()
            return f"NVML could not enumerate devices ({type(exc).__name__}: {exc})"
        if not devices:
            self._safe_shutdown()
            return "NVML found no GPU"
        if not hasattr(nvml, self._throttle_fn_name):
            # bindings before the 12.x rename only have the old name
            self._throttle_fn_name = "nvmlDeviceGetCurrentClocksThrottleReasons"
        self._devices = devices
        self._initialised = True
        return ""

    def _open_device(self, index: int) -> _Device:
        nvml = self._nvml
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        device = _Device(
            index=index,
            handle=handle,
            name=_text(nvml.nvmlDeviceGetName(handle)),
            uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
        )
        device.event_set = self._register_xid_events(handle)
        return device

    def _register_xid_events(self, handle: Any) -> Any:
        """An event set carrying this device's XID errors, or ``None`` where the driver has none."""
        nvml = self._nvml
        try:
            event_set = nvml.nvmlEventSetCreate()
        except nvml.NVMLError:
            return None
        try:
            nvml.nvmlDeviceRegisterEvents(handle, _EVENT_TYPE_XID_CRITICAL, event_set)
        except nvml.NVMLError:
            with contextlib.suppress(nvml.NVMLError):
                nvml.nvmlEventSetFree(event_set)
            return None
        return event_set

    def _sample(self) -> tuple[GpuReading, ...]:
        return tuple(self._read(device) for device in self._devices)

    def _read(self, dev: _Device) -> GpuReading:
        util = self._field(dev, "utilization", "nvmlDeviceGetUtilizationRates")
        memory = self._field(dev, "memory", "nvmlDeviceGetMemoryInfo")
        power_mw = self._field(dev, "power", "nvmlDeviceGetPowerUsage")
        limit_mw = self._field(dev, "power_limit", "nvmlDeviceGetEnforcedPowerLimit")
        throttle = self._field(dev, "throttle", self._throttle_fn_name)
        ecc, vol = "nvmlDeviceGetTotalEccErrors", _VOLATILE_ECC
        self._drain_xid_events(dev)
        return GpuReading(
            index=dev.index,
            name=dev.name,
            uuid=dev.uuid,
            gpu_utilization_pct=None if util is None else int(util.gpu),
            memory_utilization_pct=None if util is None else int(util.memory),
            memory_used_bytes=None if memory is None else int(memory.used),
            memory_total_bytes=None if memory is None else int(memory.total),
            temperature_c=_int(self._field(dev, "temperature", "nvmlDeviceGetTemperature", _TEMPERATURE_GPU)),
            power_w=None if power_mw is None else power_mw / 1000.0,
            power_limit_w=None if limit_mw is None else limit_mw / 1000.0,
            sm_clock_mhz=_int(self._field(dev, "sm_clock", "nvmlDeviceGetClockInfo", _CLOCK_SM)),
            throttle_reasons=None if throttle is None else decode_throttle_reasons(int(throttle)),
            ecc_corrected_volatile=_int(self._field(dev, "ecc_corrected", ecc, _MEMORY_ERROR_CORRECTED, vol)),
            ecc_uncorrected_volatile=_int(
                self._field(dev, "ecc_uncorrected", ecc, _MEMORY_ERROR_UNCORRECTED, vol)
            ),
            xid_events_total=None if dev.event_set is None else dev.xid_total,
            last_xid=dev.last_xid,
        )

    def _field(self, dev: _Device, key: str, fn_name: str, *args: int) -> Any:
        """One NVML reading, or ``None``; NotSupported is remembered so it is not asked again."""
        if key in dev.unsupported:
            return None
        nvml = self._nvml
        fn = getattr(nvml, fn_name, None)
        if fn is None:
            dev.unsupported.add(key)
            return None
        try:
            return fn(dev.handle, *args)
        except nvml.NVMLError_NotSupported:
            dev.unsupported.add(key)
            return None
        except nvml.NVMLError:
            # transient (GPU busy, lost, permission): this sample lacks the field
            return None

    def _drain_xid_events(self, dev: _Device) -> None:
        if dev.event_set is None:
            return
        nvml = self._nvml
        for _ in range(_MAX_EVENTS_PER_SAMPLE):
            try:
                event = nvml.nvmlEventSetWait(dev.event_set, 0)
            except nvml.NVMLError:
                # Timeout is the normal "no event pending"; anything else ends this drain too
                return
            if int(event.eventType) & _EVENT_TYPE_XID_CRITICAL:
                dev.xid_total += 1
                dev.last_xid = int(event.eventData)

    def _shutdown(self) -> None:
        nvml = self._nvml
        for dev in self._devices:
            if dev.event_set is not None:
                with contextlib.suppress(nvml.NVMLError):
                    nvml.nvmlEventSetFree(dev.event_set)
                dev.event_set = None
        self._devices = []
        self._initialised = False
        self._safe_shutdown()

    def _safe_shutdown(self) -> None:
        with contextlib.suppress(self._nvml.NVMLError):
            self._nvml.nvmlShutdown()


def _text(value: str | bytes) -> str:
    # nvidia-ml-py returns str; older pynvml releases returned bytes
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _int(value: Any) -> int | None:
    return None if value is None else int(value)
