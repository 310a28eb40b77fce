"""No egress, seen from the system calls: a dev node connects no socket beyond loopback.

The node runs under ``strace -f -e trace=connect`` from start-up, through a
request, to shutdown: every ``connect()`` of every process it starts is in the
trace, which is what auditd or eBPF egress monitors on regulated sites see. A
UDP connect sends no packet but is reported all the same, so it counts here too.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
import tomlkit

from serving.egress import NO_EGRESS_ENV
from tests.node.test_serve_cli import ROOT

_INET = re.compile(r'sa_family=AF_INET, .*?inet_addr\("([^"]+)"\)')
_INET6 = re.compile(r'sa_family=AF_INET6, .*?inet_pton\(AF_INET6, "([^"]+)"')


def _strace() -> list[str]:
    """The strace command line, or a skip saying why it cannot trace here."""
    exe = shutil.which("strace")
    if exe is None:
        pytest.skip("strace is not installed")
    # --seccomp-bpf stops the tracee on connect() only, not on every system call
    for command in ([exe, "-f", "--seccomp-bpf", "-e", "trace=connect"], [exe, "-f", "-e", "trace=connect"]):
        run = subprocess.run([*command, "-o", os.devnull, "true"], capture_output=True, text=True, timeout=30)
        if run.returncode == 0:
            return command
    pytest.skip(f"strace cannot trace here (ptrace not permitted?): {run.stderr.strip()[:200]}")


def non_loopback_connects(trace: str) -> list[str]:
    """The trace lines that connect an AF_INET/AF_INET6 socket to anything but loopback."""
    bad = []
    for line in trace.splitlines():
        if "connect(" not in line:
            continue
        found = _INET.search(line) or _INET6.search(line)
        if found is None:
            continue  # AF_UNIX, AF_NETLINK, AF_UNSPEC (a UDP socket's disconnect)
        address = ipaddress.ip_address(found.group(1))
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if not address.is_loopback:
            bad.append(line)
    return bad


def test_the_trace_parser_tells_loopback_from_the_rest() -> None:
    trace = "\n".join(
        [
            '12 connect(3, {sa_family=AF_INET, sin_port=htons(80), sin_addr=inet_addr("8.8.8.8")}, 16) = 0',
            '12 connect(4, {sa_family=AF_INET, sin_port=htons(9), sin_addr=inet_addr("127.0.0.1")}, 16) = 0',
            "13 connect(5, {sa_family=AF_INET6, sin6_port=htons(80), sin6_flowinfo=htonl(0), "
            'inet_pton(AF_INET6, "2001:4860:4860::8888", &sin6_addr), sin6_scope_id=0}, 28) = -1',
            "13 connect(6, {sa_family=AF_INET6, sin6_port=htons(80), sin6_flowinfo=htonl(0), "
            'inet_pton(AF_INET6, "::1", &sin6_addr), sin6_scope_id=0}, 28) = 0',
            "13 connect(7, {sa_family=AF_INET6, sin6_port=htons(80), sin6_flowinfo=htonl(0), "
            'inet_pton(AF_INET6, "::ffff:10.0.0.2", &sin6_addr), sin6_scope_id=0}, 28) = 0',
            '14 connect(8, {sa_family=AF_UNIX, sun_path="/tmp/x.sock"}, 110) = 0',
        ]
    )
    assert [line.split()[1] for line in non_loopback_connects(trace)] == [
        "connect(3,",
        "connect(5,",
        "connect(7,",
    ]


def test_the_no_egress_environment_pins_vllms_host_address() -> None:
    # vLLM's get_ip() connects a UDP socket to 8.8.8.8 unless this is set
    assert NO_EGRESS_ENV["VLLM_HOST_IP"] == "127.0.0.1"
    assert ipaddress.ip_address(NO_EGRESS_ENV["VLLM_LOOPBACK_IP"]).is_loopback


def _eager_models_file(tmp_path: Path) -> Path:
    """The committed models.toml (same pins, same builders), every model with enforce_eager."""
    doc = tomlkit.parse((ROOT / "models.toml").read_text(encoding="utf-8"))
    for entry in doc["models"]:
        entry["enforce_eager"] = True
    path = tmp_path / "models.toml"
    path.write_text(tomlkit.dumps(doc), encoding="utf-8")
    return path


@pytest.mark.engine
def test_a_dev_node_connects_nothing_beyond_loopback(tmp_path: Path) -> None:
    strace = _strace()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("BASTION_CONFIG", "VLLM_HOST_IP", "HOST_IP")}
    env.update(
        PYTHONPATH=str(ROOT),
        BASTION_DATA_DIR=str(tmp_path / "data"),
        # dev mode's models (the chat and the embedding model, built into the data folder), the chat
        # model eager: no torch.compile on a test machine
        BASTION_MODELS_FILE=str(_eager_models_file(tmp_path)),
    )
    trace_file, out_file = tmp_path / "connect.trace", tmp_path / "stdout"
    with out_file.open("wb") as out:
        tracer = subprocess.Popen(
            [*strace, "-o", str(trace_file), sys.executable, "-m", "node.cli", "serve", "--port", str(port)],
            cwd=tmp_path,  # no node.toml here: dev mode
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while True:
            assert tracer.poll() is None, out_file.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "the dev node did not become ready"
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        key = re.search(r"bst_[A-Za-z0-9_-]+", out_file.read_text(errors="replace"))
        assert key is not None, "the dev banner shows the key"
        reply = httpx.post(
            url + "/v1/chat/completions",
            headers={"authorization": f"Bearer {key.group(0)}"},
            json={"model": "bastion-tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
            timeout=60,
        )
        assert reply.status_code == 200, reply.text
        (node,) = psutil.Process(tracer.pid).children()
        node.send_signal(signal.SIGTERM)
        assert tracer.wait(timeout=120) == 0  # strace exits with the node's status
    finally:
        if tracer.poll() is None:
            os.killpg(tracer.pid, signal.SIGKILL)
    trace = trace_file.read_text(errors="replace")
    assert "connect(" in trace, "the trace saw no connect() at all: it is not tracing"
    assert non_loopback_connects(trace) == []
