"""``LocalReranker`` on the real tiny cross-encoder: vLLM's score path, scores in (0, 1), refusals."""

from __future__ import annotations

import math
from pathlib import Path

import msgspec
import pytest

from serving.errors import BadRequestError, EngineUnavailableError
from serving.models import ModelSpec
from serving.rerank import LocalReranker, Reranker, RerankRequest
from serving.tiny import TINY_FILES, build_tiny_rerank

pytestmark = pytest.mark.engine

DOCS = (
    "Metoprolol tartrate 50 mg twice daily lowers the heart rate.",
    "The canteen serves soup on Mondays and fish on Fridays.",
    "Refunds for account ACC-77-1234 go through the treasury desk.",
)


def test_two_builds_are_byte_identical_and_match_the_pins(
    tmp_path: Path, tiny_rerank_spec: ModelSpec
) -> None:
    from serving.pins import sha256_file

    a, b = build_tiny_rerank(tmp_path / "a"), build_tiny_rerank(tmp_path / "b")
    hashes = {name: sha256_file(a / name) for name in TINY_FILES}
    assert hashes == {name: sha256_file(b / name) for name in TINY_FILES} == tiny_rerank_spec.files
    assert tiny_rerank_spec.task == "rerank"


async def test_scores_are_the_sigmoid_of_the_engines_logits_per_pair(rerank_engine: LocalReranker) -> None:
    assert isinstance(rerank_engine, Reranker)
    out = await rerank_engine.rerank(RerankRequest(request_id="r", query="metoprolol dose", documents=DOCS))
    assert len(out.scores) == len(out.logits) == 3 and out.prompt_tokens > 3 * 4
    for score, logit in zip(out.scores, out.logits, strict=True):
        assert 0.0 < score < 1.0 and math.isclose(score, 1 / (1 + math.exp(-logit)), rel_tol=1e-9)
    # a cross-encoder reads the pair: another query scores the same documents differently
    other = await rerank_engine.rerank(RerankRequest(request_id="r2", query="canteen fish", documents=DOCS))
    assert other.logits != out.logits
    # deterministic: the same pairs give the same scores, one at a time or in a batch
    alone = await rerank_engine.rerank(
        RerankRequest(request_id="r3", query="metoprolol dose", documents=DOCS[1:2])
    )
    assert math.isclose(alone.logits[0], out.logits[1], rel_tol=1e-4, abs_tol=1e-5)


async def test_a_document_longer_than_the_context_is_truncated_not_refused(
    rerank_engine: LocalReranker,
) -> None:
    long_doc = "heart rate " * 3000
    out = await rerank_engine.rerank(RerankRequest(request_id="r", query="dose", documents=(long_doc,)))
    assert out.prompt_tokens == rerank_engine.max_model_len and 0 < out.scores[0] < 1


async def test_refusals(rerank_engine: LocalReranker, tiny_rerank_spec: ModelSpec, tmp_path: Path) -> None:
    with pytest.raises(BadRequestError) as caught:
        await rerank_engine.rerank(RerankRequest(request_id="r", query="  ", documents=DOCS))
    assert caught.value.param == "query"
    assert (await rerank_engine.rerank(RerankRequest(request_id="r", query="q", documents=()))).scores == ()
    from serving.protocol import ChatMessage, GenerationRequest

    stream = rerank_engine.stream(
        GenerationRequest(request_id="r", model="m", messages=(ChatMessage(role="user", content="hi"),))
    )
    with pytest.raises(BadRequestError, match="is a reranker") as refused:
        await stream.__anext__()
    assert refused.value.param == "model"
    idle = LocalReranker(tiny_rerank_spec, tmp_path)  # never started
    with pytest.raises(EngineUnavailableError):
        await idle.rerank(RerankRequest(request_id="r", query="q", documents=DOCS))


def test_rerank_models_carry_no_generation_settings(tiny_rerank_spec: ModelSpec) -> None:
    raw = msgspec.to_builtins(tiny_rerank_spec)
    with pytest.raises(msgspec.ValidationError, match="a rerank model has none"):
        msgspec.convert({**raw, "tool_parser": "hermes"}, ModelSpec)
