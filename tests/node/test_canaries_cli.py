"""Canary commands and the scheduled job on the tiny model and a fake external provider.

Record into a copy of ``models.toml``, replay (match), then drift: a changed
recording (what a changed model file produces) and a fake upstream that starts
answering differently behind the same model name.
"""

from __future__ import annotations

import asyncio
import io
import sqlite3
import time
from pathlib import Path

import pytest

from audit.export import export_records
from node.canaries import BASELINES_FILE, canary_job, record_canaries_command, run_canaries_command
from node.config import decode_config
from serving.canary import record_canaries_into_file
from serving.models import load_models_file
from serving.protocol import Provider
from tests.fakes.upstream import FakeUpstream, Reply
from tests.harness import ROOT, TINY, node_setup, running_node

pytestmark = pytest.mark.engine

CANARIES = """
[[models.canaries]]
prompt = "Canary one: the quick brown fox"
max_tokens = 8

[[models.canaries]]
prompt = "Canary two: 1 2 3 4"
max_tokens = 6

"""
EXTERNAL_MODEL = "gpt-4o-2024-08-06"


def _models_with_canaries(tmp_path: Path) -> Path:
    """The committed models.toml with two synthetic canaries added to the tiny model."""
    text = (ROOT / "models.toml").read_text(encoding="utf-8")
    head, sep, tail = text.partition("[models.files]")
    assert sep, "models.toml changed shape"
    if "[[models.canaries]]" not in head:
        head += CANARIES
    path = tmp_path / "models.toml"
    path.write_text(head + sep + tail, encoding="utf-8")
    return path


def _node_toml(tmp_path: Path, models_file: Path, fake: FakeUpstream | None) -> Path:
    external = "" if fake is None else _external(fake)
    text = f"""
models_file = "{models_file}"
data_dir = "{tmp_path / "data"}"
serve = ["{TINY}"]
{external}
[audit]
enabled = false
"""
    decode_config(text)  # fail here, not in the command, when the test's config is wrong
    path = tmp_path / "node.toml"
    path.write_text(text, encoding="utf-8")
    return path


async def _record(tmp_path: Path, local_engine: Provider) -> Path:
    models_file = _models_with_canaries(tmp_path)
    out = io.StringIO()
    code = await record_canaries_command(models_file, tmp_path / "data", TINY, engine=local_engine, out=out)
    assert code == 0, out.getvalue()
    return models_file


async def test_record_then_replay_matches(tmp_path: Path, local_engine: Provider) -> None:
    models_file = await _record(tmp_path, local_engine)
    cases = load_models_file(models_file).get(TINY).canaries
    assert len(cases) == 2 and all(c.expected for c in cases)
    assert "# The built-in dev model" in models_file.read_text()  # comments survive the rewrite

    out = io.StringIO()
    code = await run_canaries_command(
        _node_toml(tmp_path, models_file, None), None, engines={TINY: local_engine}, out=out
    )
    assert code == 0, out.getvalue()
    assert out.getvalue().startswith(f"OK     {TINY} on local: 2/2 match (100%)")


async def test_a_changed_recording_is_drift(tmp_path: Path, local_engine: Provider) -> None:
    models_file = await _record(tmp_path, local_engine)
    first = load_models_file(models_file).get(TINY).canaries[0].expected
    # what a changed model file looks like from here: its output no longer matches the recording
    record_canaries_into_file(models_file, TINY, [first, "something else entirely"])
    out = io.StringIO()
    code = await run_canaries_command(
        _node_toml(tmp_path, models_file, None), [TINY], engines={TINY: local_engine}, out=out
    )
    report = out.getvalue()
    assert code == 1, report
    assert report.startswith(f"DRIFT  {TINY} on local: 1/2 match (50%)")
    assert "canary #1" in report and "differs at char 0" in report
    assert "Canary two" not in report  # the prompt is shown as a digest only


async def test_unknown_names_and_missing_canaries_are_usage_errors(
    tmp_path: Path, local_engine: Provider
) -> None:
    plain = tmp_path / "plain.toml"
    plain.write_text((ROOT / "models.toml").read_text())
    if not load_models_file(plain).get(TINY).canaries:
        code = await record_canaries_command(plain, tmp_path / "data", TINY, engine=local_engine)
        assert code == 2
    assert await record_canaries_command(plain, tmp_path / "data", "no-such-model", engine=local_engine) == 2
    config = _node_toml(tmp_path, plain, None)
    assert await run_canaries_command(config, ["no-such-model"], engines={TINY: local_engine}) == 2
    assert await run_canaries_command(tmp_path / "missing.toml", None, engines={}) == 2


