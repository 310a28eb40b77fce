"""Client-side token counting from a local tokenizer, to cross-check server usage."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

__all__ = ["load_token_counter"]


def load_token_counter(path: str) -> Callable[[str], int]:
    """A function counting the tokens of a text, from a ``tokenizer.json`` file or a model directory.

    Uses the fast ``tokenizers`` library when a ``tokenizer.json`` is present, else
    ``transformers.AutoTokenizer`` with ``local_files_only`` (no hub access).
    """
    p = Path(path)
    tok_file = p if p.is_file() else p / "tokenizer.json"
    if tok_file.is_file():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tok_file))
        return lambda text: len(tok.encode(text, add_special_tokens=False).ids)
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    return lambda text: len(hf.encode(text, add_special_tokens=False))
