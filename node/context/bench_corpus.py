"""Synthetic corpora for the context benchmarks (``node.context.bench``): prose with rare identifiers,
chunk records with random unit vectors, and ingestion on the real embedding engine.

The text is generated, deterministic per seed: common English words drawn
Zipf-like, with drug names, account numbers and article numbers sprinkled in, so
BM25 has both frequent and rare terms to rank. The search benchmark's vectors
are random unit vectors (the store's search latency does not depend on what the
vectors mean; embedding 100k chunks with the tiny engine would take hours on
two cores); ingestion embeds its chunks with the real engine.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .records import ChunkIn

__all__ = ["Corpus", "IngestResult", "corpus_queries", "make_corpus", "prose", "unit_vectors"]

_WORDS = (
    "the patient record policy account transfer review report clinic dose daily contract claim "
    "customer payment invoice schedule treatment interaction warning article section clause notice "
    "request approval audit risk limit balance statement insurance premium coverage renewal member "
    "service support ticket incident outage backup restore access control consent data subject "
    "retention period storage region transfer encryption key rotation vendor supplier order delivery "
    "warehouse shipment return refund credit debit loan mortgage rate interest term notice board "
    "meeting minutes decision budget forecast quarter revenue margin cost centre employee leave salary"
).split()
_DRUGS = "metoprolol ibuprofen amoxicillin atorvastatin omeprazole lisinopril metformin warfarin".split()


def _identifier(rng: random.Random) -> str:
    kind = rng.randrange(3)
    if kind == 0:
        return rng.choice(_DRUGS)
    if kind == 1:
        return f"DE-{rng.randrange(1000, 9999)}-{rng.randrange(1000, 9999)}"
    return f"Art{rng.randrange(1, 99)}"


_SYLLABLES = "ba ce di fo gu ha ke li mo nu pa re si to vu wa xe yi zo ar en is on ur".split()


def _vocabulary(size: int = 20_000) -> tuple[list[str], list[float]]:
    """The common words first, then made-up words, with Zipf weights (rank r: 1/r), as in real text."""
    rng = random.Random(0)
    made = {"".join(rng.choices(_SYLLABLES, k=rng.randrange(2, 5))) for _ in range(size)}
    words = _WORDS + sorted(made - set(_WORDS))
    return words, [1.0 / (rank + 1) for rank in range(len(words))]


_VOCABULARY = _vocabulary()


def prose(rng: random.Random, words: int) -> str:
    """``words`` words of sentences; about one in 25 words is a rare identifier."""
    vocabulary, weights = _VOCABULARY
    out: list[str] = []
    picked = rng.choices(vocabulary, weights=weights, k=words)
    for i, word in enumerate(picked):
        out.append(_identifier(rng) if rng.random() < 0.04 else word)
        if i % 12 == 11:
            out[-1] += "."
    return " ".join(out)


def unit_vectors(n: int, dims: int, seed: int) -> np.ndarray:
    """``n`` random float32 unit vectors (rows)."""
    vectors = np.random.default_rng(seed).standard_normal((n, dims)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


@dataclass(frozen=True, slots=True)
class Corpus:
    """Chunks (text and vector) grouped in files, and queries (terms text and vector)."""

    files: list[list[ChunkIn]]
    queries: list[tuple[str, bytes]]

    @property
    def chunks(self) -> int:
        return sum(len(f) for f in self.files)


def make_corpus(
    chunks: int, *, dims: int, words_per_chunk: int, chunks_per_file: int, queries: int, seed: int
) -> Corpus:
    """``chunks`` chunks of ``words_per_chunk`` words with random unit vectors, and ``queries`` queries:
    2-4 words of a random chunk (so full text finds it) with that chunk's vector slightly perturbed."""
    rng = random.Random(seed)
    vectors = unit_vectors(chunks, dims, seed)
    texts = [prose(rng, words_per_chunk) for _ in range(chunks)]
    files: list[list[ChunkIn]] = []
    for start in range(0, chunks, chunks_per_file):
        files.append(
            [
                ChunkIn(
                    index=i - start,
                    text=texts[i],
                    start_token=(i - start) * words_per_chunk,
                    end_token=(i - start + 1) * words_per_chunk,
                    vector=vectors[i].tobytes(),
                )
                for i in range(start, min(chunks, start + chunks_per_file))
            ]
        )
    return Corpus(files=files, queries=corpus_queries(files, queries, seed))


def corpus_queries(files: Sequence[Sequence[ChunkIn]], n: int, seed: int) -> list[tuple[str, bytes]]:
    """``n`` queries: 2-4 consecutive words of a random chunk (so full text finds it) with that
    chunk's vector slightly perturbed."""
    rng = random.Random(seed)
    chunks = [c for f in files for c in f]
    dims = len(chunks[0].vector) // 4
    noise = unit_vectors(n, dims, seed + 1)
    out: list[tuple[str, bytes]] = []
    for q in range(n):
        target = chunks[rng.randrange(len(chunks))]
        words = target.text.replace(".", "").split()
        at = rng.randrange(max(1, len(words) - 4))
        vec = np.frombuffer(target.vector, dtype=np.float32) + 0.5 * noise[q]
        out.append((" ".join(words[at : at + rng.randrange(2, 5)]), (vec / np.linalg.norm(vec)).tobytes()))
    return out


@dataclass(frozen=True, slots=True)
class IngestResult:
    megabytes: float
    files: int
    chunks: int
    seconds: float

    @property
    def chunks_per_s(self) -> float:
        return self.chunks / self.seconds if self.seconds else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.megabytes / self.seconds if self.seconds else 0.0


def text_files(megabytes: float, file_kb: int, seed: int) -> Sequence[bytes]:
    """Text files of about ``file_kb`` KiB each, ``megabytes`` MiB in all."""
    rng = random.Random(seed)
    total = int(megabytes * 2**20)
    out: list[bytes] = []
    made = 0
    while made < total:
        size = min(file_kb * 1024, total - made)
        body = prose(rng, max(1, size // 7)).encode()[:size]
        out.append(body)
        made += len(body)
    return out


def elapsed(start: float) -> float:
    return time.perf_counter() - start
