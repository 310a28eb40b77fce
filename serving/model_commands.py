"""What ``bastion models ...`` does: build, verify, list and pull pinned models.

Plain functions over paths; the node's CLI parses arguments and prints. Model
files live under ``<data_dir>/models/<name>/`` for builder and hub models, and
where they are for ``path`` models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import msgspec

from serving.errors import PinMismatchError
from serving.hub import HubUnavailableError, download_pinned
from serving.models import ModelsConfigError, ModelsFile, ModelSpec, load_models_file, resolve_model_dir
from serving.pins import how_to_get, verify_model
from serving.tiny import BUILDERS

__all__ = [
    "HubUnavailableError",
    "ModelListing",
    "VerifyResult",
    "build_dev",
    "describe_models",
    "ensure_model",
    "model_dir_for",
    "pull",
    "verify_all",
]


class VerifyResult(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    model_dir: str
    status: Literal["ok", "missing", "mismatch"]
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class ModelListing(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    #: ``builder:tiny``, ``hf:owner/name@commit`` or ``path:/abs/dir``
    source: str
    model_dir: str
    on_disk: bool
    revision: str
    dtype: str
    max_model_len: int
    files: int


def _load(models_file: Path) -> ModelsFile:
    return load_models_file(models_file)


def model_dir_for(spec: ModelSpec, models_file: Path, data_dir: Path) -> Path:
    return resolve_model_dir(spec, data_dir=data_dir, models_file_dir=models_file.resolve().parent)


def _make_data_dir(data_dir: Path) -> None:
    # The node keeps its databases here and refuses a data folder open to others; the model
    # folders inside keep their own modes (the serving user reads them).
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)


def _built_specs(models: ModelsFile, models_file: Path) -> list[ModelSpec]:
    specs = [spec for spec in models.models if spec.builder is not None]
    if not specs:
        raise ModelsConfigError(f"{models_file}: no model with a `builder`; nothing to build")
    return specs


def _build(spec: ModelSpec, model_dir: Path) -> Path:
    if spec.builder is None:
        raise ModelsConfigError(f"model {spec.name!r} has no `builder`: it cannot be built here")
    return BUILDERS[spec.builder](model_dir)


def build_dev(data_dir: Path, models_file: Path) -> dict[str, Path]:
    """Build every built-in dev model (the tiny chat, embedding and reranker models) into the data
    folder and verify each against its pins; returns each model's folder by name.

    A build that does not match the committed pins raises ``PinMismatchError``
    (different package versions can change the bytes; see ``serving.tiny``).
    """
    built: dict[str, Path] = {}
    for spec in _built_specs(_load(models_file), models_file):
        _make_data_dir(data_dir)
        dest = _build(spec, model_dir_for(spec, models_file, data_dir))
        verify_model(spec, dest)
        built[spec.name] = dest
    return built


def ensure_model(spec: ModelSpec, models_file: Path, data_dir: Path) -> Path:
    """The verified folder of ``spec``; a builder model is (re)built when absent or failing its pins.

    Hub and path models are never fetched here (serving does not reach a hub):
    their pin failure is raised as ``PinMismatchError``.
    """
    model_dir = model_dir_for(spec, models_file, data_dir)
    try:
        verify_model(spec, model_dir)
    except PinMismatchError:
        if spec.builder is None:
            raise
        _make_data_dir(data_dir)
        _build(spec, model_dir)
        verify_model(spec, model_dir)
    return model_dir


def verify_all(models_file: Path, data_dir: Path) -> list[VerifyResult]:
    """Check every model of ``models_file`` on disk against its pins, one result per model."""
    results: list[VerifyResult] = []
    for spec in _load(models_file).models:
        model_dir = model_dir_for(spec, models_file, data_dir)
        if not model_dir.is_dir():
            results.append(
                VerifyResult(
                    name=spec.name, model_dir=str(model_dir), status="missing", detail=how_to_get(spec)
                )
            )
            continue
        try:
            verify_model(spec, model_dir)
        except PinMismatchError as exc:
            results.append(
                VerifyResult(name=spec.name, model_dir=str(model_dir), status="mismatch", detail=exc.message)
            )
        else:
            results.append(VerifyResult(name=spec.name, model_dir=str(model_dir), status="ok"))
    return results


def _source(spec: ModelSpec, model_dir: Path) -> str:
    if spec.repo is not None:
        return f"hf:{spec.repo}@{spec.revision}"
    if spec.builder is not None:
        return f"builder:{spec.builder}"
    return f"path:{model_dir}"


def describe_models(models_file: Path, data_dir: Path) -> list[ModelListing]:
    """What ``bastion models list`` shows (presence only; ``verify`` hashes the files)."""
    listings: list[ModelListing] = []
    for spec in _load(models_file).models:
        model_dir = model_dir_for(spec, models_file, data_dir)
        listings.append(
            ModelListing(
                name=spec.name,
                source=_source(spec, model_dir),
                model_dir=str(model_dir),
                on_disk=model_dir.is_dir(),
                revision=spec.pinned_revision,
                dtype=spec.dtype,
                max_model_len=spec.max_model_len,
                files=len(spec.files),
            )
        )
    return listings


def pull(
    name: str, models_file: Path, data_dir: Path, *, endpoint: str | None = None, timeout_s: float = 10.0
) -> Path:
    """Download model ``name`` at its pinned revision and verify it.

    Raises ``KeyError`` for an unknown name, ``ValueError`` for a model with no
    hub source, ``HubUnavailableError`` with no network, ``PinMismatchError``
    when the download fails its pins.
    """
    spec = _load(models_file).get(name)
    _make_data_dir(data_dir)
    return download_pinned(
        spec, model_dir_for(spec, models_file, data_dir), endpoint=endpoint, timeout_s=timeout_s
    )
