"""Significance helpers of ``bench compare``."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.compare import bootstrap_ratio_ci, mann_whitney_u


def test_mann_whitney_matches_the_normal_approximation_by_hand() -> None:
    u, p = mann_whitney_u(np.array([1.0, 2.0, 3.0]), np.array([4.0, 5.0, 6.0]))
    assert u == 0.0
    # mu = 4.5, sigma^2 = 3 * 3 * 7 / 12 = 5.25 -> z = -1.964 -> p = erfc(|z| / sqrt 2)
    assert p == pytest.approx(math.erfc(4.5 / math.sqrt(5.25) / math.sqrt(2)))
    assert p == pytest.approx(0.0495, abs=1e-4)


def test_ties_and_identical_samples_are_not_significant() -> None:
    same = np.array([5.0] * 20)
    assert mann_whitney_u(same, same)[1] == 1.0
    rng = np.random.Generator(np.random.PCG64(0))
    a, b = rng.normal(100, 5, 400), rng.normal(100, 5, 400)
    assert mann_whitney_u(a, b)[1] > 0.01
    lo, hi = bootstrap_ratio_ci(a, b)
    assert lo < 1.0 < hi


def test_a_real_shift_is_significant() -> None:
    rng = np.random.Generator(np.random.PCG64(1))
    a, b = rng.normal(100, 5, 300), rng.normal(110, 5, 300)
    assert mann_whitney_u(a, b)[1] < 1e-6
    lo, hi = bootstrap_ratio_ci(a, b)
    assert 1.05 < lo < 1.10 < hi < 1.15
