"""The ``/v1/embeddings`` wire schema: strict decoding, the shapes of ``input``, the encodings."""

from __future__ import annotations

import base64
import struct

import pytest

from node.embedding_wire import MAX_INPUTS, EmbeddingsRequest, embeddings_body
from node.wire import decode_request
from serving.errors import BadRequestError


def _decode(body: str) -> EmbeddingsRequest:
    return decode_request(body.encode(), EmbeddingsRequest)


@pytest.mark.parametrize(
    ("body", "texts", "tokens"),
    [
        ('{"model": "m", "input": "hi"}', ("hi",), None),
        ('{"model": "m", "input": ["a", "b"]}', ("a", "b"), None),
        ('{"model": "m", "input": [1, 2, 3]}', None, ((1, 2, 3),)),
        ('{"model": "m", "input": [[1], [2, 3]]}', None, ((1,), (2, 3))),
    ],
)
def test_input_takes_every_openai_shape(
    body: str, texts: tuple[str, ...] | None, tokens: tuple[tuple[int, ...], ...] | None
) -> None:
    assert _decode(body).inputs() == (texts, tokens)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ('{"model": "m", "input": "x", "truncate_prompt_tokens": 4}', "truncate_prompt_tokens"),
        ('{"model": "m", "input": "x", "encoding_format": "binary"}', "encoding_format"),
        ('{"model": "m", "input": "x", "dimensions": 0}', "dimensions"),
        ('{"model": "m"}', None),
        ('{"model": "m", "input": {"text": "x"}}', "input"),
    ],
)
def test_unknown_and_invalid_fields_are_400s_naming_them(body: str, param: str | None) -> None:
    with pytest.raises(BadRequestError) as caught:
        _decode(body)
    assert caught.value.param == param
    if param is None:
        assert "input" in caught.value.message


@pytest.mark.parametrize(
    "value", ["[]", '["a", 1]', '[[1], "a"]', "[1, [2]]", "[" + ", ".join(['"a"'] * (MAX_INPUTS + 1)) + "]"]
)
def test_an_empty_mixed_or_oversized_input_is_refused(value: str) -> None:
    request = _decode('{"model": "m", "input": ' + value + "}")
    with pytest.raises(BadRequestError) as caught:
        request.inputs()
    assert caught.value.param == "input"


def test_one_token_array_may_be_longer_than_the_input_count_limit() -> None:
    request = _decode('{"model": "m", "input": [' + ", ".join(["7"] * (MAX_INPUTS + 1)) + "]}")
    assert request.inputs() == (None, ((7,) * (MAX_INPUTS + 1),))


def test_vectors_are_float_or_little_endian_float32_base64() -> None:
    vector = struct.pack("<3f", 0.5, -1.25, 3.0)
    floats = embeddings_body(model="m", vectors=[vector], prompt_tokens=4, encoding_format="float")
    assert floats["data"] == [{"object": "embedding", "index": 0, "embedding": [0.5, -1.25, 3.0]}]
    assert floats["usage"] == {"prompt_tokens": 4, "total_tokens": 4}
    b64 = embeddings_body(model="m", vectors=[vector, vector], prompt_tokens=4, encoding_format="base64")
    assert [d["index"] for d in b64["data"]] == [0, 1]
    assert base64.b64decode(b64["data"][1]["embedding"]) == vector
