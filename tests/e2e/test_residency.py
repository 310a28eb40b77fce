"""Residency through real HTTP: whenever local-only is in effect, no external provider hears a thing.

Requests are written byte for byte on a loopback socket, so repeated
``x-bastion-residency`` lines reach the node exactly as a proxy would forward
them. The external providers are one fake upstream on 127.0.0.1, which records
everything it receives.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving.engine import LocalEngine
from serving.errors import EngineUnavailableError
from serving.protocol import Delta, GenerationRequest, Health, ProviderInfo
from tests.fakes.upstream import FakeUpstream
from tests.harness import TINY, NodeSetup, node_setup, running_node

pytestmark = pytest.mark.engine

MODEL = "fake-model-2024-08-06"
HEADER = "x-bastion-residency"
#: provider name -> region; all of them are the one fake upstream
PROVIDERS = {"fake-eu": "eu-west", "fake-central": "eu-central", "fake-us": "us-east"}
ROUTES = {
    "chat": ("local", ["fake-eu"]),
    "chat-busy": ("local-busy", ["fake-eu"]),  # the local engine always predicted over budget
    "chat-multi": ("local", ["fake-us", "fake-eu", "fake-central"]),
    "external-only": (None, ["fake-eu", "fake-central"]),
}
TENANTS = {
    "local": '"local-only"',
    "eu": '["eu-west"]',
    "eu2": '["eu-west", "eu-central"]',
    "everywhere": '["eu-west", "eu-central", "us-east"]',
    "asia": '["ap-south"]',  # a region no provider is in
}


class DownEngine:
    """A local engine whose last forward-pass probe failed."""

    def describe(self) -> ProviderInfo:
        return ProviderInfo(name=TINY, kind="local", region="local", models=(TINY,))

    async def health(self) -> Health:
        return Health(healthy=False, detail="dead: engine process exited")

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        raise EngineUnavailableError("engine dead", retry_after_s=5.0)
        yield Delta()  # pragma: no cover


class FailingEngine(DownEngine):
    """Reports ready, then fails every request: its breaker opens after two."""

    async def health(self) -> Health:
        return Health(healthy=True, detail="ready")


def _setup(tmp_path: Path, fake: FakeUpstream) -> NodeSetup:
    providers = "".join(
        f"""
[[providers]]
name = "{name}"
kind = "openai"
base_url = "{fake.openai_base}"
region = "{region}"
api_key_env = "FAKE_UPSTREAM_KEY"
[providers.models."{MODEL}"]
input_per_mtok = 1.0
output_per_mtok = 2.0
"""
        for name, region in PROVIDERS.items()
    )
    routes = "".join(
        f"""
[[routes]]
alias = "{alias}"
{f'local = "{TINY}"' if local else ""}
fallbacks = [{", ".join(f'{{ provider = "{p}", model = "{MODEL}" }}' for p in fallbacks)}]
ttft_budget_ms = {0.001 if local == "local-busy" else 60_000}
"""
        for alias, (local, fallbacks) in ROUTES.items()
    )
    models = json.dumps(list(ROUTES))
    return node_setup(
        tmp_path,
        audit=False,
        tenants={t: f"models = {models}\nresidency = {r}" for t, r in TENANTS.items()},
        extra="[routing]\nlocal_breaker = { min_requests = 2, failure_ratio = 0.5, open_s = 5 }\n"
        + providers
        + routes,
    )


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def code(self) -> str:
        return str(json.loads(self.body)["error"]["code"])


async def post_raw(url: str, key: str, residency: Sequence[str], text: str, *, alias: str = "chat") -> Reply:
    """One chat completion on a fresh connection: each ``residency`` value is its own header line."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 80
    body = json.dumps({"model": alias, "messages": [{"role": "user", "content": text}], "max_tokens": 2})
    lines = [
        "POST /v1/chat/completions HTTP/1.1",
        f"host: {host}:{port}",
        f"authorization: Bearer {key}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
        *(f"{HEADER}: {value}" for value in residency),
    ]
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body.encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout=60)
    finally:
        writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    return Reply(status=int(status_line.split()[1]), headers=headers, body=payload)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    with pytest.MonkeyPatch.context() as mp, FakeUpstream() as upstream:
        mp.setenv("FAKE_UPSTREAM_KEY", "sk-fake-secret-123")
        yield upstream


# -- the reported leaks ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "residency",
    [
        ["eu-west, local-only"],
        ["local-only,eu-west"],
        ["eu-west", "local-only"],  # two header lines, the tightening one second
        ["EU-West ,\tLocal-Only"],
    ],
)
async def test_local_only_beside_a_region_stays_on_the_node(
    tmp_path: Path, fake: FakeUpstream, residency: list[str]
) -> None:
    fake.reset()
    setup = _setup(tmp_path, fake)
    async with running_node(setup, {TINY: DownEngine()}) as node:
        # without the header the request goes out: the fallback is live and allowed
        allowed = await post_raw(node.url, setup.keys["eu"], [], "control")
        assert allowed.status == 200 and allowed.headers["x-bastion-route"] == "external:fake-eu"
        assert len(fake.requests) == 1
        reply = await post_raw(node.url, setup.keys["eu"], residency, "patient 4711 has a fever")
        assert reply.status == 503, reply.body
        assert reply.code() == "residency_no_capacity"
    assert [r.json()["messages"][-1]["content"] for r in fake.requests] == ["control"]


