"""deploy/compose.yaml (no Docker engine or compose plugin here): parsed by compose-spec (the Rust
compose_spec parser, strict about unknown keys and types), then its promises checked: one GPU
reserved, config read-only, data on a volume, the image's health check and stop grace period."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from compose_spec import PyCompose

from node.config import ServerConfig

from .conftest import DEPLOY, ROOT

COMPOSE = DEPLOY / "compose.yaml"


def _service() -> dict[str, Any]:
    compose = yaml.safe_load(COMPOSE.read_text())
    assert set(compose["services"]) == {"bastion"}
    service: dict[str, Any] = compose["services"]["bastion"]
    assert set(compose["volumes"]) == {"data", "checkpoints"}
    for secret in service["secrets"]:
        assert compose["secrets"][secret]["file"].startswith("./secrets/")
    return service


def test_one_gpu_is_reserved() -> None:
    (device,) = _service()["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}


def test_config_is_read_only_and_data_is_a_volume() -> None:
    mounts = {m["target"]: m for m in _service()["volumes"]}
    assert mounts["/etc/bastion"]["read_only"] is True and mounts["/etc/bastion"]["type"] == "bind"
    assert mounts["/var/lib/bastion"] == {"type": "volume", "source": "data", "target": "/var/lib/bastion"}
    assert mounts["/var/lib/bastion/models"]["read_only"] is True
    assert mounts["/var/lib/bastion-checkpoints"]["source"] == "checkpoints"


def test_it_runs_as_the_images_user_on_a_read_only_root() -> None:
    service = _service()
    assert service["user"] == "10001:10001" and service["read_only"] is True
    assert service["tmpfs"] == ["/tmp"] and service["cap_drop"] == ["ALL"]
    assert service["build"] == {"context": "..", "dockerfile": "Dockerfile.gpu"}
    assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).resolve() == (
        ROOT / "Dockerfile.gpu"
    )
    assert all(p.startswith("127.0.0.1:") for p in service["ports"])  # not on every interface by default


def test_health_check_and_stop_match_the_image() -> None:
    service = _service()
    check = service["healthcheck"]
    assert check["test"][0] == "CMD" and "http://127.0.0.1:8000/readyz" in check["test"][-1]
    assert check["start_period"] == "600s"
    # the node's drain timeout (its default), then 30 s to close the engines and the audit log
    grace = int(ServerConfig().drain_timeout_s) + 30
    assert service["stop_signal"] == "SIGTERM" and service["stop_grace_period"] == f"{grace}s"
    assert f"TimeoutStopSec={grace}\n" in (DEPLOY / "systemd" / "bastion.service").read_text()


def test_the_compose_spec_parser_accepts_it() -> None:
    parsed = PyCompose.from_yaml(COMPOSE.read_text())
    parsed.validate()
    assert parsed.service_names() == ["bastion"]


@pytest.mark.parametrize(
    ("old", "new", "complaint"),
    [
        ("stop_grace_period:", "stop_grace_periods:", "stop_grace_periods"),
        ("count: 1", "count: one", "count"),
        ("read_only: true\n    tmpfs", "read_only: yes-please\n    tmpfs", "read_only"),
    ],
)
def test_the_parser_would_catch_a_mistake(old: str, new: str, complaint: str) -> None:
    text = COMPOSE.read_text()
    assert old in text
    with pytest.raises(ValueError, match=complaint):
        PyCompose.from_yaml(text.replace(old, new, 1)).validate()
