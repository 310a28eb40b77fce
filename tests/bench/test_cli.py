"""The ``bench`` command line end to end: run, report, compare, sweep, outputs on disk."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from bench.cli import main
from bench.result import load_result


def test_run_writes_every_output_and_compare_reads_them(
    mock_fast: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    common = [
        "--url",
        mock_fast,
        "-n",
        "40",
        "--concurrency",
        "4",
        "--output-len",
        "8",
        "--no-ceiling",
        "-q",
        "--slo",
        "ttft_ms=500",
        "--seed",
        "11",
    ]
    assert main(["run", *common, "--out", str(a)]) == 0
    assert (
        main(["run", *common, "--out", str(b), "--rate", "100", "--arrival", "gamma", "--burstiness", "0.5"])
        == 0
    )
    out = capsys.readouterr().out
    assert "ttft_sched_ms" in out and "formulas:" in out and "goodput" in out
    for d in (a, b):
        assert {
            "result.json",
            "records.jsonl",
            "summary.csv",
            "latency_cdf.png",
            "latency_over_time.png",
        } <= {p.name for p in d.iterdir()}
    res = load_result(a / "result.json")
    assert res.schema_version == 1 and res.meta.seed == 11 and res.meta.command
    assert res.summary.succeeded == 40 and res.config.slos == {"ttft_ms": 500.0}
    assert len((a / "records.jsonl").read_bytes().splitlines()) == 40
    assert main(["compare", str(a / "result.json"), str(b / "result.json")]) == 0
    cmp_out = capsys.readouterr().out
    assert "ttft_ms" in cmp_out and "significant" in cmp_out
    assert main(["report", str(a / "records.jsonl"), "--slo", "ttft_ms=500"]) == 0
    rep = msgspec.json.decode(capsys.readouterr().out)
    assert rep["succeeded"] == 40 and rep["slo_attainment"] == 1.0


def test_sweep_stops_at_saturation(mock: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.mockproc import mock_process

    # one server slot, 50 ms per request: capacity 20 req/s
    with mock_process("--ttft", "10", "--itl", "10", "--max-concurrency", "1") as url:
        code = main(
            [
                "sweep",
                "--url",
                url,
                "--levels",
                "5,10,40,80",
                "--duration",
                "1",
                "--output-len",
                "5",
                "--no-ceiling",
                "-q",
                "--no-plots",
                "--out",
                str(tmp_path),
            ]
        )
    assert code == 0
    sweep = msgspec.json.decode((tmp_path / "sweep.json").read_bytes())
    levels = [p["level"] for p in sweep["points"]]
    assert levels[:2] == [5, 10] and 80 not in levels
    assert sweep["stopped"].startswith("saturated at rate=40")


def test_bad_config_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--url", "http://127.0.0.1:1", "--slo", "ttfx_ms=3", "--out", str(tmp_path)]) == 2
    assert "unknown SLO" in capsys.readouterr().err


def _files_holding(root: Path, secret: str) -> list[str]:
    return sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()
    )


@pytest.mark.parametrize("source", ["flag", "file", "env", "default-env"])
def test_the_api_key_is_sent_and_never_written(
    source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.fakes.upstream import FakeUpstream

    key = "sk-bench-" + source + "-0123456789abcdef"
    key_args = {
        "flag": ["--api-key", key],
        "file": ["--api-key-file", str(tmp_path / "key")],
        "env": ["--api-key-env", "MY_BENCH_KEY"],
        "default-env": [],
    }[source]
    (tmp_path / "key").write_text(key + "\n")
    monkeypatch.setenv("MY_BENCH_KEY", key)
    monkeypatch.setenv("BENCH_API_KEY", key if source == "default-env" else "")
    # what the command line looked like is kept in result.json: the key must not be
    monkeypatch.setattr("sys.argv", ["bench", "run", *key_args])
    out = tmp_path / "out"
    with FakeUpstream() as fake:
        argv = ["run", "--url", fake.url, "-n", "3", "--no-ceiling", "-q", "--no-plots", "--out", str(out)]
        assert main([*argv, *key_args]) == 0
        assert {r.headers.get("authorization") for r in fake.requests} == {f"Bearer {key}"}
    assert {"result.json", "records.jsonl", "summary.csv"} <= {p.name for p in out.iterdir()}
    assert _files_holding(out, key) == []
    res = load_result(out / "result.json")
    assert res.config.api_key == "[redacted]"
    if source == "flag":
        assert res.meta.command == ["bench", "run", "--api-key", "[redacted]"]


def test_an_error_body_echoing_the_key_is_redacted_in_the_records(tmp_path: Path) -> None:
    from tests.fakes.upstream import FakeUpstream, Reply

    key = "sk-echoed-0123456789abcdef"
    out = tmp_path / "out"
    with FakeUpstream() as fake:
        fake.script(Reply(status=401, text=f"Incorrect API key provided: {key}"))
        argv = ["run", "--url", fake.url, "-n", "1", "--no-ceiling", "-q", "--no-plots", "--out", str(out)]
        assert main([*argv, "--api-key", key]) == 0
    errors = [line for line in (out / "records.jsonl").read_text().splitlines() if "401" in line]
    assert errors and _files_holding(out, key) == []


def test_an_unset_key_variable_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_SUCH_BENCH_KEY", raising=False)
    argv = [
        "run",
        "--url",
        "http://127.0.0.1:1",
        "--api-key-env",
        "NO_SUCH_BENCH_KEY",
        "--out",
        str(tmp_path),
    ]
    assert main(argv) == 2
    assert "NO_SUCH_BENCH_KEY is not set" in capsys.readouterr().err
