"""Drift canaries: replay known prompts with greedy decoding and compare to the recording.

Pins prove the files on disk are the files that were pinned; they cannot see an
external API that changes the model behind an unchanged name, or a numeric
change in a new engine build. Each model in ``models.toml`` may carry a small
set of synthetic canary prompts with the output recorded when it was pinned
(``record_canaries`` + ``record_canaries_into_file``, behind ``bastion models
record-canaries NAME``). ``run_canaries`` replays them against any ``Provider``
(the local engine or an external API), one at a time, with temperature 0 and a
fixed seed, and reports the match ratio and what changed.

Canary prompts are written by operators for this purpose, never taken from
users' traffic; a mismatch report still carries only digests and short
snippets of the outputs, and the prompt as a digest.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import msgspec

from serving.errors import BastionError
from serving.models import CanaryCase, ModelsConfigError
from serving.protocol import ChatMessage, GenerationRequest, Provider, SamplingOptions

__all__ = [
    "CANARY_SEED",
    "CanaryError",
    "CanaryMismatch",
    "CanaryReport",
    "CanaryScheduler",
    "CanaryTarget",
    "record_canaries",
    "record_canaries_into_file",
    "run_canaries",
]

#: the seed every canary runs with (greedy decoding ignores it; APIs that sample anyway honour it)
CANARY_SEED = 20240601
# the prefix-cache salt of canary requests: never shared with a tenant's cache
_CACHE_SALT = "bastion-canary"
_SNIPPET_CHARS = 120

_log = logging.getLogger("bastion.canary")


class CanaryMismatch(msgspec.Struct, frozen=True, kw_only=True):
    """One canary whose output changed: where, and digests and snippets of both outputs."""

    index: int
    prompt_sha256: str
    expected_sha256: str
    got_sha256: str
    #: character offset of the first difference
    diverges_at: int
    expected_snippet: str
    got_snippet: str


class CanaryError(msgspec.Struct, frozen=True, kw_only=True):
    """A canary that could not run (provider down, timeout): neither a match nor a mismatch."""

    index: int
    code: str


class CanaryReport(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    provider: str
    total: int
    matched: int
    #: cases with no recorded output yet (skipped)
    unrecorded: int = 0
    mismatches: tuple[CanaryMismatch, ...] = ()
    errors: tuple[CanaryError, ...] = ()

    @property
    def match_ratio(self) -> float | None:
        """Matches over the canaries that answered; ``None`` when none did."""
        answered = self.matched + len(self.mismatches)
        return self.matched / answered if answered else None

    @property
    def drifted(self) -> bool:
        return bool(self.mismatches)

    def to_audit_meta(self) -> dict[str, Any]:
        """The report as an audit event's ``meta`` (digests and snippets, no prompt text)."""
        meta: dict[str, Any] = msgspec.to_builtins(self)
        meta["match_ratio"] = self.match_ratio
        return meta


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _diverges_at(a: str, b: str) -> int:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))


