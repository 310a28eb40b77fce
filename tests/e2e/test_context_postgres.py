"""``[context] backend = "postgres"`` end to end: nodes under uvicorn on 127.0.0.1 on the real tiny chat and
embedding engines, the official ``openai`` client, a real PostgreSQL server (SCRAM passwords, the URL in a
file). One node alone; two nodes on one database (one through ``[context.postgres]``, the other through the
fleet's ``[state]``) seeing and changing the same stores; a server that cannot be reached stops start-up."""

from __future__ import annotations

import socket
from pathlib import Path

import openai
import psycopg
import pytest

from node.assembly import build_node
from node.startup import ExitCode, StartupError
from serving.embedding import LocalEmbedder
from serving.engine import LocalEngine
from tests.conftest import TINY_EMBED_NAME
from tests.harness import TINY, NodeSetup, node_setup, running_node
from tests.postgres import PostgresServer

pytestmark = [pytest.mark.engine, pytest.mark.asyncio(loop_scope="session")]

EMBED = TINY_EMBED_NAME
BOTH = f'models = ["{TINY}", "{EMBED}"]\nresidency = "local-only"'
MARKDOWN = b"""# Cardiology ward

The usual metoprolol dose for our ward is 50 mg twice daily. Ask the duty pharmacist before changing it.
"""
HTML = b"""<html><body><h1>Billing</h1><p>Refunds go to account AC-7731/2 within five working days.</p>
</body></html>"""


def _setup(folder: Path, url: str, *, via_state: bool = False, kek_of: Path | None = None) -> NodeSetup:
    """A node whose context store is PostgreSQL at ``url`` (in a file beside node.toml): its own
    ``[context.postgres]``, or with ``via_state`` the fleet's ``[state]`` database; ``kek_of``: share
    that node's KEK (every node on one context database unwraps the same data keys)."""
    folder.mkdir(mode=0o700, exist_ok=True)
    (folder / "pg-url").write_text(url + "\n")
    (folder / "pg-url").chmod(0o600)
    database = '[context.postgres]\npostgres_url_file = "pg-url"\ntimeout_s = 1\n'
    state = '[state]\npostgres_url_file = "pg-url"\n' if via_state else ""
    setup = node_setup(
        folder,
        tenants={"acme": BOTH, "globex": BOTH},
        extra=f"""{state}
[context]
embedding_model = "{EMBED}"
backend = "postgres"
{"" if via_state else database}""",
    )
    if kek_of is not None:
        (folder / "kek.key").write_bytes((kek_of / "kek.key").read_bytes())
    return setup


def _client(url: str, setup: NodeSetup, tenant: str = "acme") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key=setup.keys[tenant], max_retries=0)


async def _search(c: openai.AsyncOpenAI, store_id: str, query: str) -> list[str]:
    return [r.file_id async for r in await c.vector_stores.search(store_id, query=query, max_num_results=3)]


async def test_the_official_client_on_a_postgres_store(
    tmp_path: Path, pg_url: str, local_engine: LocalEngine, embed_engine: LocalEmbedder
) -> None:
    setup = _setup(tmp_path, pg_url)
    async with running_node(setup, {TINY: local_engine, EMBED: embed_engine}) as node:
        c = _client(node.url, setup)
        md = await c.files.create(file=("ward.md", MARKDOWN), purpose="assistants")
        html = await c.files.create(file=("billing.html", HTML), purpose="assistants")
        vs = await c.vector_stores.create(name="ward")
        batch = await c.vector_stores.file_batches.create_and_poll(
            vector_store_id=vs.id, file_ids=[md.id, html.id], poll_interval_ms=50
        )
        assert batch.status == "completed" and batch.file_counts.completed == 2
        assert (await c.vector_stores.retrieve(vs.id)).file_counts.completed == 2
        assert (await _search(c, vs.id, "metoprolol dose"))[0] == md.id
        assert (await _search(c, vs.id, "AC-7731/2"))[0] == html.id  # an identifier, as one phrase
        assert await (await c.files.content(md.id)).aread() == MARKDOWN

        other = _client(node.url, setup, "globex")
        with pytest.raises(openai.NotFoundError):
            await other.vector_stores.search(vs.id, query="metoprolol")
        with pytest.raises(openai.NotFoundError):
            await other.files.retrieve(md.id)

        resp = await c.responses.create(
            model=TINY,
            input="What is the metoprolol dose?",
            tools=[{"type": "file_search", "vector_store_ids": [vs.id], "max_num_results": 2}],
            max_output_tokens=8,
            temperature=0,
        )
        call, message = resp.output[0], resp.output[1]
        assert call.type == "file_search_call" and call.status == "completed"
        assert message.type == "message"
        citation = message.content[0].annotations[0]
        assert citation.type == "file_citation" and citation.file_id == md.id
        assert (citation.model_extra or {}).get("chunk_id", "").startswith(md.id + "#")

    assert not (tmp_path / "data" / "context.db").exists()  # nothing of it on the node's disk
    with psycopg.connect(pg_url) as conn:
        (files,) = conn.execute("SELECT count(*) FROM ctx_files WHERE tenant = 'acme'").fetchone() or (0,)
        assert files == 2
        (clear,) = conn.execute(
            "SELECT count(*) FROM ctx_files WHERE position('metoprolol'::bytea IN content) > 0"
        ).fetchone() or (1,)
        assert clear == 0  # file contents are sealed; the tsvector holds the lexemes in clear (README)
        (table,) = conn.execute(
            "SELECT 'ctx_chunks_' || pk FROM ctx_stores WHERE id = %s", (vs.id,)
        ).fetchone() or ("",)
        (indexed,) = conn.execute(
            f"SELECT count(*) FROM {table} WHERE tsv @@ to_tsquery('english', 'metoprolol')"
        ).fetchone() or (0,)
        assert indexed == 1


async def test_two_nodes_on_one_database_see_and_change_the_same_stores(
    tmp_path: Path, pg_url: str, local_engine: LocalEngine, embed_engine: LocalEmbedder
) -> None:
    a_setup = _setup(tmp_path / "a", pg_url)
    b_setup = _setup(tmp_path / "b", pg_url, via_state=True, kek_of=tmp_path / "a")
    engines = {TINY: local_engine, EMBED: embed_engine}
    async with running_node(a_setup, engines) as a, running_node(b_setup, engines) as b:
        ca, cb = _client(a.url, a_setup), _client(b.url, b_setup)
        md = await ca.files.create(file=("ward.md", MARKDOWN), purpose="assistants")
        vs = await ca.vector_stores.create(name="shared")
        done = await ca.vector_stores.files.create_and_poll(
            vector_store_id=vs.id, file_id=md.id, poll_interval_ms=50
        )
        assert done.status == "completed"
        assert (await _search(ca, vs.id, "metoprolol dose"))[0] == md.id  # A's vectors now in A's memory

        # B (another node, another API key of the same tenant) sees A's store and file
        assert vs.id in {s.id async for s in cb.vector_stores.list()}
        assert (await _search(cb, vs.id, "metoprolol dose"))[0] == md.id
        html = await cb.files.create(file=("billing.html", HTML), purpose="assistants")
        added = await cb.vector_stores.files.create_and_poll(
            vector_store_id=vs.id, file_id=html.id, poll_interval_ms=50
        )
        assert added.status == "completed"

        # A searches what B added (never its stale in-memory vectors), and B's deletion is gone on A
        assert (await _search(ca, vs.id, "AC-7731/2"))[0] == html.id
        assert (await ca.vector_stores.retrieve(vs.id)).file_counts.completed == 2
        await cb.files.delete(html.id)
        assert html.id not in await _search(ca, vs.id, "AC-7731/2 refunds account")
        with pytest.raises(openai.NotFoundError):
            await ca.files.retrieve(html.id)


async def test_a_database_that_cannot_be_reached_stops_start_up(
    tmp_path: Path,
    postgres: PostgresServer,
    pg_url: str,
    local_engine: LocalEngine,
    embed_engine: LocalEmbedder,
) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    setup = _setup(tmp_path, pg_url.replace(f":{postgres.port}/", f":{closed}/"))
    with pytest.raises(StartupError) as err:
        async with build_node(
            setup.config, config_dir=setup.config_dir, engines={TINY: local_engine, EMBED: embed_engine}
        ):
            pytest.fail("the node started without its context database")
    assert err.value.code is ExitCode.DATABASE
    assert (
        "the context store's PostgreSQL database ([context.postgres]) cannot be reached" in err.value.message
    )
    assert postgres.password not in err.value.message
