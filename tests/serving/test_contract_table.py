"""The README's field table is the code's (``serving.contract.CONTRACT``), row by row."""

from __future__ import annotations

import re

from serving.contract import CONTRACT, FIELDS
from tests.harness import ROOT

KINDS = ("local", "openai", "anthropic")  # the README's column order


def _readme_rows() -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 1 + len(KINDS) or not cells[0].startswith("`"):
            continue
        for name in re.findall(r"`([a-z_]+)`", cells[0]):
            if name in FIELDS:
                rows[name] = cells[1:]
    return rows


def test_the_readme_table_says_what_the_code_does() -> None:
    rows = _readme_rows()
    assert sorted(rows) == sorted(FIELDS)
    for name in FIELDS:
        said = [cell.split(":")[0] for cell in rows[name]]
        assert said == [CONTRACT[kind][name].support.value for kind in KINDS], name
