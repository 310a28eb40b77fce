"""The tiny dev model is byte-identical on every build and matches the committed pins."""

from __future__ import annotations

from pathlib import Path

from serving.models import ModelSpec
from serving.pins import sha256_file
from serving.tiny import TINY_FILES, build_tiny


def test_two_builds_are_byte_identical_and_match_the_pins(tmp_path: Path, tiny_spec: ModelSpec) -> None:
    a = build_tiny(tmp_path / "a")
    b = build_tiny(tmp_path / "b")
    hashes_a = {name: sha256_file(a / name) for name in TINY_FILES}
    hashes_b = {name: sha256_file(b / name) for name in TINY_FILES}
    assert hashes_a == hashes_b
    assert hashes_a == tiny_spec.files
    assert sorted(p.name for p in a.iterdir()) == sorted(TINY_FILES)


def test_rebuild_replaces_a_tampered_folder(tmp_path: Path, tiny_spec: ModelSpec) -> None:
    dest = build_tiny(tmp_path / "m")
    (dest / "config.json").write_text("{}")
    (dest / "stray.bin").write_bytes(b"x")
    build_tiny(dest)
    assert sha256_file(dest / "config.json") == tiny_spec.files["config.json"]
    assert not (dest / "stray.bin").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no staging leftovers


def test_tiny_model_shape(tiny_model_dir: Path) -> None:
    import json

    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    assert cfg["model_type"] == "llama"
    assert cfg["hidden_size"] // cfg["num_attention_heads"] >= 32
    tok_cfg = json.loads((tiny_model_dir / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in tok_cfg["chat_template"]
