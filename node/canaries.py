"""Drift canaries in the node: ``bastion models record-canaries``, ``bastion canary run``
and the scheduled job.

Local models replay the canaries recorded in ``models.toml`` (written there by
``record-canaries`` through ``serving.canary.record_canaries_into_file``).
External providers named as a route's fallbacks replay the same synthetic
prompts (as one user message each) against a baseline kept in
``<data_dir>/canaries/external.json``: an external model's answers are not the
local model's, so its first ``bastion canary run`` records the baseline (trust
on first use) and every later run, and the scheduled job, compares against it.
That catches a provider changing the model behind an unchanged name.

Only operator-written canary prompts are ever sent, never a user's; mismatch
reports and audit events carry digests and short output snippets.

Exit codes of the commands: 0 every canary matched (or was recorded), 1 drift,
2 bad config or usage, 3 a model fails its pins or its engine does not start,
5 some canaries could not run (and none drifted).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import msgspec

from audit import AuditEvent, check_private, private_dir
from router import external_providers
from router.config import RouteConfig
from serving.canary import CanaryReport, CanaryScheduler, CanaryTarget, record_canaries, run_canaries
from serving.errors import BastionError, PinMismatchError
from serving.models import CanaryCase, ModelsConfigError, ModelsFile, load_models_file
from serving.protocol import Provider

from .config import ConfigError, NodeConfig, load_config, resolve
from .state import NodeState

__all__ = [
    "BASELINES_FILE",
    "ExternalBaselines",
    "PlannedCanary",
    "canary_job",
    "plan_canaries",
    "record_canaries_command",
    "run_canaries_command",
]

_log = logging.getLogger("bastion.canary")

#: relative to the node's data folder
BASELINES_FILE = Path("canaries") / "external.json"


def _case_key(case: CanaryCase) -> str:
    # the prompt and the length define what is compared; a changed prompt needs a new baseline
    return hashlib.sha256(f"{case.max_tokens}\0{case.prompt}".encode()).hexdigest()


class ExternalBaselines:
    """External providers' recorded canary answers: ``{"provider/model": {case digest: output}}``."""

    def __init__(self, path: Path, data: dict[str, dict[str, str]]) -> None:
        self.path = path
        self._data = data

    @classmethod
    def load(cls, path: Path) -> ExternalBaselines:
        check_private(path)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return cls(path, {})
        try:
            data = msgspec.json.decode(raw, type=dict[str, dict[str, str]])
        except msgspec.DecodeError as exc:
            raise ModelsConfigError(f"{path}: not a canary baseline file: {exc}") from exc
        return cls(path, data)

    def cases(self, provider: str, model: str, cases: Sequence[CanaryCase]) -> tuple[CanaryCase, ...]:
        """``cases`` with ``expected`` set to this provider's baseline (empty where none is recorded)."""
        recorded = self._data.get(f"{provider}/{model}", {})
        return tuple(msgspec.structs.replace(c, expected=recorded.get(_case_key(c), "")) for c in cases)

    def record(self, provider: str, model: str, cases: Sequence[CanaryCase], outputs: Sequence[str]) -> None:
        entry = self._data.setdefault(f"{provider}/{model}", {})
        for case, output in zip(cases, outputs, strict=True):
            entry[_case_key(case)] = output

    def save(self) -> None:
        private_dir(self.path.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self._data, f, indent=2, sort_keys=True, ensure_ascii=False)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


@dataclass(frozen=True, slots=True, kw_only=True)
class PlannedCanary:
    """A canary target and how it is labelled: the canary set's model and ``local`` or the provider."""

    target: CanaryTarget
    model_label: str
    provider_label: str
    #: the canary set as written in models.toml (for external baselines: without expected outputs)
    source_cases: tuple[CanaryCase, ...]

    @property
    def external(self) -> bool:
        return self.provider_label != "local"


def plan_canaries(
    *,
    models: ModelsFile,
    local: Mapping[str, Provider],
    routes: Sequence[RouteConfig],
    external: Mapping[str, Provider],
    baselines: ExternalBaselines,
    names: Sequence[str] | None = None,
) -> list[PlannedCanary]:
    """Every local model with canaries, and every route fallback of such a model.

    ``names`` filters by local model name or route alias. One target per
    external (provider, model): the first route naming it decides its canaries.
    """
    wanted = set(names) if names else None
    known = set(models.names)
    planned: list[PlannedCanary] = []
    for name, engine in local.items():
        if name not in known or (wanted is not None and name not in wanted):
            continue
        cases = models.get(name).canaries
        if cases:
            target = CanaryTarget(provider=engine, model=name, cases=cases)
            planned.append(
                PlannedCanary(target=target, model_label=name, provider_label="local", source_cases=cases)
            )
    seen: set[tuple[str, str]] = set()
    for route in routes:
        if route.local is None or route.local not in known:
            continue
        if wanted is not None and not wanted & {route.local, route.alias}:
            continue
        cases = models.get(route.local).canaries
        for fb in route.fallbacks:
            provider = external.get(fb.provider)
            if not cases or provider is None or (fb.provider, fb.model) in seen:
                continue
            seen.add((fb.provider, fb.model))
            target = CanaryTarget(
                provider=provider,
                model=fb.model,
                cases=baselines.cases(fb.provider, fb.model, cases),
                chat=True,
            )
            planned.append(
                PlannedCanary(
                    target=target, model_label=route.local, provider_label=fb.provider, source_cases=cases
                )
            )
    return planned


