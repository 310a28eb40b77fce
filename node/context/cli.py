"""``bastion context eval``: how well hybrid, full-text-only and vector-only retrieval answer a labelled set.

    bastion context eval --corpus tests/data/context_eval/docs --queries tests/data/context_eval/queries.jsonl
    bastion context eval --config node.toml --tenant acme --store vs_... --queries labelled.jsonl

``--corpus`` indexes a folder of documents into a throw-away store (a temporary
database under a random key; with a ``--config`` whose ``[context]`` backend is
PostgreSQL, a throw-away tenant in that database, erased afterwards) first;
``--store`` evaluates a store of the node's own context store (``<data_dir>/context.db``
or its PostgreSQL database), opened with the audit log's KEK. Either way the
node's pinned embedding model (``--model``, else the first ``task = "embed"``
model of the models file) runs here, in process, and so does the reranker
(``--reranker``, else the config's ``[context] reranker``), which adds a
``hybrid+rerank`` row. Exit codes: 0 ok, 2 bad usage, configuration or query file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec

from audit.kek import KeyEncryptionKey, LocalKek
from serving.errors import StartupFailure
from serving.models import ModelsFile, ModelSpec

from ..config import NodeConfig
from .backend import ContextBackend
from .backends import CONTEXT_DB, open_backend, sqlite_path
from .chunking import FileTokenizer
from .evaluation import LabelledQuery, Report, evaluate, load_queries
from .records import ContextConfig
from .service import ContextService
from .sqlite import SqliteBackend

__all__ = ["add_context_commands", "run_context_command"]


def add_context_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    context = sub.add_parser("context", help="retrieval: files, vector stores, search quality")
    csub = context.add_subparsers(dest="context_cmd", required=True)
    ev = csub.add_parser("eval", help="recall@k, MRR and nDCG of hybrid, full-text and vector search")
    where = ev.add_mutually_exclusive_group(required=True)
    where.add_argument("--store", help="a vector store id in the node's context.db (with --tenant)")
    where.add_argument("--corpus", help="a folder of documents to index into a temporary store")
    ev.add_argument("--tenant", help="the store's tenant (with --store)")
    ev.add_argument(
        "--queries", required=True, help="JSON Lines: {query, relevant: [file names or ids], tag?}"
    )
    ev.add_argument("--k", type=int, default=5, help="results per query (default 5)")
    ev.add_argument("--model", help="the embedding model (default: the first task = 'embed' model)")
    ev.add_argument(
        "--reranker",
        help="a task = 'rerank' model: adds a hybrid+rerank row (default: the config's [context] reranker)",
    )
    ev.add_argument("--config", help="node.toml (its models_file, data_dir, audit KEK)")
    ev.add_argument("--data-dir", help="without a config: the data folder (default ./data)")
    ev.add_argument("--json", action="store_true", help="print the report as JSON")


def run_context_command(
    args: argparse.Namespace,
    models_file: Path,
    data_dir: Path,
    kek: KeyEncryptionKey | None,
    node: tuple[NodeConfig, Path] | None = None,
) -> int:
    """``node``: the ``--config`` and its folder (which backend its ``[context]`` names)."""
    if args.store and not args.tenant:
        return _fail("--store needs --tenant")
    if args.store and kek is None:
        return _fail("--store opens the node's context.db: give --config with an [audit] KEK")
    if not 1 <= args.k <= 50:
        return _fail("--k must be between 1 and 50")
    try:
        queries = load_queries(args.queries)
    except (OSError, ValueError) as exc:
        return _fail(str(exc))
    try:
        report = asyncio.run(_evaluate(args, models_file, data_dir, kek, queries, node))
    except (OSError, ValueError, LookupError, StartupFailure) as exc:
        return _fail(str(exc))
    print(msgspec.json.encode(report).decode() if args.json else format_report(report))
    return 0


def _fail(message: str) -> int:
    print(f"bastion: {message}", file=sys.stderr)
    return 2


async def _evaluate(
    args: argparse.Namespace,
    models_file: Path,
    data_dir: Path,
    kek: KeyEncryptionKey | None,
    queries: list[LabelledQuery],
    node: tuple[NodeConfig, Path] | None,
) -> Report:
    from serving.embedding import LocalEmbedder
    from serving.model_commands import ensure_model
    from serving.models import load_models_file
    from serving.rerank import LocalReranker

    models = load_models_file(models_file)
    name = args.model or next((s.name for s in models.models if s.task == "embed"), None)
    if name is None:
        raise LookupError(f'{models_file} pins no embedding model (task = "embed")')
    spec = models.get(name)
    rerank_spec = _reranker_spec(models, args.reranker, models_file)
    config = msgspec.convert({"embedding_model": spec.name, "reranker": args.reranker}, ContextConfig)
    model_dir = await asyncio.to_thread(ensure_model, spec, models_file, data_dir)
    async with _eval_backend(args, config, data_dir, kek, node) as (backend, tenant):
        async with contextlib.AsyncExitStack() as engines:
            engine = LocalEmbedder(spec, model_dir)
            await engines.enter_async_context(engine)
            reranker = None
            if rerank_spec is not None:
                rerank_dir = await asyncio.to_thread(ensure_model, rerank_spec, models_file, data_dir)
                reranker = LocalReranker(rerank_spec, rerank_dir)
                await engines.enter_async_context(reranker)
            service = ContextService(
                backend,
                engine,
                FileTokenizer.of_model(model_dir),
                config,
                embed_max_tokens=spec.max_model_len,
                reranker=reranker,
            )
            if args.corpus:
                store_ids = [await index_folder(service, tenant, Path(args.corpus))]
            else:
                store_ids = [args.store]
            return await evaluate(service, tenant, store_ids, queries, k=args.k)


@contextlib.asynccontextmanager
async def _eval_backend(
    args: argparse.Namespace,
    settings: ContextConfig,
    data_dir: Path,
    kek: KeyEncryptionKey | None,
    node: tuple[NodeConfig, Path] | None,
) -> AsyncIterator[tuple[ContextBackend, str]]:
    """The backend to evaluate on and the tenant: the node's for ``--store``; for ``--corpus`` a
    temporary SQLite file, or a throw-away tenant in the node's PostgreSQL (erased after)."""
    postgres = node is not None and node[0].context is not None and node[0].context.backend == "postgres"
    if args.corpus and not postgres:
        with tempfile.TemporaryDirectory(prefix="bastion-context-eval-") as tmp:
            backend: ContextBackend = await SqliteBackend.open(
                Path(tmp) / CONTEXT_DB,
                LocalKek(os.urandom(32)),
                vector_cache_bytes=settings.vector_cache_bytes,
                fulltext_cache_bytes=settings.fulltext_cache_bytes,
            )
            try:
                yield backend, "eval"
            finally:
                await backend.aclose()
        return
    if node is None or node[0].context is None:
        assert kek is not None and not args.corpus
        backend = await SqliteBackend.open(
            sqlite_path(None, data_dir),
            kek,
            vector_cache_bytes=settings.vector_cache_bytes,
            fulltext_cache_bytes=settings.fulltext_cache_bytes,
        )
    else:
        config, config_dir = node
        kek = LocalKek(os.urandom(32)) if args.corpus else kek
        assert kek is not None
        backend = await open_backend(config, config_dir=config_dir, data_dir=data_dir, kek=kek)
    tenant = f"eval-{secrets.token_hex(6)}" if args.corpus else args.tenant
    try:
        yield backend, tenant
    finally:
        try:
            if args.corpus:
                await backend.erase_tenant(tenant)
        finally:
            await backend.aclose()


