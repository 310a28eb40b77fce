"""Chunking with the tiny model's real tokenizer, attribute filters, fusion, de-duplication, packing."""

from __future__ import annotations

import itertools
from pathlib import Path

import msgspec
import pytest

from node.context import (
    Candidate,
    Chunk,
    FileTokenizer,
    Hit,
    StaticChunking,
    dedupe,
    pack,
    parse_filter,
    query_terms,
    reciprocal_rank_fusion,
    static_chunks,
)
from serving.errors import BadRequestError


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> FileTokenizer:
    return FileTokenizer.of_model(tiny_model_dir)


def test_static_chunks_have_the_size_and_overlap_asked(tokenizer: FileTokenizer) -> None:
    text = " ".join(f"word{i} of the policy text." for i in range(400))
    strategy = StaticChunking(max_chunk_size_tokens=100, chunk_overlap_tokens=50)
    spans = static_chunks(text, tokenizer, strategy)
    total = len(tokenizer.offsets(text))
    assert spans[0].start_token == 0 and spans[-1].end_token == total
    for a, b in itertools.pairwise(spans):
        assert b.start_token == a.start_token + 50 and a.end_token - b.start_token == 50
    for s in spans:
        assert s.end_token - s.start_token <= 100
        assert tokenizer.count(s.text) <= 101  # cut at token offsets: re-tokenising may merge one
        assert s.text in text
    assert [s.index for s in spans] == list(range(len(spans)))


def test_chunking_strategy_limits_are_openais() -> None:
    for bad in (
        {"max_chunk_size_tokens": 99},
        {"max_chunk_size_tokens": 4097},
        {"max_chunk_size_tokens": 800, "chunk_overlap_tokens": 401},
    ):
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert(bad, StaticChunking)
    assert StaticChunking() == StaticChunking(max_chunk_size_tokens=800, chunk_overlap_tokens=400)


def test_filters_follow_openais_shapes() -> None:
    f = parse_filter(
        {
            "type": "and",
            "filters": [
                {"type": "gte", "key": "year", "value": 2024},
                {
                    "type": "or",
                    "filters": [
                        {"type": "eq", "key": "region", "value": "eu"},
                        {"type": "in", "key": "region", "value": ["ch", "uk"]},
                    ],
                },
            ],
        }
    )
    assert f.matches({"year": 2025, "region": "eu"})
    assert f.matches({"year": 2024, "region": "ch"})
    assert not f.matches({"year": 2023, "region": "eu"})
    assert not f.matches({"year": "2025", "region": "eu"})  # a string is not a number
    assert not f.matches({"region": "eu"})  # no year: fails gte
    assert parse_filter({"type": "ne", "key": "draft", "value": True}).matches({})
    assert not parse_filter({"type": "eq", "key": "n", "value": 1}).matches({"n": True})
    assert parse_filter({"type": "nin", "key": "n", "value": [1, 2]}).matches({"n": 3})
    for bad, param in [
        ({"type": "like", "key": "a", "value": 1}, "filters.type"),
        ({"type": "eq", "key": "a"}, "filters.value"),
        ({"type": "eq", "key": "a", "value": {"x": 1}}, "filters.value"),
        ({"type": "and", "filters": [{"type": "eq", "key": "", "value": 1}]}, "filters.filters[0].key"),
        ({"type": "eq", "key": "a", "value": 1, "extra": 2}, "filters"),
        ({"type": "or", "filters": []}, "filters"),
    ]:
        with pytest.raises(BadRequestError) as info:
            parse_filter(bad)
        assert info.value.param == param


def test_query_terms_keep_identifiers_whole() -> None:
    terms = query_terms("Dose of metoprolol for account DE44-5001/7?")
    assert terms == ["Dose", "metoprolol", "account", "DE44-5001/7"]
    assert query_terms("what is it?") == ["what", "is", "it"]  # nothing but function words: keep them


def _c(key: int) -> Candidate:
    return Candidate(store_id="vs", key=key, raw=0.0)


def test_reciprocal_rank_fusion_rewards_agreement() -> None:
    fused = reciprocal_rank_fusion([_c(1), _c(2), _c(3)], [_c(3), _c(4)], k=60)
    assert [f.key for f in fused] == [3, 1, 2, 4]  # 2 and 4 tie (second in one ranking): by key
    assert fused[0].fulltext_rank == 3 and fused[0].vector_rank == 1
    assert fused[1].score == pytest.approx(0.5)  # first in one ranking, absent from the other
    assert reciprocal_rank_fusion([_c(7)], [_c(7)], k=60)[0].score == pytest.approx(1.0)
    assert reciprocal_rank_fusion([_c(7), _c(8)], None, k=60)[1].score == pytest.approx(61 / 62)


def _hit(file_id: str, start: int, end: int, score: float, text: str = "x") -> Hit:
    chunk = Chunk(
        store_id="vs",
        key=start,
        file_id=file_id,
        filename="f",
        index=start,
        start_token=start,
        end_token=end,
        text=text,
        attributes={},
    )
    return Hit(chunk=chunk, score=score, fulltext_rank=None, vector_rank=None)


def test_overlapping_chunks_of_a_file_are_returned_once() -> None:
    hits = [
        _hit("a", 400, 1200, 0.9),
        _hit("a", 0, 800, 0.8),
        _hit("b", 0, 800, 0.7),
        _hit("a", 1200, 2000, 0.6),
    ]
    assert [(h.chunk.file_id, h.chunk.start_token) for h in dedupe(hits)] == [
        ("a", 400),
        ("b", 0),
        ("a", 1200),
    ]


def test_packing_fits_whole_chunks_under_the_budget(tokenizer: FileTokenizer) -> None:
    hits = [
        _hit("a", 0, 1, 0.9, "alpha " * 60),
        _hit("b", 0, 1, 0.8, "beta " * 200),
        _hit("c", 0, 1, 0.7, "gamma"),
    ]
    packed = pack(hits, budget_tokens=100, count_tokens=tokenizer.count, overhead=5)
    assert [h.chunk.file_id for h in packed.hits] == ["a", "c"] and packed.dropped == 1
    assert packed.tokens == tokenizer.count("alpha " * 60) + tokenizer.count("gamma") + 10 <= 100
