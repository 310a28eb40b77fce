"""Personal-data redaction before egress, and restoration in the answer.

Candidates are found with loose patterns and kept only when a library
validates them: ``email-validator`` (emails), ``phonenumbers`` (phone numbers),
``python-stdnum`` (IBANs, Luhn for payment cards, US SSN, Spanish DNI, Italian
codice fiscale, German IdNr, French NIR, EU VAT numbers) and ``ipaddress``.
Every message role is covered, with assistant tool-call arguments and tool
results, and plain prompts. Values become typed placeholders (``[EMAIL_1]``),
the same value the same placeholder within one request. Anything that goes
wrong raises ``RedactionError``: the request is not sent out (fail closed).
Only counts by type leave this module, never the values.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator

import msgspec
import phonenumbers
from email_validator import EmailNotValidError, validate_email
from stdnum import iban, luhn
from stdnum.de import idnr
from stdnum.es import dni
from stdnum.eu import vat
from stdnum.fr import nir
from stdnum.it import codicefiscale
from stdnum.us import ssn

from serving.errors import RedactionError
from serving.protocol import ChatMessage, FunctionCall, GenerationRequest, ToolCall

__all__ = ["Redaction", "Redactor", "Restorer"]

_Span = tuple[int, int, str]  # start, end, type
# Fewer digits than this cannot be a phone number anywhere (a cheap gate for the slow matcher).
_MIN_PHONE_DIGITS = 4
_DIGIT = re.compile(r"\d")
# A run of digits with the separators phone numbers are written with, optionally after + or (.
_PHONE_RUN = re.compile(r"(?<![\w+])(?:\+|\(\+?)?\d[\d \t().\-/]{2,24}\d(?!\w)")
_PLACEHOLDER = re.compile(r"\[([A-Z]+(?:_[A-Z]+)*)_(\d+)\]")


def _email(text: str) -> Iterator[_Span]:
    for m in re.finditer(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}", text):
        try:
            validate_email(m.group(0), check_deliverability=False)
        except EmailNotValidError:
            continue
        yield m.start(), m.end(), "EMAIL"


def _shrinking(
    pattern: re.Pattern[str], valid: Callable[[str], bool], kind: str
) -> Callable[[str], Iterator[_Span]]:
    """Matches of ``pattern`` that ``valid`` accepts, dropping trailing words until one does."""

    def detect(text: str) -> Iterator[_Span]:
        for m in pattern.finditer(text):
            start, end = m.start(), m.end()
            while end > start:
                if valid(text[start:end]):
                    yield start, end, kind
                    break
                cut = text.rfind(" ", start, end)
                if cut <= start:
                    break
                end = cut

    return detect


def _card(value: str) -> bool:
    digits = re.sub(r"[ -]", "", value)
    return 13 <= len(digits) <= 19 and luhn.is_valid(digits)


_DETECTORS: tuple[Callable[[str], Iterator[_Span]], ...] = (
    _email,
    _shrinking(re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{1,4}){3,8}\b"), iban.is_valid, "IBAN"),
    _shrinking(re.compile(r"\b\d(?:[ -]?\d){12,18}\b"), _card, "CARD"),
    _shrinking(re.compile(r"\b\d{3}-\d{2}-\d{4}\b"), ssn.is_valid, "NATIONAL_ID"),
    _shrinking(re.compile(r"\b\d{8}-?[A-Z]\b"), dni.is_valid, "NATIONAL_ID"),
    _shrinking(
        re.compile(r"\b[A-Z]{6}\d{2}[A-Z]\d{2}[A-Z]\d{3}[A-Z]\b"), codicefiscale.is_valid, "NATIONAL_ID"
    ),
    _shrinking(re.compile(r"\b\d{2} ?\d{3} ?\d{3} ?\d{3}\b"), idnr.is_valid, "NATIONAL_ID"),
    _shrinking(
        re.compile(r"\b[12] ?\d{2} ?\d{2} ?(?:\d{2}|2[AB]) ?\d{3} ?\d{3} ?\d{2}\b"),
        nir.is_valid,
        "NATIONAL_ID",
    ),
    _shrinking(
        re.compile(
            r"\b(?:AT|BE|BG|CY|CZ|DE|DK|EE|EL|ES|FI|FR|HR|HU|IE|IT|LT|LU|LV|MT|NL|PL|PT|RO|SE|SI|SK)"
            r" ?[0-9A-Z]{8,12}\b"
        ),
        vat.is_valid,
        "VAT_ID",
    ),
    _shrinking(re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?!\.?\d)"), lambda v: _is_ip(v), "IP_ADDRESS"),
    _shrinking(
        re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])"),
        lambda v: _is_ip(v),
        "IP_ADDRESS",
    ),
)


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


class Restorer:
    """Puts original values back into an answer, also across delta boundaries."""

    def __init__(self, mapping: dict[str, str]) -> None:
        self._mapping = mapping
        self._longest = max((len(p) for p in mapping), default=0)
        self._pending = ""

    def restore(self, text: str) -> str:
        if not self._mapping or "[" not in text:
            return text
        return _PLACEHOLDER.sub(lambda m: self._mapping.get(m.group(0), m.group(0)), text)

    def feed(self, text: str) -> str:
        """Restored text that is safe to emit now; a possible placeholder prefix is held back."""
        if not self._mapping:
            return text
        buffer = self._pending + text
        cut = buffer.rfind("[")
        if (
            cut != -1
            and "]" not in buffer[cut:]
            and len(buffer) - cut < self._longest
            and (re.fullmatch(r"\[[A-Z_]*\d*", buffer[cut:]))
        ):
            self._pending = buffer[cut:]
            buffer = buffer[:cut]
        else:
            self._pending = ""
        return self.restore(buffer)

    def flush(self) -> str:
        rest, self._pending = self._pending, ""
        return self.restore(rest)


class Redaction(msgspec.Struct, frozen=True, kw_only=True):
    request: GenerationRequest
    counts: dict[str, int]
    #: placeholder -> original value; stays in memory for restoration only
    mapping: dict[str, str]

    def restorer(self) -> Restorer:
        return Restorer(self.mapping)


class Redactor:
    """Stateless detector set; ``redact`` builds a fresh placeholder table per request."""

    def __init__(self, *, phone_region: str = "US") -> None:
        self._region = phone_region

    def redact(self, request: GenerationRequest) -> Redaction:
        try:
            return self._redact(request)
        except RedactionError:
            raise
        except Exception as exc:
            raise RedactionError(
                f"redaction failed ({type(exc).__name__}); the request was not sent out",
                reason="redaction-failed",
            ) from None

    def find(self, text: str) -> list[_Span]:
        """Non-overlapping detected spans, earlier detectors winning overlaps."""
        taken: list[_Span] = []
        # Every detector but email needs digits: prose without any skips them all.
        detectors = _DETECTORS if _DIGIT.search(text) else _DETECTORS[:1]
        if "@" not in text:
            detectors = detectors[1:]
        for detect in detectors:
            for span in detect(text):
                if all(span[1] <= t[0] or span[0] >= t[1] for t in taken):
                    taken.append(span)
        if len(_DIGIT.findall(text)) >= _MIN_PHONE_DIGITS:
            # The phone matcher is the slowest detector: it only sees text nothing else claimed.
            masked = text
            for start, end, _ in taken:
                masked = masked[:start] + " " * (end - start) + masked[end:]
            taken.extend(self._phones(masked))
        taken.sort()
        return taken

    def _phones(self, text: str) -> Iterator[_Span]:
        # The matcher is slow on long texts with scattered digits: hand it only phone-shaped runs.
        for run in _PHONE_RUN.finditer(text):
            offset = run.start()
            matcher = phonenumbers.PhoneNumberMatcher(
                run.group(), self._region, leniency=phonenumbers.Leniency.VALID
            )
            for m in matcher:
                yield offset + m.start, offset + m.end, "PHONE"

    def _redact(self, request: GenerationRequest) -> Redaction:
        table = _Table(request)
        messages = None
        if request.messages is not None:
            messages = tuple(self._message(m, table) for m in request.messages)
        prompt = None if request.prompt is None else self._text(request.prompt, table)
        redacted = msgspec.structs.replace(request, messages=messages, prompt=prompt)
        return Redaction(request=redacted, counts=dict(table.counts), mapping=table.mapping)

    def _message(self, message: ChatMessage, table: _Table) -> ChatMessage:
        content = None if message.content is None else self._text(message.content, table)
        calls = message.tool_calls
        if calls:
            calls = tuple(
                ToolCall(
                    id=c.id,
                    type=c.type,
                    function=FunctionCall(
                        name=c.function.name, arguments=self._text(c.function.arguments, table)
                    ),
                )
                for c in calls
            )
        return msgspec.structs.replace(message, content=content, tool_calls=calls)

    def _text(self, text: str, table: _Table) -> str:
        spans = self.find(text)
        if not spans:
            return text
        out: list[str] = []
        last = 0
        for start, end, kind in spans:
            out.append(text[last:start])
            out.append(table.placeholder(kind, text[start:end]))
            last = end
        out.append(text[last:])
        return "".join(out)


class _Table:
    """Placeholders of one request; skips numbers already written literally in the input."""

    def __init__(self, request: GenerationRequest) -> None:
        self.mapping: dict[str, str] = {}
        self.counts: dict[str, int] = {}
        self._by_value: dict[tuple[str, str], str] = {}
        self._next: dict[str, int] = {}
        texts = [request.prompt or ""]
        for m in request.messages or ():
            texts.append(m.content or "")
            texts.extend(c.function.arguments for c in m.tool_calls or ())
        self._literal = {p.group(0) for t in texts for p in _PLACEHOLDER.finditer(t)}

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
