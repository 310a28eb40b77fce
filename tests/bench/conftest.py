"""Fixtures: ``bench mock`` in child processes on loopback, and a local word tokenizer."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from bench.mockproc import mock_process


@pytest.fixture
def mock() -> Callable[..., AbstractContextManager[str]]:
    """``with mock("--ttft", "50") as url:`` starts a mock server process."""
    return mock_process


@pytest.fixture(scope="module")
def mock_fast() -> Iterator[str]:
    with mock_process("--ttft", "1", "--itl", "1") as url:
        yield url


def _word_tokenizer(path: Path, split_digits: bool) -> str:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(50)} | {"w": 50, "[UNK]": 51} | {str(d): 52 + d for d in range(10)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    pre: list[pre_tokenizers.PreTokenizer] = [pre_tokenizers.WhitespaceSplit()]
    if split_digits:
        pre.append(pre_tokenizers.Digits(individual_digits=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(pre)
    tok.save(str(path))
    return str(path)


@pytest.fixture
def word_tokenizer(tmp_path: Path) -> str:
    """Counts the mock's " wN" words as one token each (U+2028/NEL are whitespace to it)."""
    return _word_tokenizer(tmp_path / "tokenizer.json", split_digits=False)


@pytest.fixture
def digit_tokenizer(tmp_path: Path) -> str:
    """Splits digits off: disagrees with the mock's usage counts, as a wrong tokenizer would."""
    return _word_tokenizer(tmp_path / "digits.json", split_digits=True)