def _reranker_spec(models: ModelsFile, name: str | None, models_file: Path) -> ModelSpec | None:
    if name is None:
        return None
    if name not in models.names:
        raise LookupError(f"--reranker {name!r} is not a model of {models_file}")
    spec = models.get(name)
    if spec.task != "rerank":
        raise LookupError(f'--reranker {name!r} has task = "{spec.task}": a reranker has task = "rerank"')
    return spec


async def index_folder(service: ContextService, tenant: str, folder: Path) -> str:
    """A new store of ``tenant`` holding every file of ``folder``; raises ValueError on a file that fails."""
    store = await service.create_store(tenant, name=folder.name)
    files = await asyncio.to_thread(
        lambda: sorted((p.name, p.read_bytes()) for p in folder.iterdir() if p.is_file())
    )
    if not files:
        raise ValueError(f"{folder}: no files")
    for name, content in files:
        f = await service.upload_file(tenant, name, content)
        done = await service.add_file(tenant, store.id, f.id)
        if done.last_error:
            raise ValueError(f"{folder / name}: {done.last_error}")
    return store.id


def format_report(report: Report) -> str:
    k = report.k
    lines = [f"{'':16}{'recall@' + str(k):>10}{'MRR':>8}{'nDCG@' + str(k):>9}  queries"]
    groups = [("all", report.overall), *report.by_tag.items()]
    for group, modes in groups:
        lines.append(group)
        for mode, m in modes.items():
            lines.append(f"  {mode:14}{m.recall:>10.3f}{m.mrr:>8.3f}{m.ndcg:>9.3f}  {m.queries}")
    return "\n".join(lines)
