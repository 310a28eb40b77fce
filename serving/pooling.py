"""What the pooling engines share: one pooled forward pass per input, all or none, with the error taxonomy.

``PoolingEngine`` is a ``LocalEngine`` on vLLM's pooling runner (``runner =
"pooling"``, the ``convert`` its task names) whose probe is one pooled input of
that task. It refuses generation, and ``_pool_all`` runs one engine request per
input concurrently, turning vLLM's failures into the node's errors: a dead engine
``EngineUnavailableError``, a rejected input ``BadRequestError`` naming the
parameter, admission control a 503 to retry, anything else an ``InternalError``;
an unfinished request is aborted in the engine. The embedder
(``serving.embedding``) and the reranker (``serving.rerank``) are its subclasses.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from serving.engine import LocalEngine
from serving.errors import BadRequestError, EngineUnavailableError, InternalError
from serving.protocol import Delta, GenerationRequest

if TYPE_CHECKING:
    from vllm.tasks import PoolingTask

__all__ = ["PoolingEngine"]


class PoolingEngine(LocalEngine):
    """A pinned model on vLLM's pooling runner. Subclasses set ``_task`` and ``_use``."""

    #: vLLM's pooling task (``embed``, ``classify``): the runner's ``convert`` and every request's
    _task: ClassVar[PoolingTask]
    #: what a client is told to use instead of generation
    _use: ClassVar[str]
    #: the request parameter a rejected input is blamed on
    _input_param: ClassVar[str] = "input"

    def _runner_args(self) -> dict[str, Any]:
        return {"runner": "pooling", "convert": self._task}

    def _params(self, **over: Any) -> Any:
        from vllm.pooling_params import PoolingParams

        return PoolingParams(task=self._task, **over)

    def _forward_once(self, request_id: str) -> AsyncIterator[Any]:
        gen: AsyncIterator[Any] = self._llm.encode(
            {"prompt_token_ids": self._probe_ids}, self._params(), request_id
        )
        return gen

    def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        return self._refuse_generation()

    async def _refuse_generation(self) -> AsyncIterator[Delta]:
        raise BadRequestError(f"The model '{self.name}' is {self._use}.", param="model")
        yield Delta()  # pragma: no cover - makes this an async generator

    async def _pool_all(self, request_id: str, inputs: Sequence[list[int]], params: Any) -> list[Any]:
        """The pooled tensor of every input (token ids), computed concurrently, in input order;
        all or none (a failure aborts the rest)."""
        self._check_alive()
        if not self._health.ready or self._llm is None:
            raise self._unavailable()
        base = f"{request_id}-{uuid.uuid4().hex[:12]}"
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self._pool_one(ids, params, f"{base}-{i}"))
                    for i, ids in enumerate(inputs)
                ]
        except BaseExceptionGroup as group_exc:
            raise _first(group_exc.exceptions) from None
        return [t.result() for t in tasks]

    async def _pool_one(self, ids: list[int], params: Any, request_id: str) -> Any:
        from vllm.exceptions import GracefulHTTPError, VLLMClientError
        from vllm.v1.engine.exceptions import EngineDeadError

        self._inflight.add(request_id)
        finished = False
        try:
            async for out in self._llm.encode({"prompt_token_ids": ids}, params, request_id):
                self._prober.note_output()
                if out.finished:
                    finished = True
                    return out.outputs.data
            self._check_alive()
            raise self._unavailable()
        except EngineDeadError as exc:
            self._health.dead("engine process died")
            raise self._unavailable() from exc
        except (BadRequestError, EngineUnavailableError, asyncio.CancelledError):
            raise
        except (ValueError, VLLMClientError) as exc:
            raise BadRequestError(f"the engine rejected the input: {exc}", param=self._input_param) from exc
        except GracefulHTTPError as exc:
            raise EngineUnavailableError(f"model {self.name!r} is busy: {exc}", retry_after_s=1.0) from exc
        except Exception as exc:
            self._check_alive()
            if not self._health.ready:
                raise self._unavailable() from exc
            raise InternalError(f"{self._task} failed: {type(exc).__name__}") from exc
        finally:
            self._inflight.discard(request_id)
            if not finished and self._llm is not None and not self._llm.errored:
                with contextlib.suppress(Exception):
                    await self._llm.abort(request_id)


def _first(errors: Sequence[BaseException]) -> BaseException:
    """The error to report from a failed batch: a client's mistake before an engine's."""
    for kind in (BadRequestError, EngineUnavailableError):
        for exc in errors:
            if isinstance(exc, kind):
                return exc
    return errors[0]
