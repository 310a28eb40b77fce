"""Smoke runs of the side-by-side harnesses: a tiny load each, the report's figures read back.

They run what an operator runs: ``bastion`` as a command (configured through ``bastion config
check`` and ``bastion keys create``), the mock upstream and the engine as subprocesses.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from bench import file_search_overhead, gateway_overhead
from bench.harness import check_config, cpu_seconds_by_role, create_key, free_port, no_audit_config


def _figures(line: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?|nan", line)]


def test_gateway_overhead_reports_what_the_node_adds(
    models_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert gateway_overhead.main(["--requests", "4", "--rounds", "1", "--models-file", str(models_file)]) == 0
    out = capsys.readouterr().out
    rounds = [line for line in out.splitlines() if line.startswith("round 0 bastion")]
    assert len(rounds) == 2 and all(line.endswith("failed 0") for line in rounds), out
    summary = {
        (line.split()[0], line.split()[1]): line for line in out.split("added p50 ms")[1].splitlines()[1:]
    }
    for c in ("1", "16"):
        for name in ("direct", "bastion"):
            _c, p50, p99, rps, _added = _figures(summary[(name, c)])
            assert p50 > 0 and p99 >= p50 and rps > 0, summary[(name, c)]
        assert _figures(summary[("bastion", c)])[-1] > 0, "the node adds some latency"


def test_a_node_config_is_checked_and_keyed_by_the_bastion_command(
    tmp_path: Path, models_file: Path, data_dir: Path, tiny_model_dir: Path
) -> None:
    config, key = no_audit_config(
        tmp_path, models_file=models_file, data_dir=data_dir, model="bastion-tiny", port=free_port()
    )
    assert key.startswith("bst_") and key not in config.read_text()
    assert create_key(config, "bench") not in (key, "")
    with pytest.raises(RuntimeError, match="no tenant 'nobody'"):
        create_key(config, "nobody")
    config.write_text(config.read_text().replace("residency", "residence"))
    with pytest.raises(RuntimeError, match="residence"):
        check_config(config)


def test_cpu_seconds_are_split_by_role() -> None:
    before = cpu_seconds_by_role(os.getpid())
    sum(i * i for i in range(2_000_000))  # CPU spent in this (the front) process
    after = cpu_seconds_by_role(os.getpid())
    assert set(after) == {"front", "engine", "other"}
    assert after["front"] > before["front"] and after["engine"] == before["engine"] == 0.0


@pytest.mark.engine
def test_file_search_overhead_reports_pairs_of_the_same_length(
    tmp_path: Path,
    models_file: Path,
    data_dir: Path,
    tiny_model_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "models").symlink_to(data_dir / "models")  # dev mode builds the embedding model there if missing
    eager = tmp_path / "models.toml"  # same pins, engines start ~2x faster
    eager.write_text(models_file.read_text().replace("enforce_eager = false", "enforce_eager = true"))
    argv = ["--data-dir", str(data), "--models-file", str(eager), "--log-dir", str(tmp_path)]
    argv += ["--pairs", "2", "--concurrency", "1,2", "--warmup", "1", "--max-num-results", "3"]
    assert file_search_overhead.main(argv) == 0
    out = capsys.readouterr().out
    assert re.search(r"corpus: 5 documents in vs_\w+, ingested in [\d.]+ s", out), out
    assert re.search(r"load average at start: [\d.]+ [\d.]+ [\d.]+", out), out
    rows = {line.split()[0]: _figures(line) for line in out.split("same out")[1].splitlines()[1:3]}
    assert set(rows) == {"1", "2"}, out
    for row in rows.values():
        _c, pairs, fs50, fs99, pl50, pl99, added, ratio, tokens, gap, same, total = row
        assert pairs == 2 and fs99 >= fs50 > 0 and pl99 >= pl50 > 0, out
        assert abs(ratio - fs50 / pl50) < 0.02 and added == added, out  # not nan
        assert tokens > 100 and 0 <= gap <= 4 and 0 <= same <= total == 2, out
    split = next(line for line in out.splitlines() if line.startswith("split at c=1"))
    m = re.search(r"endpoint ([\d.]+) ms and the search endpoint ([\d.]+) ms.*: embedding ([\d.]+) ms, "
                  r"search (-?[\d.]+) ms, rest (-?[\d.]+) ms", split)  # fmt: skip
    assert m is not None and float(m[1]) > 0 and float(m[2]) > 0 and m[1] == m[3], split
