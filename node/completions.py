"""The request path of ``/v1/chat/completions`` and ``/v1/completions``.

(authenticated: ``node.dependencies``) the request's record (``RequestRecord``) -> decode -> model
access -> route (the record is the router's ``RouteObserver``: its ``on_forward``
appends the durable start record before any provider is contacted) ->
stream or collect -> end record (durable before the response finishes) ->
metrics and the request log line. Anything that ends an authenticated request
before its stream ends it through the record: ``request.rejected`` at least.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import anyio
import msgspec
from litestar import Request, Response
from litestar.background_tasks import BackgroundTask
from litestar.response import Stream

from router import RESIDENCY_HEADER, RoutedStream, RouteRequest
from serving.errors import BadRequestError, BastionError
from serving.protocol import Delta, GenerationRequest, choices

from .access import check_model
from .choices import Choices
from .errors import error_response, to_bastion_error
from .recorder import RequestRecord
from .state import NodeState
from .tenancy import Principal
from .wire import (
    ChatCompletionRequest,
    CompletionRequest,
    StreamEncoder,
    chat_completion_body,
    completion_body,
    decode_request,
)

__all__ = ["handle_generation"]

_log = logging.getLogger("bastion.request")


def cache_salt(tenant: str) -> str:
    """Per-tenant prefix-cache salt: one tenant's cached prefixes never serve another's."""
    return hashlib.sha256(b"bastion-cache-salt\x00" + tenant.encode()).hexdigest()[:32]


#: turns a request body into the chat request it asks for (``/v1/responses`` translates its own)
ChatDecoder = Callable[[bytes], Awaitable[ChatCompletionRequest]]


async def handle_generation(
    state: NodeState,
    request: Request[Any, Any, Any],
    principal: Principal,
    request_id: str,
    *,
    chat: bool,
    decode: ChatDecoder | None = None,
    endpoint: str | None = None,
) -> Response[Any]:
    """``principal``: the authenticated tenant (``node.dependencies``); ``request_id``: the
    handler's own (``chatcmpl-`` or ``cmpl-``). ``decode`` (chat only): how the body becomes a
    chat request, inside the record's refusals, under ``endpoint``'s name in the records."""
    started = time.monotonic()
    # From here on the request is the tenant's: whatever ends it before the stream (a body
    # that does not decode, a limit, the router, an unexpected error) passes through the record.
    record = RequestRecord(
        state=state,
        principal=principal,
        request_id=request_id,
        endpoint=endpoint or ("chat" if chat else "completions"),
        started=started,
        refusal_headers=request.scope["state"].setdefault("route_headers", {}),
    )
    async with record.refusals_recorded():
        wire, generation = await _decode(state, request, principal, request_id, chat=chat, decode=decode)
        record.admitted(alias=wire.model, subject=wire.user, generation=generation)
        route_request = RouteRequest(
            tenant=principal.tenant.name,
            policy=principal.tenant,
            alias=wire.model,
            generation=generation,
            # every line: a proxy may append its own value as a second line (RFC 9110 5.3)
            residency_headers=tuple(request.headers.getall(RESIDENCY_HEADER, [])),
        )
        routed = await state.router.open(route_request, observer=record)
    headers = record.headers()
    record.stream = wire.stream
    if wire.stream:
        encoder = StreamEncoder(
            request_id=request_id,
            model=wire.model,
            chat=chat,
            include_usage=wire.include_usage(),
            continuous_usage=wire.continuous_usage(),
            choices=choices(generation),
        )
        events = _sse(record, routed, encoder)
        return Stream(
            events,
            media_type="text/event-stream",
            headers={**headers, "cache-control": "no-cache", "x-accel-buffering": "no"},
            # Litestar runs it once the response is over, the client gone included: it cancels
            # the sending task on ``http.disconnect`` and leaves the generator suspended, to the
            # garbage collector. Closing it runs its ``finally`` (abort upstream, durable end
            # record) at once.
            background=BackgroundTask(_close_events, events),
        )
    return await _collect(record, routed, chat=chat, headers=headers, principal=principal)


async def _decode(
    state: NodeState,
    request: Request[Any, Any, Any],
    principal: Principal,
    request_id: str,
    *,
    chat: bool,
    decode: ChatDecoder | None,
) -> tuple[ChatCompletionRequest | CompletionRequest, GenerationRequest]:
    body = await request.body()
    wire: ChatCompletionRequest | CompletionRequest
    if chat:
        wire = await decode(body) if decode is not None else decode_request(body, ChatCompletionRequest)
        if len(wire.messages) > state.config.limits.max_messages:
            raise BadRequestError(
                f"at most {state.config.limits.max_messages} messages per request", param="messages"
            )
    else:
        wire = decode_request(body, CompletionRequest)
    routed, embedding = state.router.aliases(), state.embedders
    check_model(principal, wire.model, use="generate", routed=routed, embedding=embedding)
    generation = GenerationRequest(
        request_id=request_id,
        model=wire.model,
        messages=wire.chat_messages() if isinstance(wire, ChatCompletionRequest) else None,
        prompt=wire.prompt_text() if isinstance(wire, CompletionRequest) else None,
        sampling=wire.sampling(state.config.limits.max_tokens_cap),
        tenant=principal.tenant.name,
        cache_salt=cache_salt(principal.tenant.name),
        fields=wire.fields_set(),
        response_format=wire.response_format_dict(),
    )
    if isinstance(wire, ChatCompletionRequest):
        generation = msgspec.structs.replace(
            generation,
            tools=tuple(wire.tools) if wire.tools else None,
            tool_choice=wire.tool_choice,
            parallel_tool_calls=wire.parallel_tool_calls,
        )
    return wire, generation


async def _collect(
    record: RequestRecord, routed: RoutedStream, *, chat: bool, headers: dict[str, str], principal: Principal
) -> Response[Any]:
    answer = Choices(_expected(record))
    last = Delta()
    drain = record.state.drain
    try:
        with drain.in_flight():
            async for delta in routed:
                record.on_delta(delta)
                answer.add(delta)
                last = delta
    except BaseException as exc:
        await _close_quietly(routed)
        err = to_bastion_error(exc) if isinstance(exc, Exception) else None
        if isinstance(exc, asyncio.CancelledError) and drain.was_cut():
            err = drain.cut_error()  # the drain timeout passed: a 503, recorded
        with anyio.CancelScope(shield=True):
            await record.ended(
                status="cancelled" if err is None else err.code,
                text=answer.texts(),
                error=err,
                tool_calls=answer.tool_calls(),
            )
        if err is None:
            raise
        resp = error_response(err)
        resp.headers.update(headers)
        return resp
    with anyio.CancelScope(shield=True):
        await record.ended(
            status="ok", text=answer.texts(), error=None, last=last, tool_calls=answer.tool_calls()
        )
    body = (chat_completion_body if chat else completion_body)(
        request_id=record.request_id,
        model=record.alias,
        created=int(time.time()),
        choices=answer.ordered(),
        last=last,
    )
    return Response(body, media_type="application/json", headers=headers)


async def _sse(
    record: RequestRecord, routed: RoutedStream, encoder: StreamEncoder
) -> AsyncGenerator[bytes, None]:
    answer = Choices(encoder.choices)
    last = Delta()
    status = "ok"
    error: BastionError | None = None
    pieces_streamed = False
    drain = record.state.drain
    try:
        with drain.in_flight():
            if encoder.chat:
                yield encoder.role()
            async for delta in routed:
                record.on_delta(delta)
                answer.add(delta)
                if delta.text or delta.logprobs:
                    yield encoder.text(delta.text, delta)
                if delta.tool_call_deltas:
                    pieces_streamed = True
                    yield encoder.tool_call_pieces(delta.tool_call_deltas, delta.index)
                elif delta.tool_calls and not pieces_streamed:
                    # a provider that streamed no pieces: the whole calls in one chunk
                    yield encoder.tool_calls(delta.tool_calls, delta.index)
                if delta.finish_reason is not None:
                    yield encoder.choice_end(delta)
                last = delta
    except Exception as exc:  # a failure after the first token: an error event, never a silent cut
        error = to_bastion_error(exc)
        status = error.code
    except asyncio.CancelledError:
        if not drain.was_cut():  # the client went away: abort upstream, record, re-raise
            status = "cancelled"
            raise
        error = drain.cut_error()  # the drain timeout passed: an error event, recorded
        status = error.code
    except BaseException:  # the client went away: abort upstream, record, re-raise
        status = "cancelled"
        raise
    finally:
        await _close_quietly(routed)
        with anyio.CancelScope(shield=True):
            # Durable before the response finishes; a failing audit turns into an error event.
            try:
                await record.ended(
                    status=status, text=answer.texts(), error=error, last=last, tool_calls=answer.tool_calls()
                )
            except Exception as exc:
                if status == "ok":
                    error = to_bastion_error(exc)
                    status = error.code
    if error is not None:
        yield encoder.error(error.to_body())
    else:
        yield encoder.done(last)


def _expected(record: RequestRecord) -> int:
    return 1 if record.generation is None else choices(record.generation)


async def _close_events(events: AsyncGenerator[bytes, None]) -> None:
    with anyio.CancelScope(shield=True):
        await events.aclose()


async def _close_quietly(routed: RoutedStream) -> None:
    with anyio.CancelScope(shield=True):
        try:
            await routed.aclose()
        except Exception:  # closing must never mask the real outcome
            _log.debug("closing a routed stream failed", exc_info=True)
