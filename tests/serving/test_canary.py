"""Drift canaries: record, write back into models.toml, replay, and catch a provider that changed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
import tomlkit

from serving.canary import (
    CANARY_SEED,
    CanaryReport,
    CanaryScheduler,
    CanaryTarget,
    record_canaries,
    record_canaries_into_file,
    run_canaries,
)
from serving.engine import LocalEngine
from serving.errors import UpstreamError
from serving.models import CanaryCase, ModelsConfigError, load_models_file
from serving.protocol import Delta, GenerationRequest, Health, Provider, ProviderInfo

ROOT = Path(__file__).resolve().parents[2]

MODELS_TOML = """\
# operators' comment: keep me
[[models]]
name = "tiny-a"
builder = "tiny"
max_model_len = 256

[[models.canaries]]
prompt = "Count: one two three"  # synthetic prompt
max_tokens = 4

[[models.canaries]]
prompt = "Colours: red green"
max_tokens = 6
expected = "stale"

[models.files]
"config.json" = "8bcf8da6e25e50f4d6f0c893115566f4120a9ad0f5ed9195fd4574b02a8a36fe"

# the second model must stay untouched
[[models]]
name = "tiny-b"
builder = "tiny"
max_model_len = 256
canaries = [{ prompt = "Other model", max_tokens = 2, expected = "keep" }]

