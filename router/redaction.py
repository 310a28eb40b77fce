"""Personal-data redaction before egress, and restoration in the answer.

Structured identifiers are found by ``router.identifiers`` (emails, IBANs,
payment cards, national ids, VAT ids, IP addresses: a loose pattern, kept only
when a validator agrees) and ``router.phones`` (phone numbers, for the tenant's
regions). Free text (names, birth dates, addresses, record numbers) is found
only when the tenant names a local model for it (``router.free_text``): its
answer, a list of the text's own words per entity, is turned into spans here.
A tenant's ``keep_patterns`` mark its own identifiers, which are never touched.

Every place a request can carry personal data is covered
(``router.redaction_fields``): each message role, message names, tool
definitions, assistant tool calls (names, and arguments with the JSON kept
valid), tool results, plain prompts. Values become typed placeholders
(``[EMAIL_1]``; in a function or message name, where brackets are not allowed,
``EMAIL_1``), the same value the same placeholder within one request. The
``Restorer`` puts the values back into the answer's text, its tool calls'
arguments (escaped for the JSON string they stand in) and function names. Anything that goes
wrong raises ``RedactionError``: the request is not sent out (fail closed).
Only counts by type leave this module, never the values.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence

import msgspec

from router.config import RedactionConfig
from router.free_text import FreeTextEntity
from router.identifiers import Span, find_identifiers, islands
from router.phones import PhoneDetector
from router.redaction_fields import Slot, rewrite, scanned, texts, tool_texts
from router.restorer import PLACEHOLDER, Restorer
from serving.errors import RedactionError
from serving.protocol import GenerationRequest

__all__ = ["Redaction", "Redactor", "Restorer", "request_texts"]

# What may stand between two words of one free-text entity ("Anna Schmidt", "Hauptstr. 5, Berlin").
_ENTITY_GAP = re.compile(r"[\s,.\-/]{1,3}")
_MASK = "\x00"
# Between the texts of one request when they are scanned together: characters no detector
# matches, longer than any context a detector reads around a candidate (an e-mail is looked for
# up to 255 characters after its "@"; digit islands are padded and joined within 114), and a
# line break last, which ends a label (router.identifiers.label_before).
_SEPARATOR = _MASK * 319 + "\n"
#: tool definitions remembered as clean, per tenant configuration (then forgotten all at once)
_CLEAN_TOOLS_MAX = 4096


def _digest(tool: dict[str, object]) -> bytes:
    return hashlib.blake2b(msgspec.json.encode(tool), digest_size=16).digest()


def request_texts(request: GenerationRequest, tools: list[list[str]] | None = None) -> list[str]:
    """Every distinct non-empty text of a request that redaction covers (``router.redaction_fields``)."""
    return [t for t in dict.fromkeys(texts(request, tools)) if t]


class Redaction(msgspec.Struct, frozen=True, kw_only=True):
    request: GenerationRequest
    counts: dict[str, int]
    #: placeholder -> original value; stays in memory for restoration only
    mapping: dict[str, str]
    #: redacted function name -> original name (only names that changed)
    names: dict[str, str] = {}

    def restorer(self) -> Restorer:
        # a JSON answer (response_format) gets its values back escaped, so it stays JSON
        return Restorer(self.mapping, self.names, json=self.request.response_format is not None)


class Redactor:
    """The detectors of one tenant's configuration; ``redact`` builds a fresh placeholder table
    per request."""

    def __init__(self, config: RedactionConfig | None = None) -> None:
        config = config or RedactionConfig()
        self.config = config
        self._phones = PhoneDetector(config.phone_regions)
        self._keep = (
            re.compile("|".join(f"(?:{p})" for p in config.keep_patterns)) if config.keep_patterns else None
        )
        #: digests of tool definitions found to hold nothing to redact (an app sends the same ones
        #: with every request): they are not scanned again. Digests only, never the texts.
        self._clean_tools: dict[bytes, None] = {}

    def redact(self, request: GenerationRequest, entities: Sequence[FreeTextEntity] = ()) -> Redaction:
        """Redact ``request``; ``entities`` are what the free-text model found in its texts."""
        try:
            return self._redact(request, _FreeText(entities))
        except RedactionError:
            raise
        except Exception as exc:
            raise RedactionError(
                f"redaction failed ({type(exc).__name__}); the request was not sent out",
                reason="redaction-failed",
            ) from None

    def find(
        self, text: str, *, memo: dict[str, bool] | None = None, free_text: _FreeText | None = None
    ) -> list[Span]:
        """Non-overlapping detected spans, earlier detectors winning overlaps."""
        masked = text
        if self._keep is not None:
            masked = _masked(
                text, [(m.start(), m.end()) for m in self._keep.finditer(text) if m.end() > m.start()]
            )
        ranges = islands(masked)
        taken = find_identifiers(masked, ranges)
        # Phones, then free text, only see what nothing more specific claimed.
        rest = _masked(masked, [(s, e) for s, e, _ in taken]) if taken else masked
        taken.extend(self._phones.find(rest, ranges, memo))
        if free_text is not None and free_text.pattern is not None:
            rest = _masked(masked, [(s, e) for s, e, _ in taken]) if taken else masked
            taken.extend(free_text.find(rest))
        taken.sort()
        return taken

    def _redact(self, request: GenerationRequest, free_text: _FreeText) -> Redaction:
        # Each distinct text is scanned once (a tool schema repeats "string", "type", ...). Without
        # free-text words, what is found in a text depends on the text alone: a tool definition
        # found clean before is skipped.
        digests = [_digest(t) for t in request.tools or ()] if free_text.pattern is None else []
        per_tool = tool_texts(request, {i for i, d in enumerate(digests) if d in self._clean_tools})
        unique = request_texts(request, per_tool)
        found = dict(zip(unique, self._spans(unique, free_text), strict=True))
        table = _Table(unique)
        self._remember_clean(digests, per_tool, found)

        def replace(text: str, slot: Slot) -> str:
            key = scanned(text, slot)
            spans = found.get(key)
            if spans is None:  # never expected: scan it rather than let it out unscanned
                spans = found[key] = self.find(key, free_text=free_text)
            if not spans:
                return text
            if slot == "text":
                return _replaced(text, spans, table.placeholder)
            redacted = _replaced(text, spans, table.name_placeholder)
            table.names[redacted] = text
            return redacted

        hits = {text for text, spans in found.items() if spans}
        redacted = rewrite(request, replace, hits, per_tool) if hits else request
        return Redaction(
            request=redacted, counts=dict(table.counts), mapping=table.mapping, names=table.names
        )

    def _remember_clean(
        self, digests: list[bytes], per_tool: list[list[str]], found: dict[str, list[Span]]
    ) -> None:
        """Note the tool definitions scanned now that hold nothing to redact (nor a placeholder
        written literally, which a later request's table must see)."""
        for digest, read in zip(digests, per_tool, strict=False):
            if digest in self._clean_tools or any(found.get(t) for t in read):
                continue
            if any(PLACEHOLDER.search(t) for t in read):
                continue
            if len(self._clean_tools) >= _CLEAN_TOOLS_MAX:
                self._clean_tools.clear()
            self._clean_tools[digest] = None

    def _spans(self, texts: list[str], free_text: _FreeText) -> list[list[Span]]:
        """Each text's spans, in order; one ``memo`` for the request."""
        memo: dict[str, bool] = {}
        if self._keep is not None or free_text.pattern is not None or len(texts) < 2:
            return [self.find(text, memo=memo, free_text=free_text) for text in texts]
        # One pass over all texts: detection costs mostly per text and per detector, not per
        # character. _SEPARATOR keeps each text's findings what they are alone (a tenant's keep
        # patterns or a free-text model's words could reach across it: those go text by text).
        ends: list[int] = []
        end = -len(_SEPARATOR)
        for text in texts:
            end += len(_SEPARATOR) + len(text)
            ends.append(end)
        spans: list[list[Span]] = [[] for _ in texts]
        i = 0
        for start, stop, kind in self.find(_SEPARATOR.join(texts), memo=memo):
            while start >= ends[i]:
                i += 1
            offset = ends[i] - len(texts[i])
            spans[i].append((start - offset, stop - offset, kind))
        return spans


def _replaced(text: str, spans: list[Span], placeholder: Callable[[str, str], str]) -> str:
    out: list[str] = []
    last = 0
    for start, end, kind in spans:
        out.append(text[last:start])
        out.append(placeholder(kind, text[start:end]))
        last = end
    out.append(text[last:])
    return "".join(out)


class _Table:
    """Placeholders of one request; skips numbers already written literally in the input."""

    def __init__(self, texts: list[str]) -> None:
        self.mapping: dict[str, str] = {}
        self.names: dict[str, str] = {}
        self.counts: dict[str, int] = {}
        self._by_value: dict[tuple[str, str], str] = {}
        self._next: dict[str, int] = {}
        self._literal = {p.group(0) for t in texts for p in PLACEHOLDER.finditer(t)}

    def name_placeholder(self, kind: str, value: str) -> str:
        """The placeholder without its brackets, for names that allow only ``[a-zA-Z0-9_-]``."""
        return self.placeholder(kind, value)[1:-1]

    def placeholder(self, kind: str, value: str) -> str:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        key = (kind, value)
        found = self._by_value.get(key)
        if found is not None:
            return found
        n = self._next.get(kind, 0)
        while True:
            n += 1
            token = f"[{kind}_{n}]"
            if token not in self._literal:
                break
        self._next[kind] = n
        self._by_value[key] = token
        self.mapping[token] = value
        return token


def _masked(text: str, spans: Sequence[tuple[int, int]]) -> str:
    """``text`` with ``spans`` overwritten by a character no detector matches (offsets kept)."""
    out: list[str] = []
    last = 0
    for start, end in sorted(spans):
        if start < last:
            start = last
        out.append(text[last:start])
        out.append(_MASK * max(0, end - start))
        last = max(last, end)
    out.append(text[last:])
    return "".join(out)


class _FreeText:
    """Spans of the words a free-text model named, adjacent words of one type merged."""

    def __init__(self, entities: Sequence[FreeTextEntity]) -> None:
        self._kind: dict[str, str] = {}
        for entity in entities:
            for word in entity.words:
                if word.strip() and not PLACEHOLDER.fullmatch(word):
                    self._kind.setdefault(word, entity.type)
        words = sorted(self._kind, key=len, reverse=True)
        self.pattern = (
            re.compile(r"(?<!\w)(?:" + "|".join(re.escape(w) for w in words) + r")(?!\w)") if words else None
        )

    def find(self, text: str) -> list[Span]:
        if self.pattern is None:
            return []
        spans: list[Span] = []
        for m in self.pattern.finditer(text):
            kind = self._kind[m.group(0)]
            if spans and spans[-1][2] == kind and _ENTITY_GAP.fullmatch(text, spans[-1][1], m.start()):
                spans[-1] = (spans[-1][0], m.end(), kind)
            else:
                spans.append((m.start(), m.end(), kind))
        return spans
