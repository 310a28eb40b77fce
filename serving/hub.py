"""Downloading a pinned model from a Hugging Face hub (connected staging hosts only).

This is the one place Bastion may reach a model hub; serving never does. Only
the pinned files are fetched, at the pinned commit, into a staging folder that
is verified before it replaces the model folder, so a half-finished or
tampered download never sits where the engine looks.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from serving.models import ModelSpec
from serving.pins import verify_model

__all__ = ["HubUnavailableError", "download_pinned"]


class HubUnavailableError(RuntimeError):
    """The hub could not be reached or refused the download; the message says why."""


def download_pinned(
    spec: ModelSpec, dest: Path, *, endpoint: str | None = None, timeout_s: float = 10.0
) -> Path:
    """Fetch ``spec``'s pinned files at its pinned revision into ``dest`` and verify them.

    Raises ``HubUnavailableError`` when the hub is unreachable (fails within
    about ``timeout_s``) and ``PinMismatchError`` when what arrived fails its pins.
    """
    if spec.repo is None or spec.revision is None:
        raise ValueError(f"model {spec.name!r} has no hub source (`repo` + `revision`); nothing to pull")
    # The hub library reads these once, at import: set them before importing it.
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", str(max(1, int(timeout_s))))
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", str(max(1, int(timeout_s))))
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    import huggingface_hub
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise HubUnavailableError(
            f"cannot pull {spec.name!r}: offline mode is on in this process (HF_HUB_OFFLINE or "
            "TRANSFORMERS_OFFLINE is set); unset it on a connected staging host"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.pull.", dir=dest.parent))
    try:
        try:
            # One quick look first: the download's listing retries with backoff for
            # ~25 s, far too long to learn that there is no network at all.
            huggingface_hub.HfApi(endpoint=endpoint).model_info(
                spec.repo, revision=spec.revision, timeout=timeout_s
            )
            huggingface_hub.snapshot_download(
                repo_id=spec.repo,
                revision=spec.revision,
                allow_patterns=sorted(spec.files),
                local_dir=staging,
                etag_timeout=timeout_s,
                endpoint=endpoint,
                max_workers=4,
            )
        except Exception as exc:  # the hub library's tree is wide; every failure here means "not pulled"
            raise HubUnavailableError(
                f"cannot pull {spec.name!r} ({spec.repo}@{spec.revision}) from "
                f"{endpoint or constants.ENDPOINT}: {type(exc).__name__}: {exc}. "
                "Is this host connected to the hub? Pull on a staging host and copy the folder over."
            ) from exc
        # the hub library leaves its own bookkeeping beside the files; the engine never reads it
        shutil.rmtree(staging / ".cache", ignore_errors=True)
        verify_model(spec, staging)
        if dest.exists():
            shutil.rmtree(dest)
        staging.rename(dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest
