"""``python -m serving.gpu_check``: print the NVML readings the GPU sampler exports.

Run it on a machine with an NVIDIA GPU to verify the telemetry on real hardware:
it drives the same ``GpuSampler`` the node runs, prints every device's readings
per sample (``n/a`` where the device does not report a field) and exits 0. With
no NVML or no GPU it says why and exits 2. Standard library and nvidia-ml-py only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict

from serving.gpu import GpuReading, GpuSampler, GpuSnapshot, load_nvml

__all__ = ["format_reading", "main"]

_EXIT_NO_GPU = 2


def _fmt(value: object, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.1f}{unit}"
    return f"{value}{unit}"


def format_reading(reading: GpuReading) -> str:
    """One device's readings as the block of lines the check prints."""
    r = reading
    mib = 1024 * 1024
    used = None if r.memory_used_bytes is None else r.memory_used_bytes // mib
    total = None if r.memory_total_bytes is None else r.memory_total_bytes // mib
    throttle = "n/a" if r.throttle_reasons is None else (",".join(r.throttle_reasons) or "none")
    xid = "n/a (driver reports no events)" if r.xid_events_total is None else str(r.xid_events_total)
    lines = [
        f"gpu {r.index}: {r.name} ({r.uuid})",
        f"  utilization        gpu {_fmt(r.gpu_utilization_pct, '%')}"
        f"  memory {_fmt(r.memory_utilization_pct, '%')}",
        f"  memory             {_fmt(used, ' MiB')} used of {_fmt(total, ' MiB')}",
        f"  temperature        {_fmt(r.temperature_c, ' C')}",
        f"  power              {_fmt(r.power_w, ' W')} of limit {_fmt(r.power_limit_w, ' W')}",
        f"  sm clock           {_fmt(r.sm_clock_mhz, ' MHz')}",
        f"  throttle reasons   {throttle}",
        f"  ecc (volatile)     corrected {_fmt(r.ecc_corrected_volatile)}"
        f"  uncorrected {_fmt(r.ecc_uncorrected_volatile)}",
        f"  xid events         {xid}  last {_fmt(r.last_xid)}",
    ]
    return "\n".join(lines)


def _print_snapshot(n: int, snapshot: GpuSnapshot, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"sample": n, **asdict(snapshot)}))
        return
    print(f"--- sample {n} at {snapshot.sampled_at_s:.3f}")
    for reading in snapshot.devices:
        print(format_reading(reading))


async def _check(samples: int, interval_s: float, as_json: bool) -> int:
    async with GpuSampler(nvml=load_nvml(), interval_s=interval_s) as sampler:
        snapshot = sampler.snapshot()
        if not snapshot.available:
            print(f"gpu_check: no GPU telemetry: {snapshot.detail}", file=sys.stderr)
            return _EXIT_NO_GPU
        _print_snapshot(1, snapshot, as_json=as_json)
        for n in range(2, samples + 1):
            # a standalone check samples on its own schedule, like the node's background task
            await asyncio.sleep(interval_s)
            _print_snapshot(n, await sampler.sample_once(), as_json=as_json)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=3, help="how many samples to print (default 3)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples (default 1)")
    parser.add_argument("--json", action="store_true", help="one JSON object per sample")
    args = parser.parse_args(argv)
    if args.samples < 1 or args.interval <= 0:
        parser.error("--samples must be >= 1 and --interval > 0")
    return asyncio.run(_check(args.samples, args.interval, args.json))


if __name__ == "__main__":
    raise SystemExit(main())
