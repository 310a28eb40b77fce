"""Redaction quality and speed on the committed corpus.

    python -m router.redaction_bench [--corpus PATH] [--regions DE,FR,...] [--runs N]

Prints recall per type, format and country for structured identifiers (an item
counts only when every letter and digit of it is inside a redacted span), the
items left with a readable remainder (partly redacted), the share of clean
sentences altered and by which detector, what the structured detectors find of
the free-text items (names, birth dates, addresses), and p50/p99 time to
redact a ~4,000-token conversation.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from router.config import RedactionConfig
from router.free_text import FREE_TEXT_TYPES
from router.identifiers import Span
from router.redaction import Redactor
from router.redaction_corpus import CORPUS
from serving.protocol import ChatMessage, GenerationRequest

__all__ = ["ALL_REGIONS", "Score", "conversation", "load", "main", "score"]

ALL_REGIONS = ("DE", "FR", "NL", "BE", "IT", "ES", "PL", "GB", "IE", "AT", "US")
_CHARS_PER_TOKEN = 4
_PROSE = (
    "Thanks, I have looked at the case. The usual procedure is to confirm the request in writing, "
    "record who asked for what and when, and check that the legal basis for the processing is "
    "documented before anything is changed in the master data. If the customer disputes the charge, "
    "the complaint team opens a ticket and answers within the statutory period; in the meantime no "
    "reminder is sent. Please keep the original message attached to the file, summarise the outcome "
    "in plain language, and make sure that the reply does not repeat more personal details than the "
    "customer already gave. Let me know if you want me to draft the letter or the internal note. "
)


@dataclass
class Score:
    items: Counter[str] = field(default_factory=Counter)
    found: Counter[str] = field(default_factory=Counter)
    by_format: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    by_country: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    remainders: list[str] = field(default_factory=list)
    misses: list[str] = field(default_factory=list)
    clean: int = 0
    altered: list[str] = field(default_factory=list)
    altered_by: Counter[str] = field(default_factory=Counter)
    extra: Counter[str] = field(default_factory=Counter)
    free_items: Counter[str] = field(default_factory=Counter)
    free_found: Counter[str] = field(default_factory=Counter)

    @property
    def recall(self) -> float:
        return sum(self.found.values()) / max(1, sum(self.items.values()))

    @property
    def altered_rate(self) -> float:
        return len(self.altered) / max(1, self.clean)


def load(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _covered(text: str, start: int, end: int, spans: list[Span]) -> tuple[bool, bool]:
    """(all, any) of the item's letters and digits inside a span."""
    inside = [any(s <= i < e for s, e, _ in spans) for i in range(start, end) if text[i].isalnum()]
    return all(inside), any(inside)


def score(rows: list[dict[str, object]], redactor: Redactor) -> Score:
    result = Score()
    for row in rows:
        text = str(row["text"])
        spans = redactor.find(text)
        items = row["items"]
        assert isinstance(items, list)
        if row.get("clean"):
            result.clean += 1
            if spans:
                result.altered.append(text)
                result.altered_by.update(k for _, _, k in spans)
            continue
        for item in items:
            kind, start, end = str(item["type"]), int(item["start"]), int(item["end"])
            full, part = _covered(text, start, end, spans)
            if kind in FREE_TEXT_TYPES:
                result.free_items[kind] += 1
                result.free_found[kind] += full
                continue
            fmt, country = f"{kind}:{item['format']}", str(item["country"])
            result.items[kind] += 1
            result.by_format[fmt]["items"] += 1
            result.by_country[country]["items"] += 1
            if full:
                result.found[kind] += 1
                result.by_format[fmt]["found"] += 1
                result.by_country[country]["found"] += 1
            else:
                result.misses.append(f"{fmt} {country}: {text}")
                if part:
                    result.remainders.append(f"{fmt}: {text}")
        for s, e, k in spans:
            if not any(s < int(i["end"]) and int(i["start"]) < e for i in items):
                result.extra[k] += 1
    return result


