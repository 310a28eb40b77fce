"""Function tools: checking a request's tool definitions and tool choice, and what a local
engine makes of them.

``check_tools`` holds on every route: a tool definition that is not an OpenAI function tool
with a valid JSON Schema for its parameters, two tools of one name, or a ``tool_choice`` that
names no defined function is a 400 naming what is wrong, before anything is routed.

``plan_tools`` is the local engine's reading of a request: whether the chat template lists the
tools (not with ``tool_choice = "none"``), whether the output is parsed for calls (``auto``), or
generated as calls under a JSON schema (``required``, a named function) so that the arguments
always validate against the tool's schema, whatever the weights.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

import msgspec

from serving.errors import BadRequestError
from serving.protocol import GenerationRequest

__all__ = ["ToolPlan", "check_tools", "plan_tools", "template_tools"]

_NAME: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_FUNCTION_KEYS: Final = frozenset({"name", "description", "parameters", "strict"})
_CHOICES: Final = ("none", "auto", "required")


class ToolPlan(msgspec.Struct, frozen=True, kw_only=True):
    """How a local engine serves a request's tools."""

    mode: Literal["none", "auto", "required", "named"]
    #: the function ``tool_choice`` names (``named``)
    name: str | None = None
    #: at most one call (``parallel_tool_calls = false``)
    single: bool = False
    #: the JSON schema the whole output is generated under (``required``, ``named``)
    schema: str | None = None


def _functions(tools: Sequence[Any]) -> dict[str, Mapping[str, Any]]:
    """Each tool's function definition by name; raises ``BadRequestError`` naming the bad one."""
    out: dict[str, Mapping[str, Any]] = {}
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function" or set(tool) != {"type", "function"}:
            raise BadRequestError(
                f"{where}: a tool must be {{'type': 'function', 'function': {{...}}}}", param=where
            )
        fn = tool["function"]
        if not isinstance(fn, dict):
            raise BadRequestError(f"{where}.function must be an object", param=f"{where}.function")
        if unknown := sorted(set(fn) - _FUNCTION_KEYS):
            raise BadRequestError(
                f"Unrecognized request argument supplied: {where}.function.{unknown[0]}",
                param=f"{where}.function.{unknown[0]}",
            )
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise BadRequestError(
                f"{where}.function.name must be 1 to 64 letters, digits, '_' or '-', got {name!r}",
                param=f"{where}.function.name",
            )
        if name in out:
            raise BadRequestError(f"{where}: two tools are named {name!r}", param=f"{where}.function.name")
        if not isinstance(fn.get("description", ""), str):
            raise BadRequestError(f"{where}.function.description must be a string", param=where)
        if not isinstance(fn.get("strict", False), bool):
            raise BadRequestError(f"{where}.function.strict must be a boolean", param=where)
        _check_parameters(fn.get("parameters"), f"{where}.function.parameters", name)
        out[name] = fn
    return out


def _check_parameters(params: Any, where: str, name: str) -> None:
    if params is None:
        return
    if not isinstance(params, dict):
        raise BadRequestError(f"{where} (tool {name!r}) must be a JSON Schema object", param=where)
    if params.get("type", "object") != "object":
        raise BadRequestError(
            f"{where} (tool {name!r}) must describe an object (`type` 'object'), got {params['type']!r}",
            param=where,
        )
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    if ref := _outside_ref(params):
        raise BadRequestError(
            f"{where} (tool {name!r}): `$ref` {ref!r} points outside the schema; only local "
            "references (`#/...`) are resolved, nothing is fetched",
            param=where,
        )
    try:
        Draft202012Validator.check_schema(params)
    except SchemaError as exc:
        at = "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in exc.absolute_path)
        raise BadRequestError(
            f"{where} (tool {name!r}) is not a valid JSON Schema: at {at or 'the top'}: {exc.message}",
            param=where,
        ) from None


def _outside_ref(schema: Any) -> str | None:
    """The first ``$ref`` in ``schema`` that is not a local (``#...``) reference, if any."""
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and not ref.startswith("#"):
            return ref
        return next((r for v in schema.values() if (r := _outside_ref(v)) is not None), None)
    if isinstance(schema, list):
        return next((r for v in schema if (r := _outside_ref(v)) is not None), None)
    return None


