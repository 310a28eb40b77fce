"""The Responses API's ``file_search`` tool, answered on the node.

With a ``file_search`` tool the node always searches before it generates (it
does not wait for the model to ask): the query is the last user input's text,
searched in the tool's ``vector_store_ids`` (the tenant's own: another tenant's
is 404, as everywhere) with its ``max_num_results``, ``filters`` and
``ranking_options.score_threshold``. The best chunks are packed whole under
``[context] file_search_tokens`` (for a local model, no more than its window
leaves after the rest of the prompt and the answer's ``max_output_tokens``, so
retrieval never pushes a request past the window), each counted as the prompt
holds it (number, file name and chunk id, text), with the answering model's tokenizer
(the local model's ``tokenizer.json``; for an alias that is not a local model,
the embedding model's, an approximation), and given to the model as a system
message after the instructions. The retrieved text is then part of the prompt:
it is redacted with the rest of it if the request is routed to an external
provider, and a ``local-only`` tenant's request never leaves the node.

The answer carries a ``file_search_call`` output item first (its ``results``
only when ``include`` asks for ``file_search_call.results``) and one
``file_citation`` annotation per chunk given to the model (``file_id``,
``filename``, ``index`` at the end of the text, and this node's ``chunk_id``,
``<file_id>#<n>``). The search is audited as ``context.search`` under the
request's id (chunk ids and scores; the query encrypted).

Limits: the search is a request of its own against the tenant's ``rpm`` (so a
Responses request with ``file_search`` counts two, its search and its
generation), admitted before it runs; a refusal is the Responses request's 429
(``request.rejected``). The query's embedding tokens are charged to the tenant
like ``/v1/embeddings``'.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgspec

from serving.errors import BadRequestError

from .context import Hit, pack, parse_filter
from .context_api import ContextApi, search_record
from .context_http import context_api, meter
from .responses_wire import ResponsesRequest, last_user_text, to_chat
from .state import NodeState
from .tenancy import Principal

__all__ = ["INCLUDE_RESULTS", "Retrieval", "retrieve"]

#: the one ``include`` value this node honours
INCLUDE_RESULTS = "file_search_call.results"
#: tokens kept free for the chat template's framing of the messages, beyond their text
_TEMPLATE_ROOM = 32
#: the least room left for the answer when the request sets no ``max_output_tokens``
_ANSWER_ROOM = 64
_PREAMBLE = (
    "Excerpts from the user's files follow, retrieved for this request. Use them to answer, "
    "and say so when they do not hold the answer."
)


class _Ranking(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    #: ``auto``, ``none`` or the reranker's name (``ContextService.ranker`` refuses anything else)
    ranker: Annotated[str, msgspec.Meta(max_length=128)] | None = None
    score_threshold: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.0


class FileSearchTool(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    type: Literal["file_search"]
    vector_store_ids: Annotated[list[str], msgspec.Meta(min_length=1, max_length=16)]
    max_num_results: Annotated[int, msgspec.Meta(ge=1, le=50)] | None = None
    filters: dict[str, Any] | None = None
    ranking_options: _Ranking | None = None


@dataclass
class Retrieval:
    """What a ``file_search`` found and gave the model."""

    item: dict[str, Any]
    #: the system message's text (None: nothing found)
    context: str | None
    annotations: list[dict[str, Any]] = field(default_factory=list)


def _tool(req: ResponsesRequest) -> FileSearchTool | None:
    tools = req.file_search()
    if not tools:
        return None
    if len(tools) > 1:
        raise BadRequestError(
            "give at most one file_search tool (it takes several vector_store_ids).", param="tools"
        )
    try:
        return msgspec.convert(tools[0], FileSearchTool)
    except msgspec.ValidationError as exc:
        raise BadRequestError(f"the file_search tool: {exc}", param="tools") from None


async def retrieve(
    state: NodeState, principal: Principal, request_id: str, req: ResponsesRequest
) -> Retrieval | None:
    """Search for ``req``'s ``file_search`` tool and pack what fits (None: the request has none)."""
    tool = _tool(req)
    if tool is None:
        return None
    api = context_api(state)
    query = last_user_text(req)
    if not query.strip():
        raise BadRequestError("file_search needs a user message with text to search for.", param="input")
    settings = api.settings
    await state.router.limits.admit(principal.tenant.name, principal.tenant)
    spent = meter(state, principal)
    async with api.audited(principal, request_id, "search", store_ids=tool.vector_store_ids) as record:
        hits = await api.service.search(
            principal.tenant.name,
            tool.vector_store_ids,
            query,
            max_num_results=tool.max_num_results or settings.file_search_results,
            filters=parse_filter(tool.filters) if tool.filters is not None else None,
            score_threshold=tool.ranking_options.score_threshold if tool.ranking_options else 0.0,
            charge=spent,
            ranker=tool.ranking_options.ranker if tool.ranking_options else None,
        )
        count = _tokenizer(api, req.model)
        budget = _budget(api, req, count)
        packed = pack(hits, budget_tokens=budget, count_tokens=count, render=_block)
        record["budget_tokens"] = budget
        record |= search_record(hits) | {
            "packed": [h.id for h in packed.hits],
            "packed_tokens": packed.tokens,
            "embedding_tokens": spent.tokens,
            "content": {"query": query},
        }
    item: dict[str, Any] = {
        "type": "file_search_call",
        "id": f"fs_{uuid.uuid4().hex}",
        "status": "completed",
        "queries": [query],
        "results": [_result(h) for h in hits] if INCLUDE_RESULTS in (req.include or ()) else None,
    }
    if not packed.hits:
        return Retrieval(item=item, context=None)
    blocks = [_block(n, h) for n, h in enumerate(packed.hits, 1)]
    citations = [
        {"type": "file_citation", "file_id": h.chunk.file_id, "filename": h.chunk.filename, "chunk_id": h.id}
        for h in packed.hits
    ]
    return Retrieval(item=item, context="\n\n".join([_PREAMBLE, *blocks]), annotations=citations)


def _block(n: int, hit: Hit) -> str:
    """A chunk as the prompt holds it: numbered, with its file and id, then a blank line after it."""
    return f"[{n}] {hit.chunk.filename} ({hit.id})\n{hit.chunk.text}\n\n"


def _budget(api: ContextApi, req: ResponsesRequest, count: Callable[[str], int]) -> int:
    """Tokens the retrieved chunks may take: ``[context] file_search_tokens``, and for a local model
    no more than its window leaves after the rest of the prompt (counted as JSON, which over-counts)
    and the answer (``max_output_tokens``, or at least ``_ANSWER_ROOM``)."""
    budget = api.settings.file_search_tokens
    window = api.windows.get(req.model)
    if window is None:  # an external model: its window is the provider's
        return budget
    chat = to_chat(req)
    rest = count(msgspec.json.encode([chat["messages"], chat.get("tools") or []]).decode())
    answer = max(req.max_output_tokens or 0, _ANSWER_ROOM)
    return max(0, min(budget, window - rest - answer - count(_PREAMBLE) - _TEMPLATE_ROOM))


def _tokenizer(api: ContextApi, model: str) -> Any:
    tok = api.tokenizers.get(model) or api.service.tokenizer
    return tok.count


def _result(hit: Hit) -> dict[str, Any]:
    c = hit.chunk
    return {
        "file_id": c.file_id,
        "filename": c.filename,
        "score": hit.score,
        "text": c.text,
        "attributes": c.attributes,
    }