def conversation(rows: list[dict[str, object]], *, dense: bool, tokens: int = 4000) -> GenerationRequest:
    """About ``tokens`` long: assistant turns of prose; user turns of four corpus sentences
    (``dense``), or of one sentence with personal data, one clean sentence and a paragraph."""
    messages: list[ChatMessage] = [ChatMessage(role="system", content="You are a careful assistant.")]
    pii = [r for r in rows if not r.get("clean")]
    clean = [r for r in rows if r.get("clean")]
    size, i = 0, 0
    while size < tokens * _CHARS_PER_TOKEN:
        if dense:
            user = " ".join(str(rows[(i * 7 + k * 13) % len(rows)]["text"]) for k in range(4))
        else:
            user = f"{pii[i * 7 % len(pii)]['text']} {clean[i * 5 % len(clean)]['text']} {_PROSE[:400]}"
        messages += [ChatMessage(role="user", content=user), ChatMessage(role="assistant", content=_PROSE)]
        size += len(user) + len(_PROSE)
        i += 1
    return GenerationRequest(request_id="bench", model="m", messages=tuple(messages))


def _timing(redactor: Redactor, request: GenerationRequest, runs: int) -> tuple[float, float, float, float]:
    """Wall-clock p50/p99 and CPU-time p50/p99 (the CPU time does not grow on a shared, busy host)."""
    for _ in range(5):
        redactor.redact(request)
    wall, cpu = [], []
    for _ in range(runs):
        t0, c0 = time.perf_counter(), time.thread_time()
        redactor.redact(request)
        wall.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.thread_time() - c0) * 1000)
    return (*_p50_p99(wall), *_p50_p99(cpu))


def _p50_p99(times: list[float]) -> tuple[float, float]:
    times = sorted(times)
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.99))]


def _pct(found: int, total: int) -> str:
    return f"{100 * found / max(1, total):6.2f}% ({found}/{total})"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corpus", type=Path, default=CORPUS)
    p.add_argument(
        "--regions", default=",".join(ALL_REGIONS), help="phone regions, comma-separated ('' for none)"
    )
    p.add_argument("--runs", type=int, default=300)
    p.add_argument("--show-misses", action="store_true")
    args = p.parse_args(argv)
    regions = tuple(r for r in args.regions.split(",") if r)
    redactor = Redactor(RedactionConfig(phone_regions=regions))
    rows = load(args.corpus)
    s = score(rows, redactor)
    print(f"corpus {args.corpus.name}: {len(rows)} sentences, phone regions {','.join(regions) or 'none'}")
    print(f"\nstructured identifiers: recall {_pct(sum(s.found.values()), sum(s.items.values()))}")
    for kind in sorted(s.items):
        print(f"  {kind:<12} {_pct(s.found[kind], s.items[kind])}")
    print("by format (below 100% only):")
    for fmt in sorted(s.by_format):
        c = s.by_format[fmt]
        if c["found"] < c["items"]:
            print(f"  {fmt:<28} {_pct(c['found'], c['items'])}")
    print(
        "by country: "
        + ", ".join(f"{k} {100 * c['found'] / c['items']:.1f}%" for k, c in sorted(s.by_country.items()))
    )
    print(f"readable remainders (partly redacted items): {len(s.remainders)}")
    print(f"\nclean sentences altered: {_pct(len(s.altered), s.clean)}; by detector: {dict(s.altered_by)}")
    print(f"spans on personal-data sentences outside any labelled item: {dict(s.extra)}")
    print(
        "\nfree text without the model-based detector: "
        + ", ".join(f"{k} {_pct(s.free_found[k], s.free_items[k])}" for k in sorted(s.free_items))
    )
    if args.show_misses:
        for line in [*s.misses, "-- altered:", *s.altered]:
            print("  " + line)
    load_avg = os.getloadavg()[0]
    print(f"\nredacting a conversation, {args.runs} runs, load {load_avg:.1f}, {os.cpu_count()} CPUs:")
    for dense in (False, True):
        request = conversation(rows, dense=dense)
        chars = sum(len(m.content or "") for m in request.messages or ())
        p50, p99, c50, c99 = _timing(redactor, request, args.runs)
        found = sum(redactor.redact(request).counts.values())
        print(
            f"  {'dense' if dense else 'typical'}: {chars} characters (~{chars // _CHARS_PER_TOKEN} tokens), "
            f"{len(request.messages or ())} messages, {found} values redacted"
            f"\n    wall p50 {p50:.2f} ms, p99 {p99:.2f} ms; CPU time p50 {c50:.2f} ms, p99 {c99:.2f} ms"
        )


if __name__ == "__main__":
    main()
