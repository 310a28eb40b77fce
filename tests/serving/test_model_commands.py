"""``bastion models build-dev | verify | list | pull`` as functions."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from serving.model_commands import build_dev, describe_models, ensure_model, pull, verify_all
from serving.models import ModelSpec, load_models_file
from serving.pins import sha256_file
from tests.fakes.hub import FakeHub

ROOT = Path(__file__).resolve().parents[2]
REV = "aa8e72537993ba99e69dfaafa59ed015b17504d1"


def _models_with_repo(tmp_path: Path, models_file: Path) -> Path:
    """The committed models plus a hub model that is not on disk."""
    body = (
        models_file.read_text()
        + f"""
[[models]]
name = "hub-model"
repo = "bastion-tests/does-not-exist"
revision = "{REV}"
max_model_len = 128

[models.files]
"config.json" = "{"b" * 64}"
"""
    )
    p = tmp_path / "models.toml"
    p.write_text(body)
    return p


def test_build_dev_builds_into_the_data_folder_and_verifies(
    tmp_path: Path, models_file: Path, tiny_spec: ModelSpec
) -> None:
    built = build_dev(tmp_path / "data", models_file)
    assert built == {
        "bastion-tiny": tmp_path / "data" / "models" / "bastion-tiny",
        "bastion-tiny-embed": tmp_path / "data" / "models" / "bastion-tiny-embed",
        "bastion-tiny-rerank": tmp_path / "data" / "models" / "bastion-tiny-rerank",
    }
    assert {p.name: sha256_file(p) for p in built["bastion-tiny"].iterdir()} == tiny_spec.files
    embed = load_models_file(models_file).get("bastion-tiny-embed")
    assert embed.task == "embed"
    assert {p.name: sha256_file(p) for p in built["bastion-tiny-embed"].iterdir()} == embed.files


def test_verify_all_reports_each_model(tmp_path: Path, models_file: Path, tiny_model_dir: Path) -> None:
    mf = _models_with_repo(tmp_path, models_file)
    data = tiny_model_dir.parent.parent
    results = {r.name: r for r in verify_all(mf, data)}
    assert results["bastion-tiny"].ok
    assert results["hub-model"].status == "missing"
    assert "bastion models pull hub-model" in results["hub-model"].detail


def test_verify_all_names_the_failing_file(tmp_path: Path, models_file: Path, tiny_spec: ModelSpec) -> None:
    data = tmp_path / "data"
    dest = build_dev(data, models_file)["bastion-tiny"]
    (dest / "generation_config.json").write_text("{}\n")
    results = {r.name: r for r in verify_all(models_file, data)}
    assert results["bastion-tiny-embed"].ok
    result = results["bastion-tiny"]
    assert result.status == "mismatch"
    assert "'generation_config.json'" in result.detail
    assert tiny_spec.files["generation_config.json"] in result.detail


def test_ensure_model_rebuilds_a_broken_tiny_model_but_never_a_hub_model(
    tmp_path: Path, models_file: Path, tiny_spec: ModelSpec
) -> None:
    data = tmp_path / "data"
    dest = build_dev(data, models_file)["bastion-tiny"]
    (dest / "model.safetensors").write_bytes(b"junk")
    assert ensure_model(tiny_spec, models_file, data) == dest
    assert sha256_file(dest / "model.safetensors") == tiny_spec.files["model.safetensors"]


def test_describe_models(
    tmp_path: Path, models_file: Path, tiny_model_dir: Path, tiny_spec: ModelSpec
) -> None:
    mf = _models_with_repo(tmp_path, models_file)
    listings = {m.name: m for m in describe_models(mf, tiny_model_dir.parent.parent)}
    assert listings["bastion-tiny"].source == "builder:tiny" and listings["bastion-tiny"].on_disk
    assert listings["bastion-tiny"].revision == tiny_spec.pinned_revision
    assert listings["hub-model"].source == f"hf:bastion-tests/does-not-exist@{REV}"
    assert not listings["hub-model"].on_disk and listings["hub-model"].revision == REV


def test_pull_rejects_unknown_and_non_hub_models(tmp_path: Path, models_file: Path) -> None:
    with pytest.raises(KeyError):
        pull("nope", models_file, tmp_path)
    with pytest.raises(ValueError, match="no hub source"):
        pull("bastion-tiny", models_file, tmp_path)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_PULL = """
import json, sys, time
from pathlib import Path
from serving.model_commands import HubUnavailableError, pull
t = time.monotonic()
try:
    pull("hub-model", Path(sys.argv[1]), Path(sys.argv[2]), endpoint=sys.argv[3] or None, timeout_s=3)
except HubUnavailableError as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc), "s": time.monotonic() - t}))
else:
    print(json.dumps({"error": None}))
