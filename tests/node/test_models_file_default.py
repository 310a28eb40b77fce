"""Without a config, every command finds the same models file (``node.devmode.default_models_file``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.devmode import SHIPPED_MODELS_FILE, default_models_file


def test_the_shipped_models_file_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BASTION_MODELS_FILE", raising=False)
    assert SHIPPED_MODELS_FILE.is_file()
    assert default_models_file() == SHIPPED_MODELS_FILE


def test_the_environment_names_another_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BASTION_MODELS_FILE", "elsewhere/models.toml")
    assert default_models_file() == tmp_path / "elsewhere" / "models.toml"  # absolute, even if missing


def test_without_a_shipped_file_the_working_folder_s(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # an installed package has no models.toml beside its code
    monkeypatch.delenv("BASTION_MODELS_FILE", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_models_file(shipped=tmp_path / "absent" / "models.toml") == tmp_path / "models.toml"
