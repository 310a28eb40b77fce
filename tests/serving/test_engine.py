"""The local engine on the tiny model: streaming, usage, context limits, cache isolation, aborts."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path

import pytest

from serving.egress import NO_EGRESS_ENV
from serving.engine import LocalEngine
from serving.errors import BadRequestError, ContextLengthExceededError
from serving.protocol import ChatMessage, Delta, GenerationRequest, Provider, SamplingOptions

pytestmark = pytest.mark.engine


def _chat(text: str, **sampling: object) -> GenerationRequest:
    return GenerationRequest(
        request_id=f"t-{uuid.uuid4().hex[:8]}",
        model="bastion-tiny",
        messages=(ChatMessage(role="system", content="be brief"), ChatMessage(role="user", content=text)),
        sampling=SamplingOptions(**sampling),  # type: ignore[arg-type]
    )


def _completion(prompt: str, *, cache_salt: str | None = None, **sampling: object) -> GenerationRequest:
    return GenerationRequest(
        request_id=f"t-{uuid.uuid4().hex[:8]}",
        model="bastion-tiny",
        prompt=prompt,
        cache_salt=cache_salt,
        sampling=SamplingOptions(**sampling),  # type: ignore[arg-type]
    )


async def _collect(engine: LocalEngine, request: GenerationRequest) -> list[Delta]:
    return [d async for d in engine.stream(request)]


async def _wait_for(predicate: object, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.02)


@pytest.fixture(scope="module")
def hf_tokenizer(tiny_model_dir: Path) -> object:
    """The model's tokenizer loaded independently of the engine, to check its counts."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


async def test_is_a_provider_and_describes_its_pinned_revision(local_engine: LocalEngine) -> None:
    assert isinstance(local_engine, Provider)
    info = local_engine.describe()
    assert info.kind == "local" and info.region == "local"
    assert info.models == ("bastion-tiny",)
    assert info.revisions == {"bastion-tiny": local_engine.spec.pinned_revision}
    health = await local_engine.health()
    assert health.healthy and health.last_ok_s is not None


async def test_no_egress_switches_are_set_after_start(local_engine: LocalEngine) -> None:
    for key, value in NO_EGRESS_ENV.items():
        assert os.environ.get(key) == value, key
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE is True