"""


@pytest.mark.parametrize("endpoint", ["closed-port", "http://hub.invalid"])
def test_pull_without_a_hub_fails_clearly_and_fast(tmp_path: Path, models_file: Path, endpoint: str) -> None:
    if endpoint == "closed-port":
        endpoint = f"http://127.0.0.1:{_closed_port()}"
    mf = _models_with_repo(tmp_path, models_file)
    # a fresh process: this one may already have switched the hub library offline for serving
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["HF_HOME"] = str(tmp_path / "hf")
    proc = subprocess.run(
        [sys.executable, "-c", _PULL, str(mf), str(tmp_path / "data"), endpoint],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["error"] == "HubUnavailableError"
    assert "cannot pull 'hub-model'" in result["message"] and REV in result["message"]
    assert not (tmp_path / "data" / "models" / "hub-model").exists()
    assert list((tmp_path / "data" / "models").iterdir()) == []  # no staging leftovers


def test_pull_refuses_in_offline_mode(tmp_path: Path, models_file: Path) -> None:
    mf = _models_with_repo(tmp_path, models_file)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run(
        [sys.executable, "-c", _PULL, str(mf), str(tmp_path / "data"), ""],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["error"] == "HubUnavailableError" and "offline mode" in result["message"]


def _hub_models_file(tmp_path: Path, tiny_spec: ModelSpec) -> Path:
    """A model pinned to a hub repository at a commit, with the tiny model's file pins."""
    files = "\n".join(f'"{name}" = "{digest}"' for name, digest in sorted(tiny_spec.files.items()))
    p = tmp_path / "models.toml"
    p.write_text(
        f"""
[[models]]
name = "hub-model"
repo = "bastion-tests/tiny"
revision = "{REV}"
dtype = "float32"
max_model_len = 256

[models.files]
{files}
"""
    )
    return p


def _hub_repo(repo: Path, tiny_spec: ModelSpec, tiny_model_dir: Path) -> None:
    """What the fake hub serves: the tiny model's pinned files."""
    repo.mkdir()
    for name in tiny_spec.files:
        (repo / name).write_bytes((tiny_model_dir / name).read_bytes())


def _pull_cli(tmp_path: Path, models: Path, hub_url: str) -> subprocess.CompletedProcess[str]:
    """``bastion models pull`` in a fresh process whose hub is ``hub_url`` (``HF_ENDPOINT``)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT=hub_url, HF_HOME=str(tmp_path / "hf"))
    config = tmp_path / "node.toml"
    config.write_text(
        f'models_file = "{models}"\ndata_dir = "{tmp_path / "data"}"\n[audit]\nenabled = false\n'
    )
    return subprocess.run(
        [sys.executable, "-m", "node.cli", "models", "--config", str(config), "pull", "hub-model"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )


def test_pull_fetches_only_the_pinned_files_at_the_pinned_commit(
    tmp_path: Path, tiny_spec: ModelSpec, tiny_model_dir: Path
) -> None:
    models = _hub_models_file(tmp_path, tiny_spec)
    _hub_repo(tmp_path / "repo", tiny_spec, tiny_model_dir)
    (tmp_path / "repo" / "unpinned-extra.bin").write_bytes(b"not pinned, never fetched")
    with FakeHub("bastion-tests/tiny", REV, tmp_path / "repo") as hub:
        proc = _pull_cli(tmp_path, models, hub.url)
    assert proc.returncode == 0, proc.stderr[-3000:]
    dest = tmp_path / "data" / "models" / "hub-model"
    assert "pulled and verified hub-model" in proc.stdout
    assert {p.name: sha256_file(p) for p in dest.iterdir()} == tiny_spec.files
    fetched = [p for p in hub.paths if p.startswith("GET /bastion-tests/tiny/resolve/")]
    assert sorted(p.rsplit("/", 1)[1] for p in fetched) == sorted(tiny_spec.files)
    assert all(f"/resolve/{REV}/" in p for p in fetched)  # the commit, never a branch
    assert not any("unpinned-extra" in p and "resolve" in p for p in hub.paths)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["hub-model"]  # no staging leftovers


def test_pull_of_a_tampered_file_is_refused_and_keeps_the_model_in_place(
    tmp_path: Path, tiny_spec: ModelSpec, tiny_model_dir: Path
) -> None:
    models = _hub_models_file(tmp_path, tiny_spec)
    _hub_repo(tmp_path / "repo", tiny_spec, tiny_model_dir)
    dest = tmp_path / "data" / "models" / "hub-model"
    dest.mkdir(parents=True)
    (dest / "config.json").write_text("what an operator already had")
    with FakeHub("bastion-tests/tiny", REV, tmp_path / "repo") as hub:
        hub.tamper("model.safetensors")
        proc = _pull_cli(tmp_path, models, hub.url)
    assert proc.returncode == 3, proc.stdout + proc.stderr[-3000:]
    assert "fail their pins" in proc.stderr and "model.safetensors" in proc.stderr
    assert (dest / "config.json").read_text() == "what an operator already had"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["hub-model"]


@pytest.mark.parametrize("after", [True, False])
def test_models_options_go_before_or_after_the_subcommand(
    tmp_path: Path, models_file: Path, after: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    from node.cli import main

    data = tmp_path / "data"
    argv = (
        ["models", "build-dev", "--data-dir", str(data)]
        if after
        else ["models", "--data-dir", str(data), "build-dev"]
    )
    assert main(argv) == 0
    assert (data / "models" / "bastion-tiny" / "model.safetensors").is_file()
    assert data.stat().st_mode & 0o777 == 0o700  # the node refuses a data folder open to others
    assert main(["models", "verify", "--data-dir", str(data)]) == 0
    assert "ok       bastion-tiny" in capsys.readouterr().out


def test_a_missing_model_says_how_to_get_it(tmp_path: Path, models_file: Path, tiny_spec: ModelSpec) -> None:
    from serving.errors import PinMismatchError
    from serving.models import load_models_file
    from serving.pins import verify_model

    hub = load_models_file(_models_with_repo(tmp_path, models_file)).get("hub-model")
    with pytest.raises(PinMismatchError, match="does not exist; run `bastion models pull hub-model`"):
        verify_model(hub, tmp_path / "nowhere")
    with pytest.raises(PinMismatchError, match="does not exist; run `bastion models build-dev`"):
        verify_model(tiny_spec, tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PinMismatchError, match=r"'config.json' is missing.*run `bastion models build-dev`"):
        verify_model(tiny_spec, tmp_path / "empty")
