"""Free-text redaction by a local model: the real engine on the tiny model, fake upstreams on loopback.

The tiny model's weights are random, so these tests prove the plumbing (schema, validation,
placeholders, fail-closed), not recall.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from router.free_text import FreeTextDetector, answer_schema, vocabulary
from router.router import Router
from serving.engine import LocalEngine as VllmEngine
from serving.errors import RedactionError
from serving.protocol import Delta, GenerationRequest, Provider
from tests.fakes import FakeUpstream, Reply
from tests.router.conftest import FakeClock, LocalEngine, chat, collect, policy, standard_config

TEXT = "Patientin Anna Schmidt, geb. 12.03.1985, wohnt Hauptstraße 5 in Berlin; Rückfragen an Dr. Weber."
_PLACEHOLDER = re.compile(r"\[[A-Z_]+_\d+\]")


def test_the_schema_allows_only_the_texts_own_words() -> None:
    words = vocabulary([TEXT, "Anna again"])
    assert words[:4] == ["Patientin", "Anna", "Schmidt", "geb"]
    assert "12.03.1985" in words and words.count("Anna") == 1 and "again" in words
    items = answer_schema(words)["properties"]["entities"]["items"]  # type: ignore[index]
    assert items["properties"]["words"]["items"] == {"enum": words}
    assert items["properties"]["type"]["enum"] == ["PERSON", "BIRTH_DATE", "ADDRESS", "RECORD_ID"]


async def test_the_local_models_answer_is_validated_and_redacted(
    local_engine: VllmEngine, upstream_a: FakeUpstream, upstream_b: FakeUpstream, key_file: Path
) -> None:
    detector = FreeTextDetector(local_engine, local_engine.name, timeout_s=120)
    entities = await detector.detect([TEXT])
    named = {w for e in entities for w in e.words}
    assert named, "the tiny model named no words; pick a text it answers for"
    assert named <= set(vocabulary([TEXT]))

    router = Router(
        standard_config(upstream_a, upstream_b, key_file),
        local={"tiny": _down(), local_engine.name: local_engine},
        clock=FakeClock(),
    )
    upstream_a.script(Reply(echo=True))
    tenant = policy(residency=["eu-west"], redact=True, redaction={"ner_model": local_engine.name})
    try:
        stream = await router.open(chat("t", tenant, text=TEXT))
        await collect(stream)
    finally:
        await router.aclose()
    assert stream.decision.route == "external:a"
    sent = upstream_a.requests[0].json()["messages"][0]["content"]
    outside = set(re.findall(r"\w(?:[\w'.\-/]*\w)?", _PLACEHOLDER.sub(" ", sent)))
    assert not named & outside, sent
    free = {
        k: v
        for k, v in stream.decision.redactions.items()
        if k in ("PERSON", "BIRTH_DATE", "ADDRESS", "RECORD_ID")
    }
    assert sum(free.values()) == len(
        [p for p in _PLACEHOLDER.findall(sent) if not p.startswith(("[PHONE", "[EMAIL"))]
    )


def _down() -> LocalEngine:
    engine = LocalEngine()
    engine.healthy = False
    return engine


class _Stalled(LocalEngine):
    """A local engine that never answers."""

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        self.calls.append(request)
        await asyncio.Event().wait()
        yield Delta()


@pytest.mark.parametrize(
    ("answer", "fault", "reason"),
    [
        ('{"entities": [{"type": "PERSON", "words": ["Anna", "Schmidt"]}]}', None, None),
        ('{"entities": [{"type": "PERSON", "words": ["Anna", "Schmitt"]}]}', None, "free-text-invalid"),
        ('{"entities": [{"type": "PERSON"', None, "free-text-invalid"),
        ('{"entities": [{"type": "SECRET", "words": ["Anna"]}]}', None, "free-text-invalid"),
        ("", "down", "free-text-unavailable"),
        ("", "stalled", "free-text-timeout"),
        ("", "not-served", "free-text-unavailable"),
    ],
    ids=["valid", "word-not-in-text", "not-json", "unknown-type", "engine-down", "stalled", "not-served"],
)
async def test_free_text_fails_closed(
    upstream_a: FakeUpstream,
    upstream_b: FakeUpstream,
    key_file: Path,
    answer: str,
    fault: str | None,
    reason: str | None,
) -> None:
    ner = _Stalled(model="ner") if fault == "stalled" else LocalEngine(model="ner", text=answer)
    ner.fail = fault == "down"
    local: dict[str, Provider] = {"tiny": _down()}
    if fault != "not-served":
        local["ner"] = ner
    router = Router(standard_config(upstream_a, upstream_b, key_file), local=local, clock=FakeClock())
    upstream_a.script(Reply(echo=True))
    tenant = policy(residency=["eu-west"], redact=True, redaction={"ner_model": "ner", "ner_timeout_s": 0.5})
    try:
        if reason is None:
            stream = await router.open(chat("t", tenant, text=TEXT))
            await collect(stream)
            sent = upstream_a.requests[0].json()["messages"][0]["content"]
            assert sent.startswith("Patientin [PERSON_1], geb.") and "Anna" not in sent
            assert stream.decision.redactions["PERSON"] == 1
            question = ner.calls[0]
            assert question.sampling.json_schema is not None and question.sampling.temperature == 0.0
            return
        with pytest.raises(RedactionError) as info:
            await router.open(chat("t", tenant, text=TEXT))
    finally:
        await router.aclose()
    assert info.value.reason == reason and info.value.status_code == 503
    assert "not sent out" in info.value.message
    assert upstream_a.requests == []
