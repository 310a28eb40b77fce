"""Pins: a model folder must hold exactly its pinned files, byte for byte."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from serving.errors import BastionError, PinMismatchError, StartupFailure
from serving.models import ModelSpec
from serving.pins import sha256_file, verify_model


@pytest.fixture
def model_copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "model"
    shutil.copytree(tiny_model_dir, dest)
    return dest


def test_built_model_verifies(tiny_spec: ModelSpec, model_copy: Path) -> None:
    verify_model(tiny_spec, model_copy)


def test_flipped_byte_names_file_and_both_hashes(tiny_spec: ModelSpec, model_copy: Path) -> None:
    weights = model_copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    actual = hashlib.sha256(bytes(data)).hexdigest()
    with pytest.raises(PinMismatchError) as info:
        verify_model(tiny_spec, model_copy)
    msg = info.value.message
    assert "'model.safetensors'" in msg
    assert tiny_spec.files["model.safetensors"] in msg
    assert actual in msg
    assert isinstance(info.value, StartupFailure) and not isinstance(info.value, BastionError)


def test_missing_file_is_named(tiny_spec: ModelSpec, model_copy: Path) -> None:
    (model_copy / "tokenizer.json").unlink()
    with pytest.raises(
        PinMismatchError, match=r"'tokenizer.json' is missing.*" + tiny_spec.files["tokenizer.json"]
    ):
        verify_model(tiny_spec, model_copy)


@pytest.mark.parametrize(
    "extra", ["model-00002-of-00002.safetensors", "pytorch_model.bin", "chat_template.jinja"]
)
def test_unpinned_file_the_engine_could_read_is_refused(
    tiny_spec: ModelSpec, model_copy: Path, extra: str
) -> None:
    (model_copy / extra).write_bytes(b"\0" * 16)
    with pytest.raises(PinMismatchError, match=f"no pin.*{extra}"):
        verify_model(tiny_spec, model_copy)


@pytest.mark.parametrize(
    "extra",
    [
        "LICENSE.safetensors",
        "README.safetensors",
        "NOTICE.bin",
        "USE_POLICY.json",
        "LICENSE.jinja",
        "README.py",
        "license.txt",
    ],
)
def test_a_document_name_does_not_excuse_a_file_the_engine_could_read(
    tiny_spec: ModelSpec, model_copy: Path, extra: str
) -> None:
    # vLLM loads every *.safetensors of a folder without an index file, whatever its name
    (model_copy / extra).write_bytes(b"\0" * 16)
    with pytest.raises(PinMismatchError, match=f"no pin.*{extra}"):
        verify_model(tiny_spec, model_copy)


def test_docs_and_hub_bookkeeping_are_ignored(tiny_spec: ModelSpec, model_copy: Path) -> None:
    (model_copy / "README.md").write_text("# card")
    (model_copy / "LICENSE").write_text("licence")
    (model_copy / "USE_POLICY.md").write_text("policy")
    (model_copy / "NOTICE").write_text("notice")
    (model_copy / "diagram.PNG").write_bytes(b"png")
    (model_copy / ".cache" / "huggingface").mkdir(parents=True)
    (model_copy / ".cache" / "huggingface" / "x.metadata").write_text("m")
    verify_model(tiny_spec, model_copy)


def test_missing_folder(tiny_spec: ModelSpec, tmp_path: Path) -> None:
    with pytest.raises(PinMismatchError, match="does not exist"):
        verify_model(tiny_spec, tmp_path / "nope")


def test_sha256_streams_large_files(tmp_path: Path) -> None:
    p = tmp_path / "big"
    data = bytes(range(256)) * (5 * 4096 + 7)  # > 1 MiB chunk, not a chunk multiple
    p.write_bytes(data)
    assert sha256_file(p) == hashlib.sha256(data).hexdigest()