async def test_external_provider_baseline_then_drift(tmp_path: Path, local_engine: Provider) -> None:
    models_file = await _record(tmp_path, local_engine)
    with FakeUpstream(text="Answer from the pinned external model.") as fake:
        config = _node_toml(tmp_path, models_file, fake)
        out = io.StringIO()
        code = await run_canaries_command(config, ["tiny-plus"], engines={TINY: local_engine}, out=out)
        assert code == 0, out.getvalue()
        assert f"BASELINE  {TINY} on fake-eu ({EXTERNAL_MODEL}): recorded 2 canaries" in out.getvalue()
        assert (tmp_path / "data" / BASELINES_FILE).exists()
        sent = [r.json() for r in fake.requests]
        assert [b["messages"][-1]["content"] for b in sent] == [
            "Canary one: the quick brown fox",
            "Canary two: 1 2 3 4",
        ]
        assert all(b["temperature"] == 0 for b in sent)

        out = io.StringIO()
        assert await run_canaries_command(config, None, engines={TINY: local_engine}, out=out) == 0
        assert f"OK     {TINY} on fake-eu ({EXTERNAL_MODEL}): 2/2 match" in out.getvalue()

        fake.default = Reply(text="A different model answers now.")  # same name, new weights
        out = io.StringIO()
        assert await run_canaries_command(config, None, engines={TINY: local_engine}, out=out) == 1
        assert f"DRIFT  {TINY} on fake-eu ({EXTERNAL_MODEL}): 0/2 match (0%)" in out.getvalue()
        assert f"OK     {TINY} on local: 2/2 match" in out.getvalue()


async def test_scheduled_job_exports_ratio_and_audits_drift(tmp_path: Path, local_engine: Provider) -> None:
    models_file = await _record(tmp_path, local_engine)
    with FakeUpstream(text="Stable external answer.") as fake:
        config = _node_toml(tmp_path, models_file, fake)
        assert await run_canaries_command(config, None, engines={TINY: local_engine}) == 0  # baseline
        (tmp_path / "node").mkdir(mode=0o700)  # the audit log refuses a folder open to others
        setup = node_setup(
            tmp_path / "node", models_file=models_file, data_dir=tmp_path / "data", extra=_external(fake)
        )
        async with running_node(setup, {TINY: local_engine}) as node:
            registry = node.state.metrics.registry

            def ratio(provider: str) -> float | None:
                return registry.get_sample_value(
                    "bastion_canary_match_ratio", {"model": TINY, "provider": provider}
                )

            async with canary_job(node.state, interval_s=0.05) as scheduler:
                deadline = time.monotonic() + 60
                while ratio("local") is None or ratio("fake-eu") is None:
                    assert time.monotonic() < deadline, "the canary job never reported"
                    await _tick()
                assert ratio("local") == 1.0 and ratio("fake-eu") == 1.0
                await scheduler.aclose()  # stop the schedule; run by hand from here

                fake.default = Reply(text="Changed behind the same name.")
                reports = await scheduler.run_once()
                assert {(r.provider, r.drifted) for r in reports} == {("local", False), ("fake-eu", True)}
                assert ratio("fake-eu") == 0.0
                assert (
                    registry.get_sample_value(
                        "bastion_canary_mismatches", {"model": TINY, "provider": "fake-eu"}
                    )
                    == 2
                )
        # the node is closed: the log's open columns say what was recorded
        conn = sqlite3.connect(tmp_path / "node" / "audit.db")
        try:
            types = [r["type"] for r in export_records(conn, keyring=None)]
        finally:
            conn.close()
        assert types.count("canary.mismatch") == 1


def _external(fake: FakeUpstream) -> str:
    return f"""
[[providers]]
name = "fake-eu"
kind = "openai"
base_url = "{fake.openai_base}"
region = "eu-west"
models = {{ "{EXTERNAL_MODEL}" = {{ input_per_mtok = 1.0, output_per_mtok = 2.0 }} }}

[[routes]]
alias = "tiny-plus"
local = "{TINY}"
fallbacks = [{{ provider = "fake-eu", model = "{EXTERNAL_MODEL}" }}]
"""


async def _tick() -> None:
    await asyncio.sleep(0.02)  # yield to the job while polling its condition (deadline above)
