"""``models.toml``: the pinned models a node may serve.

Each model names where its files come from (a Hugging Face repo at a full
commit, a local path, or a built-in builder) and the sha256 of every file the
engine reads. Anything floating (no revision, a branch name, a file without a
hash) is refused at load time, naming the model and the file, so nothing
unpinned can ever reach the engine.

Decoded strictly with msgspec: an unknown key or a wrong type is an error with
its location (``$.models[0].dtype``).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path, PurePosixPath
from typing import Annotated, Final, Literal

import msgspec

from serving.errors import StartupFailure

__all__ = [
    "CanaryCase",
    "ModelSpec",
    "ModelsConfigError",
    "ModelsFile",
    "load_models_file",
    "resolve_model_dir",
]

_REVISION: Final = re.compile(r"^[0-9a-f]{40}$")
_SHA256: Final = re.compile(r"^[0-9a-f]{64}$")
_REPO: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")

ModelName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")]


class ModelsConfigError(StartupFailure, ValueError):
    """``models.toml`` is unreadable, malformed or floating; the message names the location."""


class CanaryCase(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A known prompt and its expected greedy output (used to catch silent numeric drift)."""

    prompt: str
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 16
    expected: str = ""


class ModelSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One served model: its source, its pins and its engine settings."""

    name: ModelName
    # source: exactly one of repo+revision | path | builder
    repo: str | None = None
    revision: str | None = None
    path: str | None = None
    builder: Literal["tiny", "tiny-embed", "tiny-rerank"] | None = None
    #: ``generate`` (chat and completions), ``embed`` (``/v1/embeddings``, vLLM's pooling runner) or
    #: ``rerank`` (a cross-encoder with one label: ``[context] reranker``, vLLM's ``classify`` task)
    task: Literal["generate", "embed", "rerank"] = "generate"
    #: relative path -> sha256 hex, for every file the engine reads
    files: dict[str, str] = {}

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_model_len: Annotated[int, msgspec.Meta(ge=16, le=10_000_000)]
    gpu_memory_utilization: Annotated[float, msgspec.Meta(gt=0.0, le=1.0)] = 0.9
    #: vLLM's own parallelism: GPUs per pipeline stage, pipeline stages, and data-parallel replicas;
    #: the engine holds ``tensor_parallel_size * pipeline_parallel_size * data_parallel_size`` GPUs
    tensor_parallel_size: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    pipeline_parallel_size: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    data_parallel_size: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    #: how vLLM runs its workers: ``mp`` (processes on this host), ``ray`` (a Ray cluster, for
    #: several hosts), ``uni`` (one process); vLLM chooses when left out
    distributed_executor_backend: Literal["mp", "ray", "uni"] | None = None
    #: which GPUs of this host the engine gets (CUDA indices, as vLLM's ``device_ids``); one per GPU
    #: it holds. Not with ``ray``: Ray places its workers itself
    devices: tuple[Annotated[int, msgspec.Meta(ge=0, le=1023)], ...] | None = None
    max_num_seqs: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 256
    enable_prefix_caching: bool = True
    #: skip torch.compile: starts ~2x faster, generates slower (tests use it; serving should not)
    enforce_eager: bool = False
    #: KV cache size; required on CPU (vLLM cannot size it from free GPU memory there)
    kv_cache_memory_bytes: Annotated[int, msgspec.Meta(gt=0)] | None = None

    #: vLLM's tool parser for the model's family (``hermes``, ``llama3_json``, ``mistral``, ...; the
    #: engine refuses to start with one vLLM does not have). With it the model serves ``tools``;
    #: without it a request with tools never reaches the model (``serving.contract``)
    tool_parser: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")] | None = None

    canaries: tuple[CanaryCase, ...] = ()

    def __post_init__(self) -> None:
        where = f"model {self.name!r}"
        self._check_parallelism(where)
        sources = [s for s in (self.repo, self.path, self.builder) if s is not None]
        if len(sources) != 1:
            raise ValueError(f"{where}: set exactly one of `repo` (with `revision`), `path`, `builder`")
        if self.repo is not None:
            if not _REPO.match(self.repo):
                raise ValueError(f"{where}: `repo` must look like 'owner/name', got {self.repo!r}")
            if self.revision is None:
                raise ValueError(f"{where}: repo {self.repo!r} has no `revision`; pin a full 40-hex commit")
            if not _REVISION.match(self.revision):
                raise ValueError(
                    f"{where}: revision {self.revision!r} is floating (a branch or tag, or not a full "
                    "lowercase 40-hex commit); pin the commit"
                )
        elif self.revision is not None:
            raise ValueError(f"{where}: `revision` only applies to `repo` models")
        if self.task != "generate" and self.tool_parser is not None:
            raise ValueError(f"{where}: `tool_parser` is for generation models; a {self.task} model has none")
        if self.task != "generate" and self.canaries:
            raise ValueError(f"{where}: canaries replay generations; a {self.task} model has none")
        if not self.files:
            raise ValueError(f"{where}: `files` is empty; pin the sha256 of every file the engine reads")
        for rel, digest in self.files.items():
            pure = PurePosixPath(rel)
            if not rel or pure.is_absolute() or ".." in pure.parts or "\\" in rel:
                raise ValueError(f"{where}: file {rel!r} must be a relative path inside the model folder")
            if not digest:
                raise ValueError(f"{where}: file {rel!r} has no sha256 pin")
            if not _SHA256.match(digest):
                raise ValueError(
                    f"{where}: file {rel!r} has a malformed sha256 {digest!r} (64 lowercase hex)"
                )

    def _check_parallelism(self, where: str) -> None:
        if self.distributed_executor_backend == "uni" and self.gpus > 1:
            raise ValueError(f"{where}: the `uni` backend runs one process; it cannot hold {self.gpus} GPUs")
        if self.devices is None:
            return
        if self.distributed_executor_backend == "ray":
            raise ValueError(
                f"{where}: `devices` does not apply with the `ray` backend (Ray places its workers); "
                "set CUDA_VISIBLE_DEVICES for each Ray worker instead"
            )
        if len(set(self.devices)) != len(self.devices):
            raise ValueError(f"{where}: `devices` lists a GPU twice: {list(self.devices)}")
        if len(self.devices) != self.gpus:
            raise ValueError(
                f"{where}: `devices` names {len(self.devices)} GPUs but the engine holds {self.gpus} "
                f"(tensor_parallel_size {self.tensor_parallel_size} x pipeline_parallel_size "
                f"{self.pipeline_parallel_size} x data_parallel_size {self.data_parallel_size})"
            )

    @property
    def gpus(self) -> int:
        """GPUs the engine holds, on every host: what its GPU time is costed at."""
        return self.tensor_parallel_size * self.pipeline_parallel_size * self.data_parallel_size

    @property
    def pinned_revision(self) -> str:
        """What the node reports as this model's revision.

        The commit for a repo model; otherwise a digest over every pin (path
        and hash), which changes whenever any file the engine reads changes.
        """
        if self.revision is not None:
            return self.revision
        h = hashlib.sha256()
        for rel in sorted(self.files):
            h.update(f"{rel}\0{self.files[rel]}\n".encode())
        return "sha256:" + h.hexdigest()


class ModelsFile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    models: tuple[ModelSpec, ...] = ()

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for spec in self.models:
            if spec.name in seen:
                raise ValueError(f"model name {spec.name!r} appears twice")
            seen.add(spec.name)

    def get(self, name: str) -> ModelSpec:
        for spec in self.models:
            if spec.name == name:
                return spec
        raise KeyError(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.models)


def load_models_file(path: Path) -> ModelsFile:
    """Read and strictly decode ``models.toml``; raise ``ModelsConfigError`` naming the location."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ModelsConfigError(f"{path}: cannot read models file: {exc.strerror or exc}") from exc
    try:
        return msgspec.toml.decode(raw, type=ModelsFile)
    except msgspec.ValidationError as exc:
        raise ModelsConfigError(f"{path}: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise ModelsConfigError(f"{path}: not valid TOML: {exc}") from exc


def resolve_model_dir(spec: ModelSpec, *, data_dir: Path, models_file_dir: Path) -> Path:
    """Where a model's files live: ``path`` models where they are (relative to
    the models file), builder and repo models under ``<data_dir>/models/<name>/``."""
    if spec.path is not None:
        p = Path(spec.path).expanduser()
        return p if p.is_absolute() else (models_file_dir / p).resolve()
    # names may contain '/', keep them one folder deep
    return data_dir / "models" / spec.name.replace("/", "--")
