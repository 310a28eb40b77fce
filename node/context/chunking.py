"""Static chunking (OpenAI's ``static`` strategy), counted in the embedding model's tokens.

A chunk is at most ``max_chunk_size_tokens`` tokens; consecutive chunks share
``chunk_overlap_tokens`` (so an answer that straddles a boundary is whole in
one of them). Chunk text is cut from the original at the tokens' character
offsets, never decoded from ids, so it is exactly the file's text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import msgspec
from tokenizers import Tokenizer as _HFTokenizer

from .records import StaticChunking

__all__ = ["FileTokenizer", "Span", "TextTokenizer", "static_chunks"]


class Span(msgspec.Struct, frozen=True, kw_only=True):
    index: int
    start_token: int
    end_token: int
    text: str


@runtime_checkable
class TextTokenizer(Protocol):
    """A model's tokenizer as chunking and packing use it."""

    def offsets(self, text: str) -> list[tuple[int, int]]:
        """Each token's (start, end) character offsets in ``text``, no special tokens."""
        ...

    def count(self, text: str) -> int: ...


class FileTokenizer:
    """A model folder's ``tokenizer.json`` (Hugging Face ``tokenizers``), as the engine loads it."""

    def __init__(self, path: str | Path) -> None:
        self._tok = _HFTokenizer.from_file(str(path))

    @classmethod
    def of_model(cls, model_dir: str | Path) -> FileTokenizer:
        return cls(Path(model_dir) / "tokenizer.json")

    def offsets(self, text: str) -> list[tuple[int, int]]:
        return [(int(a), int(b)) for a, b in self._tok.encode(text, add_special_tokens=False).offsets]

    def count(self, text: str) -> int:
        return len(self._tok.encode(text, add_special_tokens=False).ids)


def static_chunks(text: str, tokenizer: TextTokenizer, strategy: StaticChunking) -> list[Span]:
    offsets = tokenizer.offsets(text)
    n = len(offsets)
    size, step = (
        strategy.max_chunk_size_tokens,
        strategy.max_chunk_size_tokens - strategy.chunk_overlap_tokens,
    )
    spans: list[Span] = []
    start = 0
    while start < n:
        end = min(start + size, n)
        piece = text[offsets[start][0] : offsets[end - 1][1]]
        if piece.strip():
            spans.append(Span(index=len(spans), start_token=start, end_token=end, text=piece))
        if end == n:
            break
        start += step
    return spans
