"""The wire schema of ``POST /v1/responses`` (OpenAI's Responses API), stateless.

A Responses request is translated into a chat-completions request (``to_chat``)
and served by the same request path as ``/v1/chat/completions``: the same
tenancy, residency, routing contract, redaction, limits and audit. Its answer
is translated back: ``response_object`` for a whole response, ``ResponsesStream``
for the documented event sequence (``response.created``, ``response.in_progress``,
``response.output_item.added``, ``response.content_part.added``,
``response.output_text.delta`` ..., ``response.function_call_arguments.delta`` ...,
the ``.done`` events, then ``response.completed``, or ``response.failed``).

Decoded strictly: a field this node does not honour is a 400 naming it. The node
keeps no responses (``store`` is refused when true, and so is
``previous_response_id``); an absent ``store`` means not stored here.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

import msgspec

from serving.errors import BadRequestError

__all__ = [
    "ResponsesRequest",
    "ResponsesStream",
    "last_user_text",
    "response_object",
    "to_chat",
]

_INT64_MAX = 2**63 - 1
_Tokens = Annotated[int, msgspec.Meta(ge=1, le=_INT64_MAX)]


class _Format(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    type: Literal["text", "json_object", "json_schema"]
    name: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    schema: dict[str, Any] | None = None
    description: str | None = None
    strict: bool | None = None


class _Text(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    format: _Format | None = None
    verbosity: Literal["medium"] | None = None


class _StreamOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    #: obfuscation pads deltas against length side channels; this node adds none, so only false
    include_obfuscation: Literal[False] = False


class ResponsesRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    model: str
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: _Tokens | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, msgspec.Meta(gt=0.0, le=1.0)] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: _Text | None = None
    stream: bool = False
    stream_options: _StreamOptions | None = None
    #: this node keeps no responses: ``true`` is refused (``previous_response_id`` needs a store)
    store: bool | None = None
    previous_response_id: str | None = None
    metadata: dict[str, Annotated[str, msgspec.Meta(max_length=512)]] | None = None
    user: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    safety_identifier: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    truncation: Literal["disabled"] | None = None
    background: Literal[False] | None = None
    include: list[str] | None = None

    def __post_init__(self) -> None:
        if self.store:
            raise ValueError(
                "this node keeps no responses: `store` must be false or absent (no response store "
                "is configured) - at `$.store`"
            )
        if self.previous_response_id is not None:
            raise ValueError(
                "`previous_response_id` needs a response store, and this node keeps none: send the "
                "conversation as `input` items - at `$.previous_response_id`"
            )
        for value in self.include or ():
            if value != "file_search_call.results":  # the one this node honours (node.file_search)
                raise ValueError(f"`include` value {value!r} is not supported - at `$.include`")
        if self.metadata is not None and len(self.metadata) > 16:
            raise ValueError("at most 16 metadata pairs - at `$.metadata`")

    def file_search(self) -> list[dict[str, Any]]:
        """The ``file_search`` tools (answered on the node by the context layer)."""
        return [t for t in self.tools or () if t.get("type") == "file_search"]


# -- request: Responses -> chat ------------------------------------------------------------------


def to_chat(req: ResponsesRequest, *, context: str | None = None) -> dict[str, Any]:
    """The chat-completions request body (as builtins) that serves ``req``.

    ``context``: retrieved text (``file_search``) for the model, as a system message
    after the instructions. Every problem is a ``BadRequestError`` naming the field.
    """
    messages: list[dict[str, Any]] = []
    if req.instructions:
        messages.append({"role": "system", "content": req.instructions})
    if context:
        messages.append({"role": "system", "content": context})
    if isinstance(req.input, str):
        messages.append({"role": "user", "content": req.input})
    else:
        if not req.input:
            raise BadRequestError("`input` is an empty list; send at least one item.", param="input")
        calls_open = False
        for i, item in enumerate(req.input):
            if not isinstance(item, dict):
                raise BadRequestError(f"input[{i}] must be an object", param=f"input[{i}]")
            calls_open = _add_item(messages, item, f"input[{i}]", calls_open=calls_open)
    body: dict[str, Any] = {"model": req.model, "messages": messages, "stream": req.stream}
    if req.stream:
        body["stream_options"] = {"include_usage": True}
    for name, value in (
        ("max_tokens", req.max_output_tokens),
        ("temperature", req.temperature),
        ("top_p", req.top_p),
        ("parallel_tool_calls", req.parallel_tool_calls),
        ("user", req.safety_identifier or req.user),
    ):
        if value is not None:
            body[name] = value
    functions = [_function_tool(t, f"tools[{i}]") for i, t in enumerate(req.tools or ()) if _is_function(t)]
    if functions:
        body["tools"] = functions
    if req.tool_choice is not None:
        body["tool_choice"] = _tool_choice(req.tool_choice)
    if req.text is not None and req.text.format is not None:
        body["response_format"] = _response_format(req.text.format)
    return body


def last_user_text(req: ResponsesRequest) -> str:
    """The text of the last user message of ``input`` (what ``file_search`` searches for)."""
    if isinstance(req.input, str):
        return req.input
    for i in range(len(req.input) - 1, -1, -1):
        item = req.input[i]
        if isinstance(item, dict) and item.get("role") == "user" and item.get("type", "message") == "message":
            return _text_of(item.get("content"), f"input[{i}].content")
    return ""


def _is_function(tool: dict[str, Any]) -> bool:
    kind = tool.get("type")
    if kind == "function":
        return True
    if kind == "file_search":
        return False
    raise BadRequestError(
        f"tool type {kind!r} is not supported here: only `function` and `file_search` tools",
        param="tools",
    )


def _function_tool(tool: dict[str, Any], where: str) -> dict[str, Any]:
    unknown = set(tool) - {"type", "name", "description", "parameters", "strict"}
    if unknown:
        raise BadRequestError(f"Unrecognized argument in {where}: {sorted(unknown)[0]}", param=where)
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequestError(f"{where}.name must be a non-empty string", param=f"{where}.name")
    function: dict[str, Any] = {"name": name}
    for key in ("description", "parameters", "strict"):
        if tool.get(key) is not None:
            function[key] = tool[key]
    return {"type": "function", "function": function}


def _tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise BadRequestError(
                f"tool_choice {choice!r} is not one of none, auto, required", param="tool_choice"
            )
        return choice
    if (
        choice.get("type") == "function"
        and isinstance(choice.get("name"), str)
        and set(choice) == {"type", "name"}
    ):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise BadRequestError(
        'tool_choice must be none, auto, required or {"type": "function", "name": ...}',
        param="tool_choice",
    )


def _response_format(fmt: _Format) -> dict[str, Any]:
    if fmt.type != "json_schema":
        if fmt.schema is not None or fmt.name is not None:
            raise BadRequestError(f"text.format {fmt.type!r} takes no name or schema", param="text.format")
        return {"type": fmt.type}
    if fmt.name is None or fmt.schema is None:
        raise BadRequestError("text.format json_schema needs `name` and `schema`", param="text.format")
    schema: dict[str, Any] = {"name": fmt.name, "schema": fmt.schema}
    if fmt.description is not None:
        schema["description"] = fmt.description
    if fmt.strict is not None:
        schema["strict"] = fmt.strict
    return {"type": "json_schema", "json_schema": schema}


_MESSAGE_KEYS = {"type", "role", "content", "id", "status"}


def _add_item(messages: list[dict[str, Any]], item: dict[str, Any], where: str, *, calls_open: bool) -> bool:
    """Append ``item`` as chat messages; returns whether the last message takes more tool calls
    (consecutive ``function_call`` items are one assistant turn)."""
    kind = item.get("type", "message" if "role" in item else None)
    if kind == "message":
        unknown = set(item) - _MESSAGE_KEYS
        if unknown:
            raise BadRequestError(f"Unrecognized argument in {where}: {sorted(unknown)[0]}", param=where)
        role = item.get("role")
        if role not in ("user", "system", "developer", "assistant"):
            raise BadRequestError(
                f"{where}.role {role!r} is not user, system, developer or assistant", param=f"{where}.role"
            )
        messages.append({"role": role, "content": _text_of(item.get("content"), f"{where}.content")})
        return bool(role == "assistant")
    if kind == "function_call":
        call_id, name = item.get("call_id"), item.get("name")
        arguments = item.get("arguments", "")
        if not (isinstance(call_id, str) and isinstance(name, str) and isinstance(arguments, str)):
            raise BadRequestError(
                f"{where}: a function_call needs string call_id, name and arguments", param=where
            )
        call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        if calls_open and messages and messages[-1]["role"] == "assistant":
            messages[-1].setdefault("tool_calls", []).append(call)
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        return True
    if kind == "function_call_output":
        call_id = item.get("call_id")
        if not isinstance(call_id, str):
            raise BadRequestError(f"{where}: a function_call_output needs a string call_id", param=where)
        output = _text_of(item.get("output"), f"{where}.output")
        messages.append({"role": "tool", "tool_call_id": call_id, "content": output})
        return False
    raise BadRequestError(
        f"{where}: input item type {kind!r} is not supported here (message, function_call, "
        "function_call_output)",
        param=where,
    )


def _text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in ("input_text", "output_text", "text") or not isinstance(part.get("text"), str):
                raise BadRequestError(
                    f"{where}[{i}]: content part type {kind!r} is not supported here (text parts only)",
                    param=f"{where}[{i}]",
                )
            texts.append(part["text"])
        return "".join(texts)
    raise BadRequestError(f"{where} must be a string or a list of text parts", param=where)


# -- response: chat -> Responses -----------------------------------------------------------------


def _echo(req: ResponsesRequest) -> dict[str, Any]:
    """The request settings a Response object repeats."""
    fmt = req.text.format if req.text is not None and req.text.format is not None else _Format(type="text")
    return {
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "metadata": req.metadata or {},
        "parallel_tool_calls": True if req.parallel_tool_calls is None else req.parallel_tool_calls,
        "temperature": 1.0 if req.temperature is None else req.temperature,
        "top_p": 1.0 if req.top_p is None else req.top_p,
        "tool_choice": req.tool_choice if req.tool_choice is not None else "auto",
        "tools": req.tools or [],
        "text": {"format": msgspec.to_builtins(fmt)},
        "truncation": "disabled",
        "store": False,
        "previous_response_id": None,
        "user": req.user,
    }


def _usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    prompt, completion = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0))
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def _shell(
    req: ResponsesRequest, *, response_id: str, created: float, model: str, status: str
) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": status,
        "model": model,
        "output": [],
        "error": None,
        "incomplete_details": None,
        "usage": None,
        **_echo(req),
    }


def _message_item(item_id: str, text: str, status: str, annotations: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": annotations, "logprobs": []}],
    }


def _placed(annotations: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """Annotations without an ``index`` go at the end of ``text`` (the model did not say where)."""
    return [a if "index" in a else a | {"index": len(text)} for a in annotations]


def _call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def _finished(finish_reason: str | None) -> tuple[str, dict[str, Any] | None]:
    if finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish_reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def response_object(
    req: ResponsesRequest,
    chat: dict[str, Any],
    *,
    response_id: str,
    annotations: list[dict[str, Any]] | None = None,
    before: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The Response object for a chat completion body ``chat`` (``before``: output items that
    come first, a ``file_search_call``)."""
    choice = chat["choices"][0]
    message = choice.get("message") or {}
    status, incomplete = _finished(choice.get("finish_reason"))
    out = _shell(
        req,
        response_id=response_id,
        created=float(chat.get("created", time.time())),
        model=req.model,
        status=status,
    )
    output: list[dict[str, Any]] = list(before or ())
    text = message.get("content")
    calls = message.get("tool_calls") or []
    if text or not calls:
        output.append(
            _message_item(_new_id("msg"), text or "", status, _placed(annotations or [], text or ""))
        )
    for call in calls:
        fn = call["function"]
        output.append(_call_item(_new_id("fc"), call["id"], fn["name"], fn.get("arguments", ""), "completed"))
    out.update(output=output, incomplete_details=incomplete, usage=_usage(chat.get("usage")))
    return out


