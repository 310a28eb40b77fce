"""Prompts and request bodies, deterministic per (seed, request index)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import msgspec

from bench.config import LoadConfig, WorkloadConfig

__all__ = ["Workload"]

# Common short English words: most tokenizers encode each as one token, so a prompt
# of N words is close to N tokens without needing the server's tokenizer.
_WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from or one had "
    "by word but not what all were we when your can said there use an each which she do how their if will "
    "up other about out many then them these so some her would make like him into time has look two more "
    "write go see number no way could people my than first water been call who oil its now find long down "
    "day did get come made may part"
).split()


class _JsonlPrompt(msgspec.Struct):
    prompt: str
    max_tokens: int | None = None


class Workload:
    """Builds the JSON body of request ``i``; the same seed gives the same bodies."""

    def __init__(self, cfg: LoadConfig) -> None:
        self.cfg = cfg
        self.w: WorkloadConfig = cfg.workload
        self._prompts: list[_JsonlPrompt] = []
        if self.w.kind == "jsonl":
            assert self.w.path is not None
            dec = msgspec.json.Decoder(_JsonlPrompt)
            with Path(self.w.path).open("rb") as fh:
                self._prompts = [dec.decode(line) for line in fh if line.strip()]
            if not self._prompts:
                raise ValueError(f"no prompts in {self.w.path}")
        self._prefixes = [
            self._words(random.Random(f"prefix:{cfg.seed}:{p}"), self.w.prefix_len)
            for p in range(self.w.num_prefixes if self.w.kind == "shared_prefix" else 0)
        ]
        self._enc = msgspec.json.Encoder()

    @staticmethod
    def _words(rng: random.Random, n: int) -> str:
        return " ".join(rng.choice(_WORDS) for _ in range(n))

    @staticmethod
    def _length(rng: random.Random, mean: int, spread: float) -> int:
        lo, hi = max(1, round(mean * (1 - spread))), max(1, round(mean * (1 + spread)))
        return rng.randint(lo, hi)

    def request(self, i: int) -> tuple[bytes, int]:
        """(body, requested output tokens) of request ``i``."""
        w = self.w
        rng = random.Random(f"{self.cfg.seed}:{i}")
        max_tokens = self._length(rng, w.output_len, w.output_range)
        if w.kind == "jsonl":
            item = self._prompts[i % len(self._prompts)]
            prompt = item.prompt
            max_tokens = item.max_tokens or max_tokens
        else:
            # A per-request nonce first keeps random prompts from hitting the prefix cache.
            prompt = f"{i} " + self._words(rng, self._length(rng, w.input_len, w.input_range) - 1)
            if w.kind == "shared_prefix":
                prompt = self._prefixes[i % len(self._prefixes)] + " " + prompt
        body: dict[str, Any] = {"model": self.cfg.model, "max_tokens": max_tokens, "stream": True}
        if self.cfg.endpoint == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        if self.cfg.response_format is not None:
            body["response_format"] = self.cfg.response_format
        if self.cfg.include_usage:
            opts: dict[str, Any] = {"include_usage": True}
            if self.cfg.continuous_usage:
                opts["continuous_usage_stats"] = True
            body["stream_options"] = opts
        if w.fixed_output:
            body["ignore_eos"] = True
            body["min_tokens"] = max_tokens
        return self._enc.encode(body), max_tokens
