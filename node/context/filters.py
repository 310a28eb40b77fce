"""OpenAI's attribute filters: comparison (``eq ne gt gte lt lte in nin``) and compound (``and or``).

Wire shapes, as the Responses ``file_search`` tool and ``/v1/vector_stores/{id}/search`` take them::

    {"type": "eq", "key": "region", "value": "eu"}
    {"type": "and", "filters": [{"type": "gte", "key": "year", "value": 2024}, ...]}

``parse_filter`` decodes one (a ``BadRequestError`` naming the ``param`` path
for anything else); ``Filter.matches`` evaluates it on a file's attributes.
Semantics: a file without the key matches only ``ne`` and ``nin``; ``gt``/``gte``/
``lt``/``lte`` compare numbers with numbers and strings with strings, and are
false across kinds; a boolean is not a number.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from serving.errors import BadRequestError

from .records import AttributeValue

__all__ = ["Comparison", "Compound", "Filter", "parse_filter"]

_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}
_COMPARISONS = frozenset({"eq", "ne", "in", "nin", *_ORDER})
_MAX_DEPTH = 8


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return "string"


def _equal(a: AttributeValue, b: AttributeValue) -> bool:
    return _kind(a) == _kind(b) and a == b


class Comparison(msgspec.Struct, frozen=True, kw_only=True):
    type: str
    key: str
    value: AttributeValue | tuple[AttributeValue, ...]

    def matches(self, attributes: Mapping[str, AttributeValue]) -> bool:
        if self.key not in attributes:
            return self.type in ("ne", "nin")
        have = attributes[self.key]
        if self.type in ("in", "nin"):
            assert isinstance(self.value, tuple)
            found = any(_equal(have, v) for v in self.value)
            return found if self.type == "in" else not found
        assert not isinstance(self.value, tuple)
        if self.type == "eq":
            return _equal(have, self.value)
        if self.type == "ne":
            return not _equal(have, self.value)
        kind = _kind(have)
        if kind == "bool" or kind != _kind(self.value):
            return False
        return _ORDER[self.type](have, self.value)


class Compound(msgspec.Struct, frozen=True, kw_only=True):
    type: str
    filters: tuple[Comparison | Compound, ...]

    def matches(self, attributes: Mapping[str, AttributeValue]) -> bool:
        if self.type == "and":
            return all(f.matches(attributes) for f in self.filters)
        return any(f.matches(attributes) for f in self.filters)


Filter = Comparison | Compound


def _scalar(value: Any, param: str) -> AttributeValue:
    if isinstance(value, str | bool | int | float):
        return value
    raise BadRequestError(f"`{param}` must be a string, number or boolean.", param=param)


def parse_filter(obj: Any, param: str = "filters", depth: int = 0) -> Filter:
    """A filter from its decoded JSON; ``param`` names where it came from in errors."""
    if depth > _MAX_DEPTH:
        raise BadRequestError(f"`{param}` nests filters deeper than {_MAX_DEPTH} levels.", param=param)
    if not isinstance(obj, dict):
        raise BadRequestError(f"`{param}` must be an object.", param=param)
    kind = obj.get("type")
    if kind in ("and", "or"):
        extra = set(obj) - {"type", "filters"}
        subs = obj.get("filters")
        if extra or not isinstance(subs, list) or not subs:
            raise BadRequestError(
                f'`{param}`: a compound filter is {{"type": "{kind}", "filters": [...]}} with at least '
                f"one filter{'; unknown field(s) ' + ', '.join(sorted(extra)) if extra else ''}.",
                param=param,
            )
        return Compound(
            type=kind,
            filters=tuple(parse_filter(f, f"{param}.filters[{i}]", depth + 1) for i, f in enumerate(subs)),
        )
    if kind not in _COMPARISONS:
        raise BadRequestError(
            f"`{param}.type` must be one of and, or, {', '.join(sorted(_COMPARISONS))}; got {kind!r}.",
            param=f"{param}.type",
        )
    extra = set(obj) - {"type", "key", "value"}
    if extra:
        raise BadRequestError(f"`{param}`: unknown field(s) {', '.join(sorted(extra))}.", param=param)
    key = obj.get("key")
    if not isinstance(key, str) or not key:
        raise BadRequestError(f"`{param}.key` must be a non-empty string.", param=f"{param}.key")
    if "value" not in obj:
        raise BadRequestError(f"`{param}.value` is required.", param=f"{param}.value")
    value = obj["value"]
    if kind in ("in", "nin"):
        if not isinstance(value, list) or not value:
            raise BadRequestError(
                f"`{param}.value` must be a non-empty array for {kind}.", param=f"{param}.value"
            )
        return Comparison(
            type=kind, key=key, value=tuple(_scalar(v, f"{param}.value[{i}]") for i, v in enumerate(value))
        )
    return Comparison(type=kind, key=key, value=_scalar(value, f"{param}.value"))
