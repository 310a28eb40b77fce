"""The request path of ``POST /v1/responses``: the chat path, in the Responses API's shape.

A Responses request is decoded (``node.responses_wire``), translated into a chat
request and served by ``node.completions.handle_generation`` like any chat
request (tenancy, residency, the route contract, redaction, limits, audit, with
``endpoint = "responses"`` in its records). What comes back is the OpenAI chat
wire format, which is stable by definition, and is translated here: a whole chat
completion into a Response object, a chat event stream into the Responses event
sequence. The node keeps no responses (``store`` is refused). A ``file_search``
tool is answered on the node before generation (``node.file_search``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.response import Stream

from serving.errors import BadRequestError

from .completions import handle_generation
from .file_search import Retrieval, retrieve
from .responses_wire import ResponsesRequest, ResponsesStream, response_object, to_chat
from .state import NodeState
from .tenancy import Principal
from .wire import ChatCompletionRequest, decode_request

__all__ = ["handle_responses"]

#: chat parameters as the Responses API names them, for errors found after the translation
_PARAMS = {
    "max_tokens": "max_output_tokens",
    "messages": "input",
    "response_format": "text.format",
    "user": "user",
}


async def handle_responses(
    state: NodeState, request: Request[Any, Any, Any], principal: Principal, request_id: str
) -> Response[Any]:
    asked: list[ResponsesRequest] = []  # the decoded request, for the answer's echoed settings
    found: list[Retrieval] = []  # what file_search retrieved (node.file_search)

    async def decode(body: bytes) -> ChatCompletionRequest:
        req = decode_request(body, ResponsesRequest)
        asked.append(req)
        cap = state.config.limits.max_tokens_cap
        if req.max_output_tokens is not None and req.max_output_tokens > cap:
            raise BadRequestError(
                f"max_output_tokens {req.max_output_tokens} is above this node's cap of {cap}",
                param="max_output_tokens",
            )
        to_chat(req)  # the request's own errors before any search
        retrieval = await retrieve(state, principal, request_id, req)
        if retrieval is None:
            return _chat_request(to_chat(req))
        found.append(retrieval)
        return _chat_request(to_chat(req, context=retrieval.context))

    response = await handle_generation(
        state, request, principal, request_id, chat=True, decode=decode, endpoint="responses"
    )
    req = asked[0]
    retrieval = found[0] if found else None
    response_id = request_id  # ``resp_<hex>``: the response's id is the request's (audit, logs)
    if isinstance(response, Stream):
        events = ResponsesStream(req, response_id=response_id, model=req.model)
        if retrieval is not None:
            events.annotations = retrieval.annotations
        return Stream(
            _translate(response.iterator, events, retrieval),  # type: ignore[arg-type]
            media_type="text/event-stream",
            headers=dict(response.headers),
            background=response.background,
        )
    if response.status_code not in (None, 200):  # an error body is the same on both APIs
        return response
    chat = msgspec.json.decode(response.content)
    body = response_object(
        req,
        chat,
        response_id=response_id,
        annotations=retrieval.annotations if retrieval else None,
        before=[retrieval.item] if retrieval else None,
    )
    return Response(msgspec.json.encode(body), media_type="application/json", headers=dict(response.headers))


def _chat_request(body: dict[str, Any]) -> ChatCompletionRequest:
    try:
        return decode_request(msgspec.json.encode(body), ChatCompletionRequest)
    except BadRequestError as exc:
        param = exc.param or ""
        head, _, tail = param.partition(".")
        renamed = _PARAMS.get(head)
        if renamed is None:
            raise
        exc.param = renamed + (("." + tail) if tail else "")
        raise


async def _translate(
    chat: AsyncIterator[bytes], events: ResponsesStream, retrieval: Retrieval | None
) -> AsyncIterator[bytes]:
    """The Responses events for a chat event stream (split on blank lines only)."""
    finish: str | None = None
    usage: dict[str, Any] | None = None
    pending = b""
    yield events.start()
    if retrieval is not None:
        yield events.file_search_call(retrieval.item)
    try:
        async for piece in chat:
            pending += piece
            *whole, pending = pending.split(b"\n\n")
            for event in whole:
                name, data = _parse(event)
                if data is None:
                    continue
                if data == b"[DONE]":
                    yield events.finish(finish, usage)
                    return
                obj = msgspec.json.decode(data)
                if name == b"error" or "error" in obj:
                    yield events.fail(obj)
                    return
                if obj.get("usage") and not obj.get("choices"):
                    usage = obj["usage"]
                for choice in obj.get("choices") or ():
                    delta = choice.get("delta") or {}
                    if delta.get("content"):
                        yield events.text(delta["content"])
                    for call in delta.get("tool_calls") or ():
                        fn = call.get("function") or {}
                        yield events.tool_call(
                            int(call.get("index", 0)),
                            call_id=call.get("id"),
                            name=fn.get("name"),
                            arguments=fn.get("arguments") or "",
                        )
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
        # the chat stream ended without [DONE] or an error event: never a clean end
        yield events.fail({"code": "server_error", "message": "the stream ended early"})
    finally:
        aclose = getattr(chat, "aclose", None)
        if aclose is not None:
            await aclose()


def _parse(event: bytes) -> tuple[bytes | None, bytes | None]:
    name: bytes | None = None
    data: list[bytes] = []
    for line in event.split(b"\n"):
        if line.startswith(b"event:"):
            name = line[6:].strip()
        elif line.startswith(b"data:"):
            data.append(line[5:].removeprefix(b" "))
    return name, b"\n".join(data) if data else None