def _chosen(tool_choice: str | Mapping[str, Any] | None) -> str | None:
    """The function a ``tool_choice`` object names (``None`` for a string choice)."""
    if tool_choice is None or isinstance(tool_choice, str):
        if tool_choice is not None and tool_choice not in _CHOICES:
            raise BadRequestError(
                f"tool_choice must be 'none', 'auto', 'required' or a named function, got {tool_choice!r}",
                param="tool_choice",
            )
        return None
    fn = tool_choice.get("function")
    name = fn.get("name") if isinstance(fn, dict) else None
    if (
        tool_choice.get("type") != "function"
        or not isinstance(name, str)
        or set(tool_choice)
        != {
            "type",
            "function",
        }
    ):
        raise BadRequestError(
            "tool_choice as an object must be {'type': 'function', 'function': {'name': ...}}",
            param="tool_choice",
        )
    return name


def check_tools(
    tools: Sequence[Any] | None, tool_choice: str | Mapping[str, Any] | None, parallel_tool_calls: bool | None
) -> None:
    """Raise ``BadRequestError`` unless the tools, tool choice and parallel flag make sense together."""
    if not _int64_only(tools) or not _int64_only(tool_choice):
        # the audit record stores them (msgpack): an integer past 64 bits could not be recorded
        raise BadRequestError("an integer in `tools` or `tool_choice` exceeds 64 bits", param="tools")
    functions = _functions(tools or ())
    named = _chosen(tool_choice)
    if not functions:
        for field, value in (("tool_choice", tool_choice), ("parallel_tool_calls", parallel_tool_calls)):
            if value is not None:
                raise BadRequestError(f"`{field}` is only allowed when `tools` are specified", param=field)
        return
    if named is not None and named not in functions:
        raise BadRequestError(
            f"tool_choice names the function {named!r}, which is not among the tools "
            f"({', '.join(sorted(functions))})",
            param="tool_choice",
        )


def _int64_only(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | dict | list):
        return True
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    items = value.values() if isinstance(value, dict) else value
    return all(_int64_only(v) for v in items)


def template_tools(request: GenerationRequest) -> list[dict[str, Any]] | None:
    """The tool definitions the chat template lists: none with ``tool_choice = "none"``."""
    if not request.tools or request.tool_choice == "none":
        return None
    return [dict(t) for t in request.tools]


def plan_tools(request: GenerationRequest) -> ToolPlan | None:
    """How a local engine serves ``request``'s tools (``None``: it has none)."""
    if not request.tools:
        return None
    choice = request.tool_choice
    single = request.parallel_tool_calls is False
    if choice == "none":
        return ToolPlan(mode="none")
    if choice is None or choice == "auto":
        return ToolPlan(mode="auto", single=single)
    functions = _functions(request.tools)
    named = _chosen(choice)
    if named is not None:
        schema = _arguments_schema(functions[named].get("parameters"))
        return ToolPlan(mode="named", name=named, single=True, schema=json.dumps(schema))
    return ToolPlan(mode="required", single=single, schema=json.dumps(_calls_schema(functions, single)))


def _arguments_schema(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """A tool's arguments schema, always an object: a tool without parameters takes ``{}``."""
    if not params:
        return {"type": "object", "properties": {}, "additionalProperties": False}
    return {**params, "type": "object"}


def _calls_schema(functions: Mapping[str, Mapping[str, Any]], single: bool) -> dict[str, Any]:
    """The output of ``tool_choice = "required"``: one call (``single``) or a non-empty array of
    calls, each ``{"name": <a tool's name>, "arguments": <that tool's arguments>}``, exactly those
    two members in that order. Each tool's ``$defs`` move to the top, where its ``#/$defs/...``
    references resolve."""
    defs: dict[str, Any] = {}
    calls: list[dict[str, Any]] = []
    for name, fn in functions.items():
        args = _arguments_schema(fn.get("parameters"))
        own = args.pop("$defs", None) or {}
        for key, value in own.items():
            if key in defs and defs[key] != value:
                raise BadRequestError(
                    f"tool {name!r}: `$defs.{key}` differs from another tool's; with tool_choice "
                    "'required' the tools' `$defs` share one namespace",
                    param="tools",
                )
            defs[key] = value
        calls.append(
            {
                "type": "object",
                "properties": {"name": {"type": "string", "enum": [name]}, "arguments": args},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    call: dict[str, Any] = calls[0] if len(calls) == 1 else {"anyOf": calls}
    schema: dict[str, Any] = call if single else {"type": "array", "minItems": 1, "items": call}
    if defs:
        schema = {**schema, "$defs": defs}
    return schema