#: our error codes that the Responses API's closed set of codes calls ``rate_limit_exceeded``
_RATE_CODES = frozenset({"rate_limit_exceeded", "budget_exceeded", "upstream_rate_limited"})


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class ResponsesStream:
    """Encodes one streamed response's events (SSE with ``event:`` lines and ``sequence_number``).

    Fed with chat-level facts as they arrive: ``text``, ``tool_call`` fragments, then
    ``finish`` (or ``fail``). Items are opened as their first output arrives and closed
    (their ``.done`` events) at the end, in output order.
    """

    def __init__(self, req: ResponsesRequest, *, response_id: str, model: str) -> None:
        self._req = req
        self._id = response_id
        self._created = time.time()
        self._model = model
        self._seq = 0
        self._items: list[dict[str, Any]] = []
        self._text_item: int | None = None  # output index of the message item
        self._calls: dict[int, int] = {}  # chat tool-call index -> output index
        self.annotations: list[dict[str, Any]] = []

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + msgspec.json.encode(data) + b"\n\n"

    def _response(self, status: str) -> dict[str, Any]:
        return _shell(
            self._req, response_id=self._id, created=self._created, model=self._model, status=status
        )

    def start(self) -> bytes:
        created = self._event("response.created", response=self._response("in_progress"))
        return created + self._event("response.in_progress", response=self._response("in_progress"))

    def text(self, delta: str) -> bytes:
        out = b""
        if self._text_item is None:
            self._text_item = len(self._items)
            item = _message_item(_new_id("msg"), "", "in_progress", [])
            item["content"] = []
            self._items.append(item)
            out += self._event("response.output_item.added", output_index=self._text_item, item=item)
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            out += self._event(
                "response.content_part.added",
                item_id=item["id"],
                output_index=self._text_item,
                content_index=0,
                part=part,
            )
            item["content"] = [dict(part)]
        item = self._items[self._text_item]
        item["content"][0]["text"] += delta
        return out + self._event(
            "response.output_text.delta",
            item_id=item["id"],
            output_index=self._text_item,
            content_index=0,
            delta=delta,
            logprobs=[],
        )

    def file_search_call(self, item: dict[str, Any]) -> bytes:
        """A finished ``file_search_call`` item (the node searched before generating), whole."""
        index = len(self._items)
        self._items.append(item)
        ids = {"output_index": index, "item_id": item["id"]}
        out = self._event(
            "response.output_item.added", output_index=index, item=item | {"status": "in_progress"}
        )
        for phase in ("in_progress", "searching", "completed"):
            out += self._event(f"response.file_search_call.{phase}", **ids)
        return out + self._event("response.output_item.done", output_index=index, item=item)

    def tool_call(self, index: int, *, call_id: str | None, name: str | None, arguments: str) -> bytes:
        out = b""
        if index not in self._calls:
            self._calls[index] = len(self._items)
            item = _call_item(_new_id("fc"), call_id or _new_id("call"), name or "", "", "in_progress")
            self._items.append(item)
            out += self._event("response.output_item.added", output_index=self._calls[index], item=dict(item))
        out_index = self._calls[index]
        item = self._items[out_index]
        if name and not item["name"]:
            item["name"] = name
        if arguments:
            item["arguments"] += arguments
            out += self._event(
                "response.function_call_arguments.delta",
                item_id=item["id"],
                output_index=out_index,
                delta=arguments,
            )
        return out

    def finish(self, finish_reason: str | None, usage: dict[str, Any] | None) -> bytes:
        status, incomplete = _finished(finish_reason)
        if self._text_item is None and not self._calls:  # an empty answer is still one (empty) message
            out = self.text("")
        else:
            out = b""
        for index, item in enumerate(self._items):
            if item["type"] == "file_search_call":
                continue  # done when it was added
            item["status"] = status if item["type"] == "message" else "completed"
            if item["type"] == "message":
                part = item["content"][0]
                part["annotations"] = _placed(self.annotations, part["text"])
                for n, annotation in enumerate(part["annotations"]):
                    out += self._event(
                        "response.output_text.annotation.added",
                        item_id=item["id"],
                        output_index=index,
                        content_index=0,
                        annotation_index=n,
                        annotation=annotation,
                    )
                out += self._event(
                    "response.output_text.done",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    text=part["text"],
                    logprobs=[],
                )
                out += self._event(
                    "response.content_part.done",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    part=part,
                )
            else:
                out += self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    name=item["name"],
                    arguments=item["arguments"],
                )
            out += self._event("response.output_item.done", output_index=index, item=item)
        final = self._response(status)
        final.update(output=self._items, incomplete_details=incomplete, usage=_usage(usage))
        return out + self._event("response.completed", response=final)

    def fail(self, error: dict[str, Any]) -> bytes:
        """The terminal event of a failed stream: ``response.failed`` with the error's code."""
        failed = self._response("failed")
        detail = error.get("error", error)
        code = str(detail.get("code") or "")
        # the Response object's error codes are a closed set: ours travels in the message
        public = "rate_limit_exceeded" if code in _RATE_CODES else "server_error"
        message = f"[{code}] {detail.get('message', '')}" if code else str(detail.get("message", ""))
        failed.update(output=self._items, error={"code": public, "message": message})
        return self._event("response.failed", response=failed)
