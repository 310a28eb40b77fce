"""The wire schema's integers are all bounded to what the audit record can store."""

from __future__ import annotations

from collections.abc import Iterator

import msgspec
import pytest

from node.feedback import FeedbackRequest
from node.wire import ChatCompletionRequest, CompletionRequest, decode_request
from serving.errors import BadRequestError

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _ints(
    t: msgspec.inspect.Type, where: str, seen: set[type]
) -> Iterator[tuple[str, msgspec.inspect.IntType]]:
    if isinstance(t, msgspec.inspect.IntType):
        yield where, t
    elif isinstance(t, msgspec.inspect.StructType):
        if t.cls in seen:
            return
        seen.add(t.cls)
        for f in t.fields:
            yield from _ints(f.type, f"{where}.{f.name}", seen)
    elif isinstance(t, msgspec.inspect.UnionType):
        for member in t.types:
            yield from _ints(member, where, seen)
    elif isinstance(t, (msgspec.inspect.ListType, msgspec.inspect.TupleType, msgspec.inspect.SetType)):
        yield from _ints(t.item_type, f"{where}[]", seen)
    elif isinstance(t, msgspec.inspect.DictType):
        yield from _ints(t.value_type, f"{where}{{}}", seen)


@pytest.mark.parametrize("kind", [ChatCompletionRequest, CompletionRequest, FeedbackRequest])
def test_every_integer_field_is_bounded_to_64_bits(kind: type) -> None:
    ints = list(_ints(msgspec.inspect.type_info(kind), kind.__name__, set()))
    assert ints, "the walk found no integers: it no longer sees the schema"
    for where, t in ints:
        low = t.ge if t.ge is not None else (None if t.gt is None else t.gt + 1)
        high = t.le if t.le is not None else (None if t.lt is None else t.lt - 1)
        assert low is not None and low >= INT64_MIN, where
        assert high is not None and high <= INT64_MAX, where


@pytest.mark.parametrize("seed", [2**64, 2**63, INT64_MIN - 1])
def test_a_seed_outside_64_bits_is_a_400_naming_seed(seed: int) -> None:
    body = msgspec.json.encode({"model": "m", "prompt": "x", "seed": seed})
    with pytest.raises(BadRequestError) as err:
        decode_request(body, CompletionRequest)
    assert err.value.param == "seed"
    assert err.value.status_code == 400


@pytest.mark.parametrize("seed", [INT64_MAX, INT64_MIN, 0])
def test_a_seed_inside_64_bits_decodes(seed: int) -> None:
    body = msgspec.json.encode({"model": "m", "prompt": "x", "seed": seed})
    assert decode_request(body, CompletionRequest).seed == seed
