"""Deployment artefacts (Dockerfile.gpu, deploy/): what these machines can check without Docker, a
registry or a cluster. A checking tool that is missing skips its test on a developer's machine and
fails it in CI (``CI=true``), where .ci/run and the ``test`` extra provide every one of them."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def require_tool(name: str, *candidates: Path) -> str:
    """The path of a checking tool: ``candidates`` first, then $PATH and the test interpreter's bin."""
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    venv_bin = Path(sys.executable).parent
    found = shutil.which(name) or shutil.which(name, path=str(venv_bin))
    if found:
        return found
    message = f"{name} not found (see the README's Operations section)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}: CI must run this check")
    pytest.skip(message)
