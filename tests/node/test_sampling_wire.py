"""The sampling and output fields on the wire: what decodes into what, what is a 400 naming the
field, and how several choices and log probabilities are encoded (no engine)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from node.choices import Choices
from node.wire import ChatCompletionRequest, CompletionRequest, StreamEncoder, completion_body, decode_request
from serving.errors import BadRequestError
from serving.protocol import Delta, TokenLogprob, TopLogprob

CHAT: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def _chat(**fields: Any) -> ChatCompletionRequest:
    return decode_request(json.dumps(CHAT | fields).encode(), ChatCompletionRequest)


def _completion(**fields: Any) -> CompletionRequest:
    return decode_request(json.dumps({"model": "m", "prompt": "x"} | fields).encode(), CompletionRequest)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"n": 17}, "n"),
        ({"frequency_penalty": 2.5}, "frequency_penalty"),
        ({"presence_penalty": -3}, "presence_penalty"),
        ({"logit_bias": {"abc": 1}}, "logit_bias"),
        ({"logit_bias": {"5": 101}}, "logit_bias[...]"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "a b"}}},
            "response_format.json_schema.name",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "a", "schema": {"type": "foo"}},
                }
            },
            "response_format.json_schema.schema",
        ),
    ],
)
def test_bad_sampling_fields_are_a_400_naming_them(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequestError) as caught:
        _chat(**fields)
    assert caught.value.param == param, caught.value


def test_the_fields_a_request_sets_and_what_the_engine_is_asked() -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema, "strict": True}}
    req = _chat(
        n=3,
        logprobs=True,
        top_logprobs=4,
        logit_bias={"7": -100},
        frequency_penalty=0.5,
        presence_penalty=0,
        response_format=fmt,
    )
    assert req.fields_set() == {
        "n",
        "logprobs",
        "top_logprobs",
        "logit_bias",
        "frequency_penalty",
        "response_format",
    }
    s = req.sampling(1000)
    assert (s.n, s.logprobs, s.logit_bias, s.frequency_penalty) == (3, 4, {7: -100.0}, 0.5)
    assert json.loads(s.json_schema or "") == schema
    assert req.response_format_dict() == fmt
    # asking for nothing sets nothing: n 1, zero penalties, plain text
    plain = _chat(n=1, frequency_penalty=0, response_format={"type": "text"}, logprobs=False)
    assert plain.fields_set() == set() and plain.response_format_dict() is None
    assert plain.sampling(1000).json_schema is None and plain.sampling(1000).logprobs is None
    assert _chat(response_format={"type": "json_object"}).sampling(1000).json_schema == '{"type":"object"}'


def test_several_prompts_and_their_limits() -> None:
    assert _completion(prompt=["a"]).prompt_text() == "a"
    several = _completion(prompt=["a", "b"], n=2, logprobs=3)
    assert several.prompt_text() == ("a", "b") and several.fields_set() == {"prompt", "n", "logprobs"}
    assert several.sampling(1000).logprobs == 3
    with pytest.raises(BadRequestError) as caught:
        _completion(prompt=["a"] * 9, n=16)
    assert caught.value.param == "n"
    with pytest.raises(BadRequestError):
        _completion(prompt=[])


def _token(token: str, logprob: float) -> TokenLogprob:
    return TokenLogprob(
        token=token, logprob=logprob, utf8=tuple(token.encode()), top=(TopLogprob(token="z", logprob=-0.1),)
    )


def test_a_completion_body_has_every_choice_with_legacy_logprobs() -> None:
    answer = Choices(2)
    answer.add(Delta(text="ab", index=1, logprobs=(_token("a", -1.0), _token("b", -2.0))))
    answer.add(Delta(text="c", index=0, finish_reason="length"))
    last = Delta(index=1, finish_reason="stop", prompt_tokens=3, completion_tokens=3)
    answer.add(last)
    body = json.loads(
        completion_body(request_id="x", model="m", created=0, choices=answer.ordered(), last=last)
    )
    first, second = body["choices"]
    assert (first["index"], first["text"], first["logprobs"], first["finish_reason"]) == (
        0,
        "c",
        None,
        "length",
    )
    assert second["logprobs"] == {
        "tokens": ["a", "b"],
        "token_logprobs": [-1.0, -2.0],
        "top_logprobs": [{"z": -0.1, "a": -1.0}, {"z": -0.1, "b": -2.0}],
        "text_offset": [0, 1],
    }
    assert body["usage"]["completion_tokens"] == 3


def _events(raw: bytes) -> list[Any]:
    return [json.loads(line[6:]) for line in raw.decode().split("\n\n") if line.startswith("data: {")]


def test_streamed_choices_name_their_index_and_logprobs_keep_their_offsets() -> None:
    chat = StreamEncoder(request_id="x", model="m", chat=True, include_usage=True, choices=2)
    assert [e["choices"][0]["index"] for e in _events(chat.role())] == [0, 1]
    [chunk] = _events(chat.text("a", Delta(text="a", index=1, logprobs=(_token("a", -1.0),))))
    entry = chunk["choices"][0]
    assert entry["index"] == 1 and entry["delta"] == {"content": "a"}
    assert entry["logprobs"]["content"][0] == {
        "token": "a",
        "logprob": -1.0,
        "bytes": [97],
        "top_logprobs": [{"token": "z", "logprob": -0.1, "bytes": None}],
    }
    [end] = _events(chat.choice_end(Delta(index=1, finish_reason="stop")))
    assert end["choices"][0] == {"index": 1, "logprobs": None, "finish_reason": "stop", "delta": {}}
    legacy = StreamEncoder(request_id="x", model="m", chat=False, include_usage=False, choices=1)
    offsets = [
        _events(legacy.text(t, Delta(text=t, logprobs=(_token(t, -1.0),))))[0]["choices"][0]["logprobs"][
            "text_offset"
        ]
        for t in ("ab", "c", "de")
    ]
    assert offsets == [[0], [2], [3]]
