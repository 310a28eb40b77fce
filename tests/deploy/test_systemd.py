"""deploy/systemd: ``systemd-analyze verify`` and its offline security score, plus the settings the
README promises (dedicated user, read-only system, state and config directories, stop timeout)."""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
from pathlib import Path

import pytest

from node.config import ServerConfig

from .conftest import DEPLOY, require_tool

UNIT = DEPLOY / "systemd" / "bastion.service"


def _service() -> dict[str, str]:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return dict(parser["Service"])


def _unit_here(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this test environment's ``bastion``: verify checks that the
    command exists, and /opt/bastion/venv is where deploy/install.sh puts it on a real host."""
    bastion = Path(sys.executable).parent / "bastion"
    text = UNIT.read_text()
    assert "ExecStart=/opt/bastion/venv/bin/bastion " in text
    unit = tmp_path / "bastion.service"
    unit.write_text(text.replace("/opt/bastion/venv/bin/bastion", str(bastion)))
    return unit


def test_the_unit_is_hardened_and_stops_like_the_node() -> None:
    service = _service()
    assert service["User"] == "bastion" and service["Group"] == "bastion"
    for key, value in {
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "StateDirectory": "bastion",
        "ConfigurationDirectory": "bastion",
        "KillSignal": "SIGTERM",
        "TimeoutStopSec": str(int(ServerConfig().drain_timeout_s) + 30),  # drain, then close
        "UMask": "0077",
        "StateDirectoryMode": "0700",  # the node refuses a data folder open to group or others
    }.items():
        assert service[key] == value, key
    assert "PrivateDevices" not in service  # it would hide /dev/nvidia*
    assert "--config /etc/bastion/node.toml" in service["ExecStart"]
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"  # the node reloads on SIGHUP
    assert set(service["RestartPreventExitStatus"].split()) == {"2", "3", "4", "5", "6"}


def test_systemd_analyze_verify_accepts_it(tmp_path: Path) -> None:
    tool = require_tool("systemd-analyze")
    run = subprocess.run([tool, "verify", str(_unit_here(tmp_path))], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stderr.strip() == "", run.stderr  # verify reports unknown keys and bad values here


def test_systemd_analyze_verify_would_catch_a_typo(tmp_path: Path) -> None:
    tool = require_tool("systemd-analyze")
    unit = _unit_here(tmp_path)
    unit.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSystem=strcit"))
    run = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True)
    assert "strcit" in run.stderr  # a warning, exit code 0: hence the empty-stderr check above


def test_its_offline_exposure_score_stays_low(tmp_path: Path) -> None:
    tool = require_tool("systemd-analyze")
    run = subprocess.run(
        [tool, "security", "--offline=yes", "--no-pager", str(_unit_here(tmp_path))],
        capture_output=True,
        text=True,
    )
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", run.stdout)
    if match is None:
        pytest.fail(run.stdout[-2000:] + run.stderr)
    assert float(match.group(1)) <= 2.5  # 2.0 when written; 10 is a unit with no hardening


def test_the_sysusers_entry_names_the_units_user() -> None:
    line = next(x for x in (DEPLOY / "systemd" / "bastion.sysusers").read_text().splitlines() if x[:1] == "u")
    fields = line.split()
    assert fields[:2] == ["u", "bastion"] and "/var/lib/bastion" in fields
