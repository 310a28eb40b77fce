"""models.toml: strict decoding, and floating references refused with model and file named."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.models import ModelsConfigError, load_models_file, resolve_model_dir

SHA = "a" * 64
REV = "aa8e72537993ba99e69dfaafa59ed015b17504d1"


def _write(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "models.toml"
    p.write_text(body, encoding="utf-8")
    return p


def _repo_model(extra: str = "", files: str = f'"config.json" = "{SHA}"') -> str:
    return f"""
[[models]]
name = "m1"
repo = "Org/Model"
max_model_len = 4096
{extra}
[models.files]
{files}
"""


def test_committed_models_file_decodes_with_tiny_model(models_file: Path) -> None:
    models = load_models_file(models_file)
    tiny = models.get("bastion-tiny")
    assert tiny.builder == "tiny"
    assert set(tiny.files) == {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    }
    assert tiny.pinned_revision.startswith("sha256:")


def test_pinned_repo_model_loads(tmp_path: Path) -> None:
    models = load_models_file(_write(tmp_path, _repo_model(f'revision = "{REV}"')))
    assert models.get("m1").pinned_revision == REV


def test_repo_without_revision_is_rejected_naming_the_model(tmp_path: Path) -> None:
    with pytest.raises(ModelsConfigError, match=r"'m1'.*no `revision`"):
        load_models_file(_write(tmp_path, _repo_model()))


@pytest.mark.parametrize("rev", ["main", "v1.0", REV[:12], REV.upper()])
def test_branch_or_short_revision_is_floating(tmp_path: Path, rev: str) -> None:
    with pytest.raises(ModelsConfigError, match=r"'m1'.*floating") as info:
        load_models_file(_write(tmp_path, _repo_model(f'revision = "{rev}"')))
    assert "$.models[0]" in str(info.value)


def test_file_without_hash_is_rejected_naming_model_and_file(tmp_path: Path) -> None:
    files = f'"config.json" = "{SHA}"\n"model.safetensors" = ""'
    with pytest.raises(ModelsConfigError, match=r"'m1'.*'model.safetensors' has no sha256 pin"):
        load_models_file(_write(tmp_path, _repo_model(f'revision = "{REV}"', files)))


def test_malformed_hash_is_rejected(tmp_path: Path) -> None:
    files = '"tokenizer.json" = "abc123"'
    with pytest.raises(ModelsConfigError, match=r"'m1'.*'tokenizer.json'.*malformed sha256"):
        load_models_file(_write(tmp_path, _repo_model(f'revision = "{REV}"', files)))


def test_no_files_is_rejected(tmp_path: Path) -> None:
    body = f'[[models]]\nname = "m1"\nrepo = "Org/Model"\nrevision = "{REV}"\nmax_model_len = 64\n'
    with pytest.raises(ModelsConfigError, match=r"'m1'.*`files` is empty"):
        load_models_file(_write(tmp_path, body))


@pytest.mark.parametrize("path", ["../evil.json", "/etc/passwd", "a/../../b"])
def test_file_paths_must_stay_inside_the_model_folder(tmp_path: Path, path: str) -> None:
    files = f'"{path}" = "{SHA}"'
    with pytest.raises(ModelsConfigError, match="relative path inside"):
        load_models_file(_write(tmp_path, _repo_model(f'revision = "{REV}"', files)))


def test_two_sources_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ModelsConfigError, match="exactly one of"):
        load_models_file(_write(tmp_path, _repo_model(f'revision = "{REV}"\npath = "/models/x"')))


def test_unknown_key_is_an_error_with_its_location(tmp_path: Path) -> None:
    with pytest.raises(ModelsConfigError, match=r"unknown field `max_model_length`.*\$\.models\[0\]") as info:
        load_models_file(_write(tmp_path, _repo_model(f'revision = "{REV}"\nmax_model_length = 5')))
    assert str(tmp_path / "models.toml") in str(info.value)


def test_wrong_type_is_an_error_with_its_location(tmp_path: Path) -> None:
    body = _repo_model(f'revision = "{REV}"').replace("max_model_len = 4096", 'max_model_len = "4096"')
    with pytest.raises(
        ModelsConfigError, match=r"Expected `int`, got `str` - at `\$\.models\[0\]\.max_model_len`"
    ):
        load_models_file(_write(tmp_path, body))


def test_value_limits_are_enforced(tmp_path: Path) -> None:
    body = _repo_model(f'revision = "{REV}"\ngpu_memory_utilization = 1.5')
    with pytest.raises(ModelsConfigError, match=r"gpu_memory_utilization"):
        load_models_file(_write(tmp_path, body))


def test_canary_cases_decode_strictly(tmp_path: Path) -> None:
    ok = _repo_model(f'revision = "{REV}"') + '[[models.canaries]]\nprompt = "hi"\nexpected = "x"\n'
    spec = load_models_file(_write(tmp_path, ok)).get("m1")
    assert spec.canaries[0].max_tokens == 16 and spec.canaries[0].expected == "x"
    bad = _repo_model(f'revision = "{REV}"') + '[[models.canaries]]\nprompt = "hi"\nexpect = "x"\n'
    with pytest.raises(ModelsConfigError, match=r"unknown field `expect`.*canaries\[0\]"):
        load_models_file(_write(tmp_path, bad))


def test_duplicate_names_are_rejected(tmp_path: Path) -> None:
    one = _repo_model(f'revision = "{REV}"')
    with pytest.raises(ModelsConfigError, match="appears twice"):
        load_models_file(_write(tmp_path, one + one))


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelsConfigError, match="not valid TOML"):
        load_models_file(_write(tmp_path, "[[models]\nname="))
    with pytest.raises(ModelsConfigError, match="cannot read"):
        load_models_file(tmp_path / "absent.toml")


def test_model_dirs(tmp_path: Path) -> None:
    body = (
        _repo_model(f'revision = "{REV}"')
        + f'\n[[models]]\nname = "p"\npath = "weights/p"\nmax_model_len = 64\n[models.files]\n"a" = "{SHA}"\n'
    )
    models = load_models_file(_write(tmp_path, body))
    data = tmp_path / "data"
    assert (
        resolve_model_dir(models.get("m1"), data_dir=data, models_file_dir=tmp_path) == data / "models" / "m1"
    )
    assert (
        resolve_model_dir(models.get("p"), data_dir=data, models_file_dir=tmp_path)
        == tmp_path / "weights" / "p"
    )