# -- the scheduled job ---------------------------------------------------------------------------------


@asynccontextmanager
async def canary_job(
    state: NodeState, interval_s: float, *, timeout_s: float = 120.0
) -> AsyncIterator[CanaryScheduler]:
    """Replay canaries every ``interval_s`` while the context is open (``build_node`` enters it).

    Exports ``bastion_canary_match_ratio`` / ``bastion_canary_mismatches`` per
    model and provider and appends a ``canary.mismatch`` audit event when one
    drifts. External providers are the node's own (``state.providers``); their
    baselines are recorded by ``bastion canary run``: until then their canaries
    count as unrecorded.
    """
    data_dir = resolve(state.config_dir, state.config.data_dir)
    planned = plan_canaries(
        models=state.models,
        local=state.engines,
        routes=state.config.routes,
        external=state.providers,
        baselines=ExternalBaselines.load(data_dir / BASELINES_FILE),
    )
    labels = {(p.target.provider.describe().name, p.target.model): p for p in planned}

    async def on_report(report: CanaryReport) -> None:
        p = labels.get((report.provider, report.model))
        model, provider = (p.model_label, p.provider_label) if p else (report.model, report.provider)
        state.metrics.observe_canary(
            model=model,
            provider=provider,
            match_ratio=report.match_ratio,
            mismatches=len(report.mismatches),
        )
        if report.drifted:
            _log.warning(
                "canary drift: model %s on %s: %d of %d differ",
                model,
                provider,
                len(report.mismatches),
                report.total,
            )
            if state.audit is not None:
                meta = report.to_audit_meta() | {"canary_set": model, "provider_name": provider}
                await state.audit.append(AuditEvent(type="canary.mismatch", tenant="", meta=meta))

    scheduler = CanaryScheduler(
        [p.target for p in planned], interval_s=interval_s, on_report=on_report, timeout_s=timeout_s
    )
    async with scheduler:
        yield scheduler


# -- the commands ----------------------------------------------------------------------------------------


async def record_canaries_command(
    models_file: Path,
    data_dir: Path,
    name: str,
    *,
    engine: Provider | None = None,
    out: TextIO | None = None,
) -> int:
    """Start model ``name`` (or use ``engine``), record its canaries' outputs, write them into the file."""
    out = out or sys.stdout
    try:
        models = load_models_file(models_file)
        spec = models.get(name)
    except ModelsConfigError as exc:
        return _fail(str(exc), 2)
    except KeyError:
        return _fail(f"{models_file}: no model named {name!r}", 2)
    if not spec.canaries:
        return _fail(f"model {name!r} has no [[models.canaries]] in {models_file}; add prompts first", 2)
    try:
        async with AsyncExitStack() as stack:
            if engine is None:
                engine = (await _start_engines(models, [name], models_file, data_dir, stack))[name]
            outputs = await record_canaries(engine, name, spec.canaries)
    except PinMismatchError as exc:
        return _fail(f"refusing to record: {exc.message}", 3)
    except BastionError as exc:
        return _fail(f"could not record canaries for {name!r}: {exc.message}", 3)
    try:
        from serving.canary import record_canaries_into_file

        record_canaries_into_file(models_file, name, outputs)
    except ModelsConfigError as exc:
        return _fail(str(exc), 2)
    print(f"recorded {len(outputs)} canaries for {name} into {models_file}", file=out)
    for i, (case, output) in enumerate(zip(spec.canaries, outputs, strict=True)):
        print(f"  #{i} ({case.max_tokens} tokens) -> {output[:60]!r}", file=out)
    return 0


async def _start_engines(
    models: ModelsFile, names: Sequence[str], models_file: Path, data_dir: Path, stack: AsyncExitStack
) -> dict[str, Provider]:
    """The node's own engine start-up (``node.assembly.start_engines``), a builder model
    (the tiny dev models) built first where it is missing."""
    from .assembly import start_engines

    # hashing (or building) the models' files must not stall the event loop
    models_dir = await asyncio.to_thread(_ensure_models, models, names, models_file, data_dir)
    return await start_engines(models, names, data_dir=data_dir, models_dir=models_dir, stack=stack)


def _ensure_models(models: ModelsFile, names: Sequence[str], models_file: Path, data_dir: Path) -> Path:
    """Each model verified (a builder model built where missing); the models file's folder."""
    from serving.model_commands import ensure_model

    for name in names:
        ensure_model(models.get(name), models_file, data_dir)
    return models_file.resolve().parent