@pytest.mark.parametrize(
    ("residency", "named"),
    [
        (["eu-west,,local-only"], "empty element"),
        (["eu-west", ""], "empty element"),
        (["local_only"], "unknown token 'local_only'"),
        (["eu-west, mars-1"], "unknown token 'mars-1'"),
    ],
)
async def test_an_unreadable_header_is_a_400_and_nothing_leaves(
    tmp_path: Path, fake: FakeUpstream, residency: list[str], named: str
) -> None:
    fake.reset()
    setup = _setup(tmp_path, fake)
    async with running_node(setup, {TINY: DownEngine()}) as node:
        reply = await post_raw(node.url, setup.keys["eu"], residency, "hello")
    assert reply.status == 400
    error = json.loads(reply.body)["error"]
    assert (error["code"], error["param"]) == ("bad_residency_header", HEADER)
    assert named in error["message"]
    assert fake.requests == []


# -- the invariant, generatively --------------------------------------------------------------------


@dataclass
class Nodes:
    urls: dict[str, str]
    keys: dict[str, str]
    fake: FakeUpstream
    serial: Iterator[int] = field(default_factory=itertools.count)
    #: markers of the requests that were allowed to leave
    allowed: set[str] = field(default_factory=set)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def nodes(
    tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream, local_engine: LocalEngine
) -> AsyncIterator[Nodes]:
    """One node per local engine state, all on the session's event loop, sharing one fake upstream."""
    engines = {"healthy": local_engine, "down": DownEngine(), "failing": FailingEngine()}
    setups = {state: _setup(tmp_path_factory.mktemp(state), fake) for state in engines}
    async with (
        running_node(setups["healthy"], {TINY: engines["healthy"]}) as healthy,
        running_node(setups["down"], {TINY: engines["down"]}) as down,
        running_node(setups["failing"], {TINY: engines["failing"]}) as failing,
    ):
        fake.reset()
        urls = {"healthy": healthy.url, "down": down.url, "failing": failing.url}
        # each node has its own keys: address every tenant of every node through one table
        yield Nodes(
            urls=urls, keys={f"{s}/{t}": setups[s].keys[t] for s in setups for t in TENANTS}, fake=fake
        )


_TOKENS = ["local-only", "local-only", "eu-west", "eu-central", "us-east", "ap-south", "mars-1", "local", ""]


@st.composite
def _element(draw: st.DrawFn) -> str:
    token = draw(
        st.sampled_from(
            [
                "local-only",
                "local-only",
                "eu-west",
                "eu-central",
                "us-east",
                "ap-south",
                "mars-1",
                "local",
                "",
            ]
        )
    )
    upper = draw(st.lists(st.booleans(), min_size=len(token), max_size=len(token)))
    token = "".join(c.upper() if up else c for c, up in zip(token, upper, strict=True))
    return draw(st.sampled_from(["", " ", "\t", "  "])) + token + draw(st.sampled_from(["", " ", "\t"]))


#: header lines, each one or more comma-separated elements; sometimes none at all
_LINES = st.lists(st.lists(_element(), min_size=1, max_size=3).map(",".join), max_size=3)


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    engine=st.sampled_from(["healthy", "down", "failing"]),
    tenant=st.sampled_from(sorted(TENANTS)),
    alias=st.sampled_from(sorted(ROUTES)),
    lines=_LINES,
)
async def test_local_only_never_reaches_an_external_provider(
    nodes: Nodes, engine: str, tenant: str, alias: str, lines: list[str]
) -> None:
    marker = f"probe-{next(nodes.serial)}"
    elements = [e.strip(" \t").lower() for line in lines for e in line.split(",")]
    tenant_regions = set(json.loads(TENANTS[tenant])) if tenant != "local" else set()
    unreadable = any(
        e != "local-only" and e not in set(PROVIDERS.values()) | tenant_regions for e in elements
    )
    local_only = tenant == "local" or "local-only" in elements
    before = len(nodes.fake.requests)
    reply = await post_raw(nodes.urls[engine], nodes.keys[f"{engine}/{tenant}"], lines, marker, alias=alias)
    assert reply.status != 500, reply.body  # every outcome is a decision, never a crash
    if unreadable:
        assert reply.status == 400 and reply.code() == "bad_residency_header"
    if local_only or unreadable:
        assert len(nodes.fake.requests) == before
        assert reply.status != 200 or reply.headers["x-bastion-route"] == "local"
    else:
        nodes.allowed.add(marker)
    # nothing reached the upstream late either: every request it ever saw was allowed to leave
    seen = {r.json()["messages"][-1]["content"] for r in nodes.fake.requests}
    assert seen <= nodes.allowed
