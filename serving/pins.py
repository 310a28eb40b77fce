"""Pin verification: a model folder must hold exactly the files its pins name.

Every pinned file must exist with its pinned sha256, and nothing else the
engine could read (weights, configs, tokenizer files, remote code) may sit in
the folder unpinned: vLLM and transformers pick files up by name, so an extra
``*.safetensors`` shard or ``chat_template.jinja`` would be loaded unverified.
"""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath
from typing import Final

from serving.errors import PinMismatchError
from serving.models import ModelSpec

__all__ = ["check_layout", "how_to_get", "sha256_file", "unpinned_files", "verify_model"]

_CHUNK: Final = 1 << 20
# What may sit unpinned in a model folder: documents by extension, and the
# extension-less licence/readme files that ship with models. A name alone is no
# reason (vLLM loads every ``*.safetensors`` in a folder without an index, so a
# ``LICENSE.safetensors`` would be read): anything else must be pinned.
_DOC_SUFFIXES: Final = frozenset(
    {".md", ".markdown", ".pdf", ".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp"}
)
_DOC_NAMES: Final = frozenset(
    {"readme", "license", "licence", "notice", "copying", "use_policy", ".gitattributes", ".gitignore"}
)
# The hub's download cache and git metadata (not read by any engine).
_IGNORED_DIRS: Final = frozenset({".cache", ".git"})


def sha256_file(path: Path) -> str:
    """sha256 of a file, streamed in 1 MiB chunks (weights can be tens of GB)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _ignored(rel: PurePosixPath) -> bool:
    if any(part in _IGNORED_DIRS for part in rel.parts[:-1]):
        return True
    name = rel.name.lower()
    return name in _DOC_NAMES or rel.suffix.lower() in _DOC_SUFFIXES


def how_to_get(spec: ModelSpec) -> str:
    """What an operator runs to put ``spec``'s files in place."""
    if spec.builder is not None:
        return "run `bastion models build-dev`"
    if spec.repo is not None:
        return (
            f"run `bastion models pull {spec.name}` (on a connected staging host, then copy the folder over)"
        )
    return "point the model's `path` in the models file at its folder"


def unpinned_files(spec: ModelSpec, model_dir: Path) -> list[str]:
    """Files in ``model_dir`` an engine could read that no pin covers (sorted)."""
    found: list[str] = []
    for path in model_dir.rglob("*"):
        if path.is_dir():
            continue
        rel = PurePosixPath(path.relative_to(model_dir).as_posix())
        if str(rel) not in spec.files and not _ignored(rel):
            found.append(str(rel))
    return sorted(found)


def check_layout(spec: ModelSpec, model_dir: Path) -> None:
    """The cheap part of ``verify_model``: the folder holds every pinned file and nothing
    unpinned an engine could read. Reads no file; raises ``PinMismatchError``."""
    if not model_dir.is_dir():
        raise PinMismatchError(f"model {spec.name!r}: folder {model_dir} does not exist; {how_to_get(spec)}")
    for rel in sorted(spec.files):
        if not (model_dir / rel).is_file():
            raise PinMismatchError(
                f"model {spec.name!r}: pinned file {rel!r} is missing from {model_dir} "
                f"(expected sha256 {spec.files[rel]}); {how_to_get(spec)}"
            )
    extra = unpinned_files(spec, model_dir)
    if extra:
        raise PinMismatchError(
            f"model {spec.name!r}: {model_dir} holds files with no pin, which the engine could load "
            f"unverified: {', '.join(extra)}"
        )


def verify_model(spec: ModelSpec, model_dir: Path) -> None:
    """Check every pin of ``spec`` against ``model_dir``.

    Raises ``PinMismatchError`` for the first problem, naming the model, the
    file and, for a content mismatch, both hashes (expected and actual).
    """
    check_layout(spec, model_dir)
    for rel in sorted(spec.files):
        expected = spec.files[rel]
        actual = sha256_file(model_dir / rel)
        if actual != expected:
            raise PinMismatchError(
                f"model {spec.name!r}: file {rel!r} in {model_dir} fails its pin: "
                f"expected sha256 {expected}, actual sha256 {actual}"
            )