async def run_canaries_command(
    config_path: Path | None,
    names: list[str] | None,
    *,
    engines: Mapping[str, Provider] | None = None,
    providers: Mapping[str, Provider] | None = None,
    out: TextIO | None = None,
) -> int:
    """Replay canaries against local models and route fallbacks; print a report (see the module doc).

    Without a config: every model with canaries in the repo's models.toml (or
    ``$BASTION_MODELS_FILE``), no external providers. ``engines``/``providers``
    replace what would be started or built (tests pass real ones).
    """
    out = out or sys.stdout
    try:
        config, models_file, data_dir, models = _load_context(config_path)
    except (ConfigError, ModelsConfigError) as exc:
        return _fail(str(exc), 2)
    if config is not None:
        from .served import served_models

        try:
            local_names = served_models(config, models)
        except ConfigError as exc:
            return _fail(str(exc), 2)
    else:
        local_names = [m.name for m in models.models]
    aliases = {r.alias for r in _maybe_routes(config)}
    unknown = [n for n in names or () if n not in models.names and n not in aliases]
    if unknown:
        return _fail(f"unknown model or route: {', '.join(unknown)}", 2)
    wanted = set(names) if names else None
    baselines = ExternalBaselines.load(data_dir / BASELINES_FILE)
    try:
        async with AsyncExitStack() as stack:
            with_canaries = [
                name
                for name in local_names
                if models.get(name).canaries and (wanted is None or name in wanted)
            ]
            local: dict[str, Provider]
            if engines is not None:
                local = {name: engines[name] for name in with_canaries if name in engines}
            else:
                local = await _start_engines(models, with_canaries, models_file, data_dir, stack)
            external: dict[str, Provider] = {}
            if config is not None:
                if providers is not None:
                    external = dict(providers)
                else:
                    external = await stack.enter_async_context(external_providers(config.providers))
            planned = plan_canaries(
                models=models,
                local=local,
                routes=_maybe_routes(config),
                external=external,
                baselines=baselines,
                names=names,
            )
            if not planned:
                print(
                    "no canaries to run (add [[models.canaries]] and run `bastion models record-canaries`)",
                    file=out,
                )
                return 0
            return await _run_planned(planned, baselines, out)
    except PinMismatchError as exc:
        return _fail(f"refusing to run canaries: {exc.message}", 3)
    except BastionError as exc:
        return _fail(f"could not start an engine: {exc.message}", 3)


def _load_context(config_path: Path | None) -> tuple[NodeConfig | None, Path, Path, ModelsFile]:
    """(config, models file, data dir, models) from ``config_path``, or the repo's models and ./data."""
    if config_path is None:
        from .devmode import default_data_dir, default_models_file

        models_file = default_models_file()
        return None, models_file, default_data_dir(), load_models_file(models_file)
    config = load_config(config_path)
    base = config_path.absolute().parent
    models_file = resolve(base, config.models_file)
    return config, models_file, resolve(base, config.data_dir), load_models_file(models_file)


def _maybe_routes(config: NodeConfig | None) -> tuple[RouteConfig, ...]:
    return () if config is None else config.routes


async def _run_planned(planned: Sequence[PlannedCanary], baselines: ExternalBaselines, out: TextIO) -> int:
    drifted = failed = False
    recorded = False
    for p in planned:
        t = p.target
        where = f"{p.model_label} on {p.provider_label}" + (f" ({t.model})" if p.external else "")
        if p.external and all(not c.expected for c in t.cases):
            try:
                outputs = await record_canaries(t.provider, t.model, p.source_cases, chat=True)
            except (BastionError, TimeoutError) as exc:
                failed = True
                print(f"ERROR  {where}: could not record a baseline: {_why(exc)}", file=out)
                continue
            baselines.record(p.provider_label, t.model, p.source_cases, outputs)
            recorded = True
            print(
                f"BASELINE  {where}: recorded {len(outputs)} canaries (compared from the next run)", file=out
            )
            continue
        report = await run_canaries(t.provider, t.model, t.cases, chat=t.chat)
        ratio = report.match_ratio
        status = "DRIFT" if report.drifted else ("ERROR" if report.errors else "OK")
        ratio_text = "-" if ratio is None else f"{ratio:.0%}"
        print(
            f"{status:<6} {where}: {report.matched}/{report.total} match ({ratio_text})"
            + (f", {report.unrecorded} unrecorded" if report.unrecorded else "")
            + (f", {len(report.errors)} failed" if report.errors else ""),
            file=out,
        )
        for m in report.mismatches:
            print(
                f"    canary #{m.index} (prompt sha256 {m.prompt_sha256[:12]})"
                f" differs at char {m.diverges_at}: expected {m.expected_snippet!r}, got {m.got_snippet!r}",
                file=out,
            )
        for e in report.errors:
            print(f"    canary #{e.index} did not run: {e.code}", file=out)
        drifted |= report.drifted
        failed |= bool(report.errors)
    if recorded:
        baselines.save()
    if drifted:
        return 1
    return 5 if failed else 0


def _why(exc: BaseException) -> str:
    return exc.code if isinstance(exc, BastionError) else "timeout"


def _fail(message: str, code: int) -> int:
    print(f"bastion: {message}", file=sys.stderr)
    return code