[models.files]
"config.json" = "8bcf8da6e25e50f4d6f0c893115566f4120a9ad0f5ed9195fd4574b02a8a36fe"
"""


class ScriptedProvider:
    """A real provider whose answer to each prompt is a table the test can change."""

    def __init__(self, answers: dict[str, str], *, name: str = "scripted") -> None:
        self.answers = answers
        self.name = name
        self.requests: list[GenerationRequest] = []
        self.failing: set[str] = set()

    def describe(self) -> ProviderInfo:
        return ProviderInfo(name=self.name, kind="openai", region="eu", models=("tiny-a",))

    async def health(self) -> Health:
        return Health(healthy=True)

    def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        self.requests.append(request)
        return self._stream(request)

    async def _stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        text = request.prompt if request.prompt is not None else (request.messages or ())[-1].content or ""
        if text in self.failing:
            raise UpstreamError("upstream answered 500")
        answer = self.answers[text]
        # two deltas, as a stream would deliver them
        yield Delta(text=answer[: len(answer) // 2], completion_tokens=1)
        yield Delta(text=answer[len(answer) // 2 :], completion_tokens=2, finish_reason="length")


def _cases(*items: tuple[str, str]) -> tuple[CanaryCase, ...]:
    # config is built by decoding, as models.toml would be
    return msgspec.convert(
        [{"prompt": p, "max_tokens": 8, "expected": e} for p, e in items], tuple[CanaryCase, ...]
    )


async def test_replay_matches_and_a_changed_answer_is_a_mismatch() -> None:
    provider = ScriptedProvider({"alpha": "one two three", "beta": "red green blue", "gamma": "x"})
    cases = _cases(("alpha", "one two three"), ("beta", "red green blue"), ("gamma", ""))
    report = await run_canaries(provider, "tiny-a", cases)
    assert isinstance(provider, Provider)
    assert (report.total, report.matched, report.unrecorded, report.match_ratio) == (3, 2, 1, 1.0)
    assert not report.drifted and report.provider == "scripted"
    # greedy, fixed seed, completion mode, a cache salt of its own, a fresh request id each
    for req in provider.requests:
        assert req.sampling.temperature == 0.0 and req.sampling.seed == CANARY_SEED
        assert req.sampling.max_tokens == 8 and req.messages is None
        assert req.cache_salt == "bastion-canary" and req.tenant == ""
    assert len({r.request_id for r in provider.requests}) == 2

    provider.answers["beta"] = "red green BLUE"  # the model behind the name changed
    report = await run_canaries(provider, "tiny-a", cases)
    assert report.drifted and report.matched == 1 and report.match_ratio == 0.5
    (mismatch,) = report.mismatches
    assert mismatch.index == 1 and mismatch.diverges_at == len("red green ")
    assert mismatch.expected_snippet.endswith("blue") and mismatch.got_snippet.endswith("BLUE")
    assert mismatch.expected_sha256 != mismatch.got_sha256 and len(mismatch.prompt_sha256) == 64
    meta = report.to_audit_meta()
    assert meta["match_ratio"] == 0.5 and meta["mismatches"][0]["index"] == 1
    assert "beta" not in msgspec.json.encode(meta).decode()  # the prompt only as a digest


async def test_a_failing_provider_is_an_error_not_a_mismatch() -> None:
    provider = ScriptedProvider({"alpha": "a", "beta": "b"})
    provider.failing.add("beta")
    report = await run_canaries(provider, "tiny-a", _cases(("alpha", "a"), ("beta", "b")))
    assert report.matched == 1 and not report.mismatches
    assert [(e.index, e.code) for e in report.errors] == [(1, "upstream_error")]
    provider.failing.add("alpha")
    report = await run_canaries(provider, "tiny-a", _cases(("alpha", "a"), ("beta", "b")))
    assert report.match_ratio is None and len(report.errors) == 2


async def test_chat_mode_sends_one_user_message() -> None:
    provider = ScriptedProvider({"alpha": "a"})
    assert await record_canaries(provider, "gpt-4o-2024-08-06", _cases(("alpha", "")), chat=True) == ("a",)
    (req,) = provider.requests
    assert req.prompt is None and req.messages is not None
    assert [(m.role, m.content) for m in req.messages] == [("user", "alpha")]


async def test_recording_fails_loudly_rather_than_write_a_hole() -> None:
    provider = ScriptedProvider({"alpha": "a"})
    provider.failing.add("alpha")
    with pytest.raises(UpstreamError):
        await record_canaries(provider, "tiny-a", _cases(("alpha", "")))


async def test_record_into_models_toml_rewrites_only_that_models_canaries(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(MODELS_TOML)
    path.chmod(0o644)
    spec = load_models_file(path).get("tiny-a")
    provider = ScriptedProvider(
        {"Count: one two three": ' four "five"\n', "Colours: red green": "blue \u2028 ok"}
    )
    outputs = await record_canaries(provider, "tiny-a", spec.canaries)
    record_canaries_into_file(path, "tiny-a", outputs)

    text = path.read_text()
    assert "# operators' comment: keep me" in text and "# synthetic prompt" in text
    assert "# the second model must stay untouched" in text
    assert path.stat().st_mode & 0o777 == 0o644
    models = load_models_file(path)
    assert [c.expected for c in models.get("tiny-a").canaries] == [' four "five"\n', "blue \u2028 ok"]
    assert [c.max_tokens for c in models.get("tiny-a").canaries] == [4, 6]
    assert models.get("tiny-b").canaries[0].expected == "keep"
    report = await run_canaries(provider, "tiny-a", models.get("tiny-a").canaries)
    assert report.matched == 2 and report.match_ratio == 1.0


def test_record_into_models_toml_refuses_unknown_models_and_wrong_counts(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(MODELS_TOML)
    with pytest.raises(ModelsConfigError, match="no model named 'nope'"):
        record_canaries_into_file(path, "nope", ["x"])
    with pytest.raises(ModelsConfigError, match="2 canaries but 1 outputs"):
        record_canaries_into_file(path, "tiny-a", ["x"])
    assert path.read_text() == MODELS_TOML
    with pytest.raises(ModelsConfigError, match="cannot read"):
        record_canaries_into_file(tmp_path / "missing.toml", "tiny-a", [])


async def test_scheduler_reports_every_target_and_survives_a_failing_callback() -> None:
    good = ScriptedProvider({"alpha": "a"}, name="local")
    drifting = ScriptedProvider({"alpha": "changed"}, name="openai-eu")
    reports: list[CanaryReport] = []

    async def on_report(report: CanaryReport) -> None:
        reports.append(report)
        if report.provider == "local":
            raise RuntimeError("metrics sink down")

    targets = [
        CanaryTarget(provider=good, model="tiny-a", cases=_cases(("alpha", "a"))),
        CanaryTarget(provider=drifting, model="gpt-4o-2024-08-06", cases=_cases(("alpha", "a")), chat=True),
    ]
    scheduler = CanaryScheduler(targets, interval_s=0.001, on_report=on_report)
    once = await scheduler.run_once()
    assert [r.provider for r in once] == [
        "openai-eu"
    ]  # the one whose callback raised is logged, not returned
    assert [(r.provider, r.drifted) for r in reports] == [("local", False), ("openai-eu", True)]
    assert drifting.requests[-1].messages is not None

    async with scheduler:
        deadline = time.monotonic() + 10
        while len(reports) < 8:
            assert time.monotonic() < deadline, "the schedule did not run"
            await asyncio.sleep(0.001)


# --- on the tiny model's real engine ---


class ResampledEngine:
    """The same engine behind the same name, silently run with other sampling: real drift."""

    def __init__(self, engine: LocalEngine) -> None:
        self._engine = engine

    def describe(self) -> ProviderInfo:
        return self._engine.describe()

    async def health(self) -> Health:
        return await self._engine.health()

    def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        sampling = msgspec.structs.replace(request.sampling, temperature=1.0, seed=7)
        return self._engine.stream(msgspec.structs.replace(request, sampling=sampling))


@pytest.mark.engine
async def test_record_replay_and_drift_on_the_tiny_model(local_engine: LocalEngine, tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    name = "bastion-tiny"
    # three more canaries on the tiny chat model's own entry (models.toml holds other models too)
    doc = tomlkit.parse((ROOT / "models.toml").read_text(encoding="utf-8"))
    (entry,) = [m for m in doc["models"] if m["name"] == name]
    for prompt, max_tokens in (
        ("The quick brown fox jumps over the lazy dog.", 12),
        ("1 2 3 4 5 6 7", 8),
        ("Canary: hello", 16),
    ):
        entry["canaries"].append({"prompt": prompt, "max_tokens": max_tokens})
    path.write_text(tomlkit.dumps(doc), encoding="utf-8")
    cases = load_models_file(path).get(name).canaries
    committed = len(load_models_file(ROOT / "models.toml").get(name).canaries)
    assert len(cases) == committed + 3

    outputs = await record_canaries(local_engine, name, cases)
    assert all(outputs)
    record_canaries_into_file(path, name, outputs)
    recorded = load_models_file(path).get(name)
    assert tuple(c.expected for c in recorded.canaries) == outputs
    assert recorded.files == load_models_file(ROOT / "models.toml").get(name).files  # pins untouched

    report = await run_canaries(local_engine, name, recorded.canaries)
    assert (report.matched, report.match_ratio, report.errors) == (len(cases), 1.0, ())

    drifted = await run_canaries(ResampledEngine(local_engine), name, recorded.canaries)
    assert drifted.drifted and drifted.match_ratio is not None and drifted.match_ratio < 1.0
    assert drifted.provider == report.provider  # same name, different behaviour
