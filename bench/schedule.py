"""Open-loop arrival schedules: absolute, precomputed, reproducible from a seed.

Sending on absolute times (``t0 + offset``) instead of sleeping between requests
means a late dispatch never delays the ones after it, so the offered rate holds
(the relative-sleep drift of vllm#21104). The gaps are rescaled so the schedule
spans exactly ``(n - 1) / rate``: the offered rate is the target, not a sample of it.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import numpy as np

__all__ = ["arrival_offsets_ns", "schedule_digest"]


def arrival_offsets_ns(
    n: int,
    rate: float,
    arrival: Literal["poisson", "gamma", "constant"] = "poisson",
    burstiness: float = 1.0,
    seed: int = 0,
) -> list[int]:
    """``n`` send offsets in ns from the run start; the first is 0.

    Poisson: exponential gaps. Gamma: shape ``burstiness`` (<1 burstier, >1 more
    regular, 1 is Poisson), mean ``1/rate``. Constant: equal gaps.
    """
    if n <= 0:
        return []
    if n == 1:
        return [0]
    rng = np.random.Generator(np.random.PCG64(seed))
    m = n - 1
    if arrival == "constant":
        gaps = np.ones(m)
    elif arrival == "poisson":
        gaps = rng.exponential(1.0, m)
    else:
        gaps = rng.gamma(burstiness, 1.0 / burstiness, m)
    span_ns = m / rate * 1e9
    cum = np.concatenate(([0.0], np.cumsum(gaps)))
    cum *= span_ns / cum[-1]
    return [int(x) for x in np.rint(cum)]


def schedule_digest(offsets: list[int]) -> str:
    """A short hash of a schedule, to show two runs offered the same arrivals."""
    h = hashlib.sha256()
    for off in offsets:
        h.update(off.to_bytes(8, "little", signed=True))
    return h.hexdigest()[:16]
