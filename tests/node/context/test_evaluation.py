"""The shipped labelled corpus: hybrid retrieval beats full-text-only and vector-only on it with the
tiny embedding model; the metrics and ``bastion context eval``'s refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.cli import main
from node.context import ContextService
from node.context.cli import index_folder
from node.context.evaluation import evaluate, load_queries, score_ranking

CORPUS = Path(__file__).resolve().parents[2] / "data" / "context_eval"


def test_metrics_by_hand() -> None:
    assert score_ranking(["a", "b", "c"], {"b"}, 5) == (1.0, 0.5, pytest.approx(1 / 1.5849625))
    assert score_ranking(["x", "y"], {"a", "b"}, 5) == (0.0, 0.0, 0.0)
    recall, rr, ndcg = score_ranking(["a", "x", "b"], {"a", "b"}, 2)
    assert (recall, rr) == (0.5, 1.0) and ndcg == pytest.approx(1 / (1 + 1 / 1.5849625))
    assert score_ranking(["a", "a", "b"], {"b"}, 2) == (1.0, 0.5, pytest.approx(1 / 1.5849625))  # per file


@pytest.mark.engine
async def test_hybrid_beats_fulltext_and_vector_on_the_shipped_corpus(service: ContextService) -> None:
    queries = load_queries(CORPUS / "queries.jsonl")
    assert len(queries) >= 30 and {q.tag for q in queries} == {"exact", "variant", "natural"}
    store_id = await index_folder(service, "eval", CORPUS / "docs")
    report = await evaluate(service, "eval", [store_id], queries, k=5)
    hybrid, fulltext, vector = (report.overall[m] for m in ("hybrid", "fulltext", "vector"))
    for metric in ("recall", "mrr", "ndcg"):
        assert getattr(hybrid, metric) > getattr(fulltext, metric), metric
        assert getattr(hybrid, metric) > getattr(vector, metric), metric
    # each side wins somewhere: full text on exact identifiers, vectors on misspelt or run-together ones
    assert report.by_tag["exact"]["fulltext"].mrr > report.by_tag["exact"]["vector"].mrr
    assert report.by_tag["variant"]["vector"].recall > report.by_tag["variant"]["fulltext"].recall == 0.0


def test_eval_cli_refuses_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"query": "x", "relevant": ["a.txt"]}\n{"query": "y", "relevant": []}\n')
    assert main(["context", "eval", "--corpus", str(CORPUS / "docs"), "--queries", str(bad)]) == 2
    assert "q.jsonl:2" in capsys.readouterr().err
    bad.write_text('{"query": "x", "relevant": ["a.txt"], "extra": 1}\n')
    assert main(["context", "eval", "--corpus", str(CORPUS / "docs"), "--queries", str(bad)]) == 2
    assert "extra" in capsys.readouterr().err
    good = str(CORPUS / "queries.jsonl")
    assert main(["context", "eval", "--store", "vs_x", "--queries", good]) == 2
    assert "--store needs --tenant" in capsys.readouterr().err
    assert main(["context", "eval", "--store", "vs_x", "--tenant", "acme", "--queries", good]) == 2
    assert "give --config" in capsys.readouterr().err
    assert main(["context", "eval", "--corpus", "x", "--queries", good, "--k", "0"]) == 2
    docs = str(CORPUS / "docs")
    assert (
        main(["context", "eval", "--corpus", docs, "--queries", good, "--reranker", "bastion-tiny-embed"])
        == 2
    )
    assert "--reranker 'bastion-tiny-embed' has task = \"embed\"" in capsys.readouterr().err
