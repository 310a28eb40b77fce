"""The node's no-egress environment: set before vLLM or the Hugging Face libraries start.

Layer: serving; imports nothing of ours. The one place that says which switches
keep a serving process off the network; ``bastion serve``, the canary commands
and ``LocalEngine.start`` all apply it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

__all__ = ["NO_EGRESS_ENV", "apply_no_egress_env"]

#: set in the process before vLLM is imported; engine processes inherit it
NO_EGRESS_ENV: Final[Mapping[str, str]] = MappingProxyType(
    {
        # usage statistics and telemetry: vLLM, Hugging Face, and libraries that honour DO_NOT_TRACK
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_DO_NOT_TRACK": "1",
        "DO_NOT_TRACK": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        # no model hub look-ups: models are pinned and on disk
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        # Without a host address, vLLM's get_ip() discovers one by connecting a UDP socket to
        # 8.8.8.8:80 (then 2001:4860:4860::8888): no packet is sent, but a connect() to a public
        # address is what auditd/eBPF egress monitors report. The node's engine processes only
        # talk to each other, on this host.
        "VLLM_HOST_IP": "127.0.0.1",
        "VLLM_LOOPBACK_IP": "127.0.0.1",
    }
)


def apply_no_egress_env() -> None:
    """Set ``NO_EGRESS_ENV`` in this process (and so in every process it starts)."""
    os.environ.update(NO_EGRESS_ENV)
    # The hub library reads its offline flag once, at import: if something imported
    # it already, set the flag it actually consults.
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True  # type: ignore[attr-defined]
