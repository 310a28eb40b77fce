"""Checking a client's JSON schema (``response_format``) before anything is routed.

A schema that is not a JSON schema at all (``{"type": "foo"}``) is refused on
every route alike, naming where it is wrong. Whether a route can use a valid
schema is the route's own check (the local engine compiles it with xgrammar
before queueing; an external API answers for itself).
"""

from __future__ import annotations

import functools
import json
from typing import Any

import jsonschema

__all__ = ["check_schema"]


def check_schema(schema: dict[str, Any]) -> None:
    """Raise ``ValueError`` (with msgspec's location suffix) when ``schema`` is not a valid JSON
    schema under its ``$schema`` draft (2020-12 when it names none). References are not resolved:
    checking never fetches anything."""
    problem = _problem(json.dumps(schema, sort_keys=True))
    if problem is not None:
        raise ValueError(f"{problem} - at `$.response_format.json_schema.schema`")


@functools.lru_cache(maxsize=256)
def _problem(text: str) -> str | None:
    """What is wrong with a schema (its JSON text), if anything. Remembered: checking takes
    milliseconds, and an app sends the same few schemas again and again."""
    schema = json.loads(text)
    validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = exc.json_path.removeprefix("$")
        return (
            f"response_format.json_schema.schema is not a valid JSON schema: {exc.message} (at schema{where})"
        )
    return None
