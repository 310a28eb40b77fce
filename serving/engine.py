"""The local engine: one pinned model served by vLLM's in-process ``AsyncLLM``.

``LocalEngine`` satisfies ``serving.protocol.Provider``. It refuses to load a
model whose files fail their pins, switches off every egress path before vLLM
starts, streams generations as deltas with running token counts, aborts a
request in the engine when its consumer goes away, and proves readiness with
real one-token generations (the probe state machine is ``serving.prober``; the
scheduler figures come from ``serving.engine_stats``): a wedged or dead engine
fails requests fast with ``EngineUnavailableError`` instead of letting them hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import msgspec

from serving.chat_template import PromptRenderer, budget_max_tokens
from serving.contract import TOOL_FIELDS
from serving.egress import apply_no_egress_env
from serving.engine_stats import EngineStats, StatsSink
from serving.errors import BadRequestError, EngineUnavailableError, InternalError
from serving.models import ModelSpec
from serving.pins import verify_model
from serving.prober import Prober, ProbeSettings
from serving.protocol import Delta, GenerationRequest, Health, ProviderInfo
from serving.sampling import ChoiceStream, check_json_schema, merge_streams, sampling_kwargs
from serving.tool_output import ToolSetup, ToolStream, reader_for, structured_outputs, tool_parser_class
from serving.tools import plan_tools

__all__ = ["EngineStats", "LocalEngine", "engine_args"]

#: how long the engine core gets to stop its worker and release its resources before it is killed:
#: its own grace for the worker (5 s) and for a SIGTERM to it (4 s), and a margin
_SHUTDOWN_GRACE_S: Final = 15.0


class LocalEngine:
    """A pinned model on vLLM ``AsyncLLM``, with probe-based health. Use ``async with``."""

    def __init__(
        self,
        spec: ModelSpec,
        model_dir: Path,
        *,
        probe_interval_s: float = 15.0,
        probe_timeout_s: float = 10.0,
        start_probe_timeout_s: float = 120.0,
        retry_probe_interval_s: float = 2.0,
        wedge_after_misses: int = 2,
    ) -> None:
        self.spec = spec
        self.model_dir = model_dir
        self.name = spec.name
        self.revision = spec.pinned_revision
        self.max_model_len = spec.max_model_len
        settings = ProbeSettings(
            interval_s=probe_interval_s,
            timeout_s=probe_timeout_s,
            start_timeout_s=start_probe_timeout_s,
            retry_interval_s=retry_probe_interval_s,
            wedge_after_misses=wedge_after_misses,
        )
        self._prober = Prober(
            spec.name,
            settings,
            forward=self._probe_forward,
            errored=lambda: self._llm is not None and bool(self._llm.errored),
            on_unready=self._abort_inflight,
        )
        self._health = self._prober.health
        self._stats = StatsSink()
        self._llm: Any = None
        self._renderer: PromptRenderer | None = None
        self._tokenizer: Any = None
        #: vLLM's tool parser for the model family (``tool_parser`` in models.toml), if any
        self._tool_parser: type[Any] | None = None
        self._probe_ids: list[int] = []
        self._inflight: set[str] = set()
        #: seconds the last ``start()`` took (pins + engine + first probe)
        self.start_seconds: float | None = None

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Verify pins, start vLLM, prove one forward pass, then probe in the background.

        Raises ``PinMismatchError`` (nothing is loaded) or ``EngineUnavailableError``.
        """
        t0 = time.monotonic()
        # hashing multi-GB weights must not stall other engines' event loop work
        await asyncio.to_thread(verify_model, self.spec, self.model_dir)
        if self.spec.tool_parser is not None:
            try:
                self._tool_parser = await asyncio.to_thread(tool_parser_class, self.spec.tool_parser)
            except ValueError as exc:
                raise EngineUnavailableError(f"model {self.name!r}: `tool_parser`: {exc}") from exc
        apply_no_egress_env()
        try:
            await asyncio.to_thread(self._create_llm)
        except Exception as exc:
            self._health.dead(f"engine failed to start: {type(exc).__name__}: {exc}")
            raise EngineUnavailableError(f"model {self.name!r}: engine failed to start: {exc}") from exc
        tokenizer = self._tokenizer = self._llm.get_tokenizer()
        self._renderer = PromptRenderer(tokenizer)
        self._probe_ids = list(tokenizer.encode("ping", add_special_tokens=True)) or [0]
        await self._prober.first_probe()
        health = self._health_now()
        if not health.healthy:
            await self.aclose()
            raise EngineUnavailableError(f"model {self.name!r}: first probe failed: {health.detail}")
        self._prober.start()
        self.start_seconds = time.monotonic() - t0

    def _create_llm(self) -> None:
        # Sets self._llm rather than returning it: a returned engine would stay
        # referenced from the executor's finished futures after aclose().
        from vllm import envs as vllm_envs
        from vllm.config import StructuredOutputsConfig
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(
            **engine_args(self.spec, self.model_dir),
            # JSON-schema answers (free-text redaction) with no free whitespace: a model cannot
            # pad an answer until its context runs out
            structured_outputs_config=StructuredOutputsConfig(
                backend="xgrammar", disable_any_whitespace=True
            ),
            **self._runner_args(),
        )
        self._llm = AsyncLLM.from_engine_args(args, stat_loggers=[self._stats.logger_factory()])
        # vLLM reads its environment variables through os.getenv on the per-token path (stats);
        # its own engine processes freeze them once started, and so does the node.
        vllm_envs.enable_envs_cache()

    def _runner_args(self) -> dict[str, Any]:
        """Engine arguments of this engine's task (generation: vLLM's defaults)."""
        return {}

    def _forward_once(self, request_id: str) -> AsyncIterator[Any]:
        """One forward pass over the probe prompt: a one-token greedy generation."""
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, output_kind=RequestOutputKind.FINAL_ONLY)
        gen: AsyncIterator[Any] = self._llm.generate(
            {"prompt_token_ids": self._probe_ids}, params, request_id
        )
        return gen

    async def _probe_forward(self) -> None:
        """The prober's forward pass: one probe generation to its end (a dead engine is marked dead)."""
        from vllm.v1.engine.exceptions import EngineDeadError

        try:
            async for _ in self._forward_once(f"bastion-probe-{uuid.uuid4().hex}"):
                pass
        except EngineDeadError:
            self._health.dead("engine process died")
            raise

    async def aclose(self) -> None:
        """Stop probing, abort what is in flight, shut vLLM down and reap its processes."""
        await self._prober.aclose()
        llm, self._llm = self._llm, None
        self._health.stopped()
        if llm is None:
            return
        if self._inflight and not llm.errored:
            with contextlib.suppress(Exception):
                await llm.abort(list(self._inflight))
        # Stop vLLM's output handler before its engine core goes: left running, it may see the
        # core exit first and log that as an EngineDeadError at ERROR, on every clean stop.
        handler = getattr(llm, "output_handler", None)
        if isinstance(handler, asyncio.Task) and not handler.done():
            handler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await handler
        # The engine core unlinks its shared memory only after its worker exited, and the worker's
        # exit (its final garbage collection) can take seconds on a busy host: vLLM's default grace
        # (5 s, then SIGKILL) leaked that memory ("leaked shared_memory" at exit) in some stops.
        await asyncio.to_thread(llm.shutdown, _SHUTDOWN_GRACE_S)
        # AsyncLLM sits in reference cycles; collect it now, while the modules its
        # __del__ needs still exist (at interpreter exit they are gone and it raises)
        del llm
        gc.collect()

    async def __aenter__(self) -> LocalEngine:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def engine_pids(self) -> tuple[int, ...]:
        """Process ids of vLLM's engine-core processes (diagnostics: orphan checks, fault drills)."""
        try:
            procs = self._llm.engine_core.resources.engine_manager.processes
            return tuple(int(p.pid) for p in procs if p.pid is not None)
        except AttributeError:
            return ()

    # -- provider ------------------------------------------------------------------

    def describe(self) -> ProviderInfo:
        return ProviderInfo(
            name="local",
            kind="local",
            region="local",
            models=(self.name,),
            revisions={self.name: self.revision},
            unsupported=TOOL_FIELDS if self.spec.tool_parser is None else frozenset(),
        )

    def _check_alive(self) -> None:
        self._prober.check_alive()

    async def health(self) -> Health:
        """The last probe's verdict plus the scheduler's queue figures (no forward pass)."""
        return self._health_now()

    def _health_now(self) -> Health:
        self._check_alive()
        s = self.stats()
        h = self._health
        # the frontend's count is current; the scheduler's may lag an abort
        idle = s.unfinished == 0
        return Health(
            healthy=h.ready,
            detail=f"{h.state}: {h.detail}",
            last_ok_s=h.last_ok_s,
            waiting=0 if idle else s.waiting,
            running=0 if idle else s.running,
            kv_cache_usage=s.kv_cache_usage,
        )

    async def probe(self) -> Health:
        """Run a one-token generation now; mark the engine wedged if it misses the timeout
        while no generation progresses (a probe merely queued behind a busy batch is slow)."""
        if self._llm is not None:
            await self._prober.probe()
        return self._health_now()

    async def _abort_inflight(self) -> None:
        """End every in-flight stream: each sees an abort and raises ``EngineUnavailableError``."""
        if not self._inflight or self._llm is None:
            return
        with contextlib.suppress(Exception):
            await self._llm.abort(list(self._inflight))

    def stats(self) -> EngineStats:
        llm = self._llm
        unfinished = int(llm.get_num_unfinished_requests()) - self._prober.inflight if llm is not None else 0
        return self._stats.snapshot(max(0, unfinished))

    def _unavailable(self) -> EngineUnavailableError:
        h = self._health
        return EngineUnavailableError(
            f"model {self.name!r} is unavailable: engine {h.state} ({h.detail})", retry_after_s=5.0
        )

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        """Prompt tokens as this model counts them (its tokenizer and chat template)."""
        if self._renderer is None:
            raise self._unavailable()
        renderer = self._renderer
        if isinstance(request.prompt, tuple):
            return sum(
                len(renderer.render(msgspec.structs.replace(request, prompt=p))[0]) for p in request.prompt
            )
        return len(renderer.render(request)[0])

    def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """Generate; see ``serving.protocol.Provider.stream``. Validation errors are raised
        on the first ``__anext__``, before anything is queued in the engine."""
        return self._stream(request)

    def _prepare(self, request: GenerationRequest) -> tuple[list[int], Any, ToolStream | None]:
        """Prompt token ids, vLLM ``SamplingParams`` and the tool-call reader (if the request has
        tools) for a request with one prompt."""
        from vllm.exceptions import VLLMClientError
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        if self._renderer is None:
            raise self._unavailable()
        ids, param = self._renderer.render(request)
        s = request.sampling
        plan = plan_tools(request)
        if plan is not None and self._tool_parser is None:
            raise BadRequestError(
                f"model {self.name!r} has no `tool_parser` in models.toml: it cannot serve tools",
                param="tools",
            )
        if plan is not None and s.n > 1:
            raise BadRequestError(
                "the local engine reads tool calls from one choice only: use n = 1", param="n"
            )
        tools = (
            ToolSetup(None) if plan is None else reader_for(plan, request, self._tool_parser, self._tokenizer)
        )
        max_tokens = budget_max_tokens(
            len(ids), s.max_tokens, self.max_model_len, prompt_param=param, min_tokens=s.min_tokens
        )
        try:
            params = SamplingParams(
                max_tokens=max_tokens,
                min_tokens=s.min_tokens,
                stop=list(s.stop) or None,
                ignore_eos=s.ignore_eos,
                output_kind=RequestOutputKind.DELTA,
                skip_special_tokens=tools.skip_special_tokens,
                structured_outputs=structured_outputs(s.json_schema, plan, tools),
                **sampling_kwargs(s),
            )
        except (ValueError, VLLMClientError) as exc:
            bad = getattr(exc, "parameter", None)
            raise BadRequestError(f"invalid sampling parameters: {exc}", param=bad) from exc
        if request.response_format is not None and s.json_schema is not None:
            check_json_schema(s.json_schema)  # the client's schema (the node's own are known good)
        return ids, params, None if tools.reader is None else ToolStream(tools.reader)

    def _stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        if isinstance(request.prompt, tuple):
            # several prompts: one engine request each, their choices numbered in prompt order
            n = request.sampling.n
            return merge_streams(
                [
                    self._stream_one(msgspec.structs.replace(request, prompt=prompt), first_index=i * n)
                    for i, prompt in enumerate(request.prompt)
                ]
            )
        return self._stream_one(request)

    async def _stream_one(self, request: GenerationRequest, *, first_index: int = 0) -> AsyncIterator[Delta]:
        self._check_alive()
        if not self._health.ready or self._llm is None:
            raise self._unavailable()
        from vllm.exceptions import GracefulHTTPError, VLLMClientError
        from vllm.v1.engine.exceptions import EngineDeadError

        ids, params, tools = self._prepare(request)
        prompt: dict[str, Any] = {"prompt_token_ids": ids}
        if request.cache_salt:
            prompt["cache_salt"] = request.cache_salt
        # our own id: two client requests may share a request_id, vLLM's abort is by id
        request_id = f"{request.request_id}-{uuid.uuid4().hex[:12]}"
        choices = ChoiceStream(
            n=params.n,
            prompt_tokens=len(ids),
            logprobs=request.sampling.logprobs,
            first_index=first_index,
            tools=tools,
        )
        finished = False
        self._inflight.add(request_id)
        gen = self._llm.generate(prompt, params, request_id)
        try:
            async for out in gen:
                self._prober.note_output()
                if out.finished:
                    finished = True
                    if not self._health.ready and any(o.finish_reason == "abort" for o in out.outputs):
                        raise self._unavailable()
                for delta in choices.deltas(
                    out.outputs, finished=out.finished, cached=int(out.num_cached_tokens or 0)
                ):
                    yield delta
                if out.finished:
                    return
            # the engine's generator ended without a finished output: it was torn down under us
            self._check_alive()
            raise self._unavailable()
        except EngineDeadError as exc:
            self._health.dead("engine process died")
            raise self._unavailable() from exc
        except (BadRequestError, EngineUnavailableError):
            raise
        except (GeneratorExit, asyncio.CancelledError):
            raise
        except (ValueError, VLLMClientError) as exc:
            if tools is not None and params.structured_outputs is not None:
                # the grammar of the tools' calls: a schema feature xgrammar cannot generate under
                raise BadRequestError(
                    f"the tools' parameter schemas cannot be generated under: {exc}", param="tools"
                ) from exc
            bad = getattr(exc, "parameter", None)
            raise BadRequestError(f"the engine rejected the request: {exc}", param=bad) from exc
        except GracefulHTTPError as exc:
            # vLLM's admission control (queue full): busy, not broken
            raise EngineUnavailableError(f"model {self.name!r} is busy: {exc}", retry_after_s=1.0) from exc
        except Exception as exc:
            self._check_alive()
            if not self._health.ready:
                raise self._unavailable() from exc
            raise InternalError(f"generation failed: {type(exc).__name__}") from exc
        finally:
            self._inflight.discard(request_id)
            if not finished and self._llm is not None and not self._llm.errored:
                # the consumer went away (or we failed mid-stream): free the sequence now
                with contextlib.suppress(Exception):
                    await self._llm.abort(request_id)
            with contextlib.suppress(Exception):
                await gen.aclose()