async def test_chat_stream_usage_matches_the_tokenizer(
    local_engine: LocalEngine, hf_tokenizer: object
) -> None:
    req = _chat("hello world, how are you?", max_tokens=12, ignore_eos=True, temperature=0.0)
    deltas = await _collect(local_engine, req)
    last = deltas[-1]
    assert last.finish_reason == "length"
    assert all(d.finish_reason is None for d in deltas[:-1])
    text = hf_tokenizer.apply_chat_template(  # type: ignore[attr-defined]
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello world, how are you?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    expected_prompt = len(hf_tokenizer.encode(text, add_special_tokens=False))  # type: ignore[attr-defined]
    assert last.prompt_tokens == expected_prompt == local_engine.count_prompt_tokens(req)
    assert last.completion_tokens == 12
    completion_ids = hf_tokenizer.encode("".join(d.text for d in deltas), add_special_tokens=False)  # type: ignore[attr-defined]
    assert len(completion_ids) > 0
    counts = [d.completion_tokens for d in deltas]
    assert counts == sorted(counts)


async def test_completion_stream(local_engine: LocalEngine, hf_tokenizer: object) -> None:
    prompt = "The engine streams tokens to the tenant"
    deltas = await _collect(local_engine, _completion(prompt, max_tokens=5, ignore_eos=True))
    assert deltas[-1].finish_reason == "length"
    assert deltas[-1].completion_tokens == 5
    assert deltas[-1].prompt_tokens == len(hf_tokenizer.encode(prompt, add_special_tokens=True))  # type: ignore[attr-defined]


async def test_same_seed_same_text(local_engine: LocalEngine) -> None:
    a = await _collect(
        local_engine, _completion("seeded", max_tokens=8, ignore_eos=True, seed=7, temperature=1.0)
    )
    b = await _collect(
        local_engine, _completion("seeded", max_tokens=8, ignore_eos=True, seed=7, temperature=1.0)
    )
    assert "".join(d.text for d in a) == "".join(d.text for d in b)


async def test_default_max_tokens_is_the_rest_of_the_context(local_engine: LocalEngine) -> None:
    deltas = await _collect(local_engine, _completion("x " * 2000, ignore_eos=True))
    assert deltas[-1].finish_reason == "length"
    assert deltas[-1].prompt_tokens + deltas[-1].completion_tokens == local_engine.max_model_len


async def test_context_length_exceeded_before_anything_is_queued(local_engine: LocalEngine) -> None:
    long_prompt = "alpha beta " * 2000
    with pytest.raises(ContextLengthExceededError) as info:
        await anext(local_engine.stream(_completion(long_prompt, max_tokens=1)))
    assert info.value.param == "prompt" and info.value.status_code == 400
    assert info.value.code == "context_length_exceeded"

    with pytest.raises(ContextLengthExceededError) as info:
        await anext(local_engine.stream(_chat("hi", max_tokens=local_engine.max_model_len)))
    assert info.value.param == "max_tokens"

    with pytest.raises(ContextLengthExceededError) as info:
        await anext(local_engine.stream(_chat(long_prompt, max_tokens=1)))
    assert info.value.param == "messages"
    assert local_engine.stats().unfinished == 0


async def test_invalid_sampling_is_a_bad_request(local_engine: LocalEngine) -> None:
    with pytest.raises(BadRequestError):
        await anext(local_engine.stream(_completion("x", max_tokens=0)))
    with pytest.raises(BadRequestError):
        await anext(local_engine.stream(_completion("x", max_tokens=4, top_p=0.0)))


async def test_cache_salt_isolates_the_prefix_cache_per_tenant(local_engine: LocalEngine) -> None:
    # > 2 full 128-token blocks, unique per run so earlier tests cannot have cached it
    shared = f"{uuid.uuid4().hex} " + "the tenant sends a long shared system prompt to the model " * 40
    first = await _collect(local_engine, _completion(shared, cache_salt="tenant-a", max_tokens=1))
    assert first[-1].prompt_tokens > 256
    assert first[-1].cached_tokens == 0
    other = await _collect(local_engine, _completion(shared, cache_salt="tenant-b", max_tokens=1))
    assert other[-1].cached_tokens == 0
    again = await _collect(local_engine, _completion(shared, cache_salt="tenant-a", max_tokens=1))
    assert again[-1].cached_tokens >= 128
    assert local_engine.stats().prefix_cache_hits >= again[-1].cached_tokens


async def test_closing_the_stream_aborts_the_request(local_engine: LocalEngine) -> None:
    stream = local_engine.stream(_completion("abort me", max_tokens=1500, ignore_eos=True))
    got = 0
    async for _delta in stream:
        got += 1
        if got == 3:
            break
    assert local_engine.stats().unfinished == 1
    health = await local_engine.health()
    assert health.running + health.waiting >= 1
    await stream.aclose()  # type: ignore[attr-defined]
    await _wait_for(lambda: local_engine.stats().unfinished == 0)
    # a fresh step's scheduler figures show nothing left running in the engine core
    await local_engine.probe()
    await _wait_for(lambda: local_engine.stats().running == 0)


async def test_cancelled_consumer_aborts_the_request(local_engine: LocalEngine) -> None:
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in local_engine.stream(_completion("cancel me", max_tokens=1500, ignore_eos=True)):
            started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _wait_for(lambda: local_engine.stats().unfinished == 0)


async def test_concurrent_streams(local_engine: LocalEngine) -> None:
    lengths = [3, 5, 8, 13, 21, 34, 2, 1]
    results = await asyncio.gather(
        *(
            _collect(local_engine, _completion(f"stream {i}", max_tokens=n, ignore_eos=True))
            for i, n in enumerate(lengths)
        )
    )
    assert [r[-1].completion_tokens for r in results] == lengths
    assert all(r[-1].finish_reason == "length" for r in results)
    assert local_engine.stats().unfinished == 0


async def test_stop_string_ends_with_stop(local_engine: LocalEngine) -> None:
    free = await _collect(local_engine, _completion("stop test", max_tokens=20, ignore_eos=True, seed=3))
    text = "".join(d.text for d in free)
    # stop on a piece of text the model is known (by seed) to produce
    stop = text.strip()[:2] if len(text.strip()) >= 2 else text
    stopped = await _collect(local_engine, _completion("stop test", max_tokens=20, seed=3, stop=(stop,)))
    assert stopped[-1].finish_reason == "stop"
    assert stop not in "".join(d.text for d in stopped)


async def test_probe_on_demand_is_a_real_generation(local_engine: LocalEngine) -> None:
    before = (await local_engine.health()).last_ok_s
    health = await local_engine.probe()
    assert health.healthy
    assert health.last_ok_s is not None and before is not None and health.last_ok_s > before


async def test_engine_stats_reach_the_sink_and_vllm_registers_no_metrics(local_engine: LocalEngine) -> None:
    import prometheus_client

    await _collect(local_engine, _completion("count my step", max_tokens=4))
    await local_engine.probe()
    stats = local_engine.stats()
    assert stats.prefix_cache_queries > 0  # scheduler stats arrived through our logger
    # our logger stands in for vLLM's PrometheusStatLogger: nothing of vLLM's in the global registry
    names = {m.name for m in prometheus_client.REGISTRY.collect()}
    assert not [n for n in names if n.startswith("vllm")], sorted(names)


async def test_engine_bench_round_streams_every_token(local_engine: LocalEngine) -> None:
    from serving.engine_bench import run_round

    result = await run_round(local_engine, seed=7, requests=6, concurrency=3, input_len=8, output_len=5)
    assert result.failed == 0
    # every request streamed exactly output_len tokens (ignore_eos, min_tokens)
    assert result.tok_s / result.req_s == pytest.approx(5)
    assert 0 < result.ttft_p50_ms <= result.ttft_p99_ms