def _snippet(text: str, start: int) -> str:
    # show the neighbourhood of the first difference, not the whole output
    begin = max(0, start - _SNIPPET_CHARS // 4)
    return text[begin : begin + _SNIPPET_CHARS]


def _request(model: str, case: CanaryCase, *, seed: int, chat: bool) -> GenerationRequest:
    sampling = SamplingOptions(max_tokens=case.max_tokens, temperature=0.0, top_p=1.0, seed=seed)
    return GenerationRequest(
        request_id=f"canary-{uuid.uuid4().hex}",
        model=model,
        messages=(ChatMessage(role="user", content=case.prompt),) if chat else None,
        prompt=None if chat else case.prompt,
        sampling=sampling,
        cache_salt=_CACHE_SALT,
    )


async def _generate(provider: Provider, request: GenerationRequest, timeout_s: float) -> str:
    parts: list[str] = []
    async with asyncio.timeout(timeout_s):
        stream = provider.stream(request)
        try:
            async for delta in stream:
                parts.append(delta.text)
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
    return "".join(parts)


async def record_canaries(
    provider: Provider,
    model: str,
    cases: Sequence[CanaryCase],
    *,
    seed: int = CANARY_SEED,
    chat: bool = False,
    timeout_s: float = 120.0,
) -> tuple[str, ...]:
    """Generate every canary's output now, to be written back as its ``expected``.

    Any failure raises: a recording with a hole in it would report drift forever.
    """
    outputs: list[str] = []
    for case in cases:
        outputs.append(await _generate(provider, _request(model, case, seed=seed, chat=chat), timeout_s))
    return tuple(outputs)


async def run_canaries(
    provider: Provider,
    model: str,
    cases: Sequence[CanaryCase],
    *,
    seed: int = CANARY_SEED,
    chat: bool = False,
    timeout_s: float = 120.0,
) -> CanaryReport:
    """Replay the recorded canaries against ``provider`` and compare outputs exactly.

    Cases run one after another: batching them together could change the numerics
    of the very thing being checked. ``chat`` sends each prompt as one user message
    (for chat-only external APIs); the recording must have used the same mode.
    """
    matched = unrecorded = 0
    mismatches: list[CanaryMismatch] = []
    errors: list[CanaryError] = []
    for index, case in enumerate(cases):
        if not case.expected:
            unrecorded += 1
            continue
        try:
            got = await _generate(provider, _request(model, case, seed=seed, chat=chat), timeout_s)
        except BastionError as exc:
            errors.append(CanaryError(index=index, code=exc.code))
            continue
        except TimeoutError:
            errors.append(CanaryError(index=index, code="timeout"))
            continue
        if got == case.expected:
            matched += 1
            continue
        at = _diverges_at(case.expected, got)
        mismatches.append(
            CanaryMismatch(
                index=index,
                prompt_sha256=_sha256(case.prompt),
                expected_sha256=_sha256(case.expected),
                got_sha256=_sha256(got),
                diverges_at=at,
                expected_snippet=_snippet(case.expected, at),
                got_snippet=_snippet(got, at),
            )
        )
    return CanaryReport(
        model=model,
        provider=provider.describe().name,
        total=len(cases),
        matched=matched,
        unrecorded=unrecorded,
        mismatches=tuple(mismatches),
        errors=tuple(errors),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class CanaryTarget:
    """A provider and the canaries to replay against one of its models."""

    provider: Provider
    #: the provider's own model name (a local served name, or an external dated model id)
    model: str
    cases: Sequence[CanaryCase]
    chat: bool = False


class CanaryScheduler:
    """Replays every target's canaries at an interval in one background task.

    Each report goes to ``on_report`` (the node exports the ratio and writes an
    audit event on a mismatch). ``run_once`` is what ``bastion canary run`` calls.
    A target that raises does not stop the others or the schedule.
    """

    def __init__(
        self,
        targets: Sequence[CanaryTarget],
        *,
        interval_s: float,
        on_report: Callable[[CanaryReport], Awaitable[None]],
        seed: int = CANARY_SEED,
        timeout_s: float = 120.0,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self._targets = tuple(targets)
        self._interval_s = interval_s
        self._on_report = on_report
        self._seed = seed
        self._timeout_s = timeout_s
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> tuple[CanaryReport, ...]:
        reports: list[CanaryReport] = []
        for target in self._targets:
            try:
                report = await run_canaries(
                    target.provider,
                    target.model,
                    target.cases,
                    seed=self._seed,
                    chat=target.chat,
                    timeout_s=self._timeout_s,
                )
                await self._on_report(report)
            except Exception:
                _log.exception("canary run for model %s failed", target.model)
                continue
            reports.append(report)
        return tuple(reports)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self.run_once()

    def start(self) -> None:
        """Start the schedule; the first run is one interval after start (engines warm up first)."""
        if self._task is None and self._targets:
            self._task = asyncio.create_task(self._run(), name="bastion-canaries")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def __aenter__(self) -> CanaryScheduler:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def record_canaries_into_file(models_toml: Path, name: str, outputs: Sequence[str]) -> None:
    """Write ``outputs`` as the ``expected`` of model ``name``'s canaries, in order.

    Only those values change: comments, order and every other entry stay as they
    were (tomlkit round-trips the file). The file is replaced atomically.
    """
    import tomlkit  # only the CLI path records; the node never rewrites models.toml

    try:
        doc = tomlkit.parse(models_toml.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelsConfigError(f"{models_toml}: cannot read models file: {exc.strerror or exc}") from exc
    except tomlkit.exceptions.ParseError as exc:
        raise ModelsConfigError(f"{models_toml}: not valid TOML: {exc}") from exc
    models = doc.get("models")
    entry = next((m for m in models or () if isinstance(m, dict) and m.get("name") == name), None)
    if entry is None:
        raise ModelsConfigError(f"{models_toml}: no model named {name!r}")
    canaries = entry.get("canaries")
    count = 0 if canaries is None else len(canaries)
    if count != len(outputs):
        raise ModelsConfigError(
            f"{models_toml}: model {name!r} has {count} canaries but {len(outputs)} outputs were recorded"
        )
    for table, output in zip(canaries or (), outputs, strict=True):
        table["expected"] = output
    _atomic_write(models_toml, tomlkit.dumps(doc))


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.chmod(tmp, path.stat().st_mode & 0o777)  # mkstemp makes 0600; keep the file's own mode
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