def engine_args(spec: ModelSpec, model_dir: Path) -> dict[str, Any]:
    """vLLM's ``AsyncEngineArgs`` for a model, parallelism and GPU placement included (those that
    are plain values; the node adds its structured-output settings)."""
    return {
        "model": str(model_dir),
        "tokenizer": str(model_dir),
        "served_model_name": [spec.name],
        # only safetensors: never unpickle a checkpoint, never run repo code
        "load_format": "safetensors",
        "trust_remote_code": False,
        "dtype": spec.dtype,
        "max_model_len": spec.max_model_len,
        "gpu_memory_utilization": spec.gpu_memory_utilization,
        "tensor_parallel_size": spec.tensor_parallel_size,
        "pipeline_parallel_size": spec.pipeline_parallel_size,
        "data_parallel_size": spec.data_parallel_size,
        "distributed_executor_backend": spec.distributed_executor_backend,
        "device_ids": None if spec.devices is None else list(spec.devices),
        "max_num_seqs": spec.max_num_seqs,
        "enable_prefix_caching": spec.enable_prefix_caching,
        "enforce_eager": spec.enforce_eager,
        "kv_cache_memory_bytes": spec.kv_cache_memory_bytes,
        # vLLM's default loggers would register Prometheus metrics and log
        # every few seconds; ours only records (see serving.engine_stats)
        "disable_log_stats": True,
        "enable_log_requests": False,
    }
