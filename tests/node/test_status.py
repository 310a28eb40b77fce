"""``bastion status`` against a real node on 127.0.0.1, and its percentile estimate."""

from __future__ import annotations

import asyncio
import io
import math
import os
from pathlib import Path

import httpx
import pytest

from node.status import histogram_quantile, status_command
from serving.models import load_models_file
from serving.protocol import Provider
from tests.fakes.upstream import closed_port_url
from tests.harness import ROOT, TINY, chat, node_setup, running_node


async def _status(url: str, token: str | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    # the CLI is synchronous: off the loop, which is also the node's
    code = await asyncio.to_thread(status_command, url, token=token, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.engine
async def test_status_shows_models_revision_health_and_latency(
    tmp_path: Path, local_engine: Provider
) -> None:
    setup = node_setup(tmp_path)
    revision = load_models_file(ROOT / "models.toml").get(TINY).pinned_revision
    async with running_node(setup, {TINY: local_engine}) as node:
        code, out, err = await _status(node.url)
        assert (code, err) == (0, "")
        assert "ready" in out and "NOT READY" not in out
        assert TINY in out
        assert revision in out
        assert "engine healthy" in out
        assert "no requests yet" in out
        assert "none visible" in out  # no NVML on this machine: said, not a crash
        assert "queue depth" in out  # the audit log is on
        assert f"local:{TINY} closed" in out  # the local engine's breaker

        async with httpx.AsyncClient(base_url=node.url) as client:
            for _ in range(2):
                await chat(client, setup.keys["acme"])
        code, out, _ = await _status(node.url)
        assert code == 0
        latency = [line for line in out.splitlines() if line.strip().startswith(f"{TINY} [local]")]
        assert len(latency) == 1, out
        assert "n=2" in latency[0] and "TTFT" in latency[0] and "E2E" in latency[0]
        assert "200: 2" in out
        assert len(out.splitlines()) <= 40  # one screen


@pytest.mark.engine
async def test_status_with_a_protected_metrics_endpoint(tmp_path: Path, local_engine: Provider) -> None:
    env = "BASTION_TEST_STATUS_METRICS_TOKEN"
    os.environ[env] = "s3cret-metrics-token"
    try:
        setup = node_setup(tmp_path, audit=False, extra=f'[metrics]\ntoken_env = "{env}"\n')
        async with running_node(setup, {TINY: local_engine}) as node:
            code, out, err = await _status(node.url)
            assert code == 2 and out == ""
            assert "--token-env" in err
            code, out, _ = await _status(node.url, token="s3cret-metrics-token")
            assert code == 0 and TINY in out
            assert "not reported" in out  # audit off
    finally:
        del os.environ[env]


async def test_unreachable_node_is_a_clear_nonzero_exit() -> None:
    url = closed_port_url()
    code, out, err = await _status(url)
    assert code == 1
    assert out == ""
    assert err.startswith("bastion status: cannot reach the node at ")
    assert url.rstrip("/") in err


def test_histogram_quantile_interpolates_within_buckets() -> None:
    # 10 observations: 4 in (0, 0.1], 4 in (0.1, 0.2], 2 in (0.2, 0.5]
    buckets = [(0.1, 4.0), (0.2, 8.0), (0.5, 10.0), (math.inf, 10.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.125)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.2 + 0.3 * (9.9 - 8) / 2)
    assert histogram_quantile(0.5, [(0.1, 0.0), (math.inf, 0.0)]) is None
    # beyond the last finite bound the estimate stops at that bound
    assert histogram_quantile(0.99, [(0.1, 1.0), (math.inf, 5.0)]) == pytest.approx(0.1)
