"""A node runs without an audit log only when its config says so, and then says so everywhere.

``[audit] enabled = false`` (a config without ``[audit]`` is refused: tests/node/test_config.py
and test_serve_cli.py): the node is ready, but ``/readyz``, ``/metrics`` and a header on every
response report the log as disabled. With the log on, the same places report it enabled.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import bearer, node_setup, running_node


async def _audit_gauge(http: httpx.AsyncClient) -> float:
    r = await http.get("/metrics")
    assert r.status_code == 200
    (family,) = [f for f in text_string_to_metric_families(r.text) if f.name == "bastion_audit_enabled"]
    (sample,) = family.samples
    return float(sample.value)


class _Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def _warnings_of(name: str) -> Iterator[_Kept]:
    logger, kept = logging.getLogger(name), _Kept()
    logger.addHandler(kept)
    try:
        yield kept
    finally:
        logger.removeHandler(kept)


@pytest.mark.parametrize("audit", [False, True])
async def test_the_node_says_whether_it_records_requests(tmp_path: Path, audit: bool) -> None:
    setup = node_setup(tmp_path, audit=audit)
    assert (setup.config.audit is None) is not audit
    expected = "enabled" if audit else "disabled"
    with _warnings_of("bastion.node") as logged:
        async with (
            running_node(setup, {}) as node,
            httpx.AsyncClient(base_url=node.url, timeout=30) as http,
        ):
            ready = await http.get("/readyz")
            assert ready.status_code == 200  # off is the operator's explicit choice, not a fault
            assert ready.json()["audit"] == (
                {"enabled": True, "accepting": True} if audit else {"enabled": False}
            )
            assert await _audit_gauge(http) == (1.0 if audit else 0.0)
            responses = [
                ready,
                await http.get("/healthz"),
                await http.get("/v1/models", headers=bearer(setup.keys["acme"])),
                await http.get("/v1/models"),  # 401
                await http.post("/v1/chat/completions", headers=bearer(setup.keys["acme"]), content=b"{"),
                await http.get("/no/such/path"),
            ]
            for r in responses:
                assert r.headers.get_list("x-bastion-audit") == [expected], (r.request.url, r.status_code)
    disabled_warnings = [r for r in logged.records if "AUDIT LOG DISABLED" in r.getMessage()]
    assert len(disabled_warnings) == (0 if audit else 1)
    assert all(r.levelno == logging.WARNING for r in disabled_warnings)
