"""Structured personal identifiers: loose candidate patterns, kept only when a validator agrees.

Each detector finds candidates with a pattern and keeps those that pass the
type's own check (check digits with python-stdnum, email-validator, ``ipaddress``).
Where a check digit cannot decide, context does: a payment card needs a known
issuer range and length; a number labelled as an order, invoice, transaction or
case number is not a card or a national id; a dotted quad after "version" is
not an IP address; a bare nine-digit number is an SSN or a BSN only after its
label. ``find_identifiers`` returns candidate spans, most specific detector
first; the caller resolves overlaps in that order. Phone numbers live in
``router.phones``.
"""

from __future__ import annotations

import ipaddress
import re
from bisect import bisect_left, insort
from collections.abc import Callable, Iterable, Iterator
from importlib import import_module, resources

from email_validator import EmailNotValidError, validate_email
from stdnum import ean, iban, isbn, luhn, numdb
from stdnum.be import nn
from stdnum.de import idnr
from stdnum.es import dni, nie
from stdnum.eu import vat
from stdnum.fr import nir
from stdnum.gb import nhs
from stdnum.it import codicefiscale
from stdnum.nl import bsn
from stdnum.pl import pesel
from stdnum.us import ssn

__all__ = [
    "Ranges",
    "Runs",
    "Span",
    "digit_runs",
    "find_identifiers",
    "islands",
    "label_before",
    "not_personal_label",
    "scan",
    "scan_runs",
]

Span = tuple[int, int, str]  # start, end, type

# Unicode letters and digits, and the other characters RFC 5322 allows unquoted in a local part.
_EMAIL = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,}")
_AT = re.compile("@")
_LOCAL_MAX = 64
_DOMAIN_MAX = 255
_LABEL_WINDOW = 40
Ranges = list[tuple[int, int]]
Runs = list[tuple[int, int, int]]  # start, end with room for lookaheads, length of the run
# Labels of numbers that identify things, not people (EN, DE, FR, NL, ES, IT, PL).
_NOT_PERSONAL = re.compile(
    r"\b(?:order|invoice|ref|reference|ticket|case|tracking|transaction|txn|batch|serial|sku|"
    r"article|isbn|ean|gtin|barcode|product|versi|wersj|build|release|firmware|update|upgrade|patch|"
    r"bestell|auftrag|rechnung|vorgang|aktenzeichen|az|referenz|artikel|sendung|transaktion|"
    r"seriennummer|produkt|"
    r"commande|facture|dossier|référence|réf|suivi|colis|série|produit|"
    r"bestelling|factuur|zaak|referentie|kenmerk|transactie|zending|"
    r"pedido|factura|expediente|referencia|transacción|envío|lote|artículo|producto|"
    r"ordine|fattura|pratica|riferimento|rif|transazione|spedizione|lotto|articolo|prodotto|"
    r"zamówieni|faktur|sprawa|sprawy|sygnatur|referencj|transakcj|przesyłk|partia|produkt)|->|→",
)
_LABEL_WORDS = 3
_COUNTRY_CODE = re.compile(r"(?:\+|\b00)\d{1,3}[ .-]?\(?$")
_DIGIT_OR_CLAUSE = re.compile(r"[\d,;!?\n]")


_Detector = Callable[[str, "_Scope"], Iterator[Span]]


def label_before(text: str, start: int) -> str:
    """The words between the previous number (or clause break) and ``start``, lower-cased."""
    window = text[max(0, start - _LABEL_WINDOW) : start]
    breaks = [m.end() for m in _DIGIT_OR_CLAUSE.finditer(window)]
    if breaks:
        window = window[breaks[-1] :]
    return " ".join(window.split()[-_LABEL_WORDS:]).lower()


def not_personal_label(text: str, start: int) -> bool:
    """Whether the candidate at ``start`` is labelled as an order, invoice, product, ... number."""
    return _NOT_PERSONAL.search(label_before(text, start)) is not None


def _email(text: str) -> Iterator[Span]:
    # Scan only around each "@": a scan of the whole text costs more than all the checks.
    last = 0
    for at in _AT.finditer(text):
        if at.start() < last:
            continue
        m = _EMAIL.search(text, max(last, at.start() - _LOCAL_MAX), at.start() + _DOMAIN_MAX)
        if m is None:
            continue
        last = m.end()
        start, value = m.start(), m.group(0)
        # Quotes and dots that open a local part are the sentence's, not the address's.
        trimmed = value.lstrip("'`.{|}~-")
        start += len(value) - len(trimmed)
        try:
            validate_email(trimmed, check_deliverability=False)
        except EmailNotValidError:
            continue
        yield start, m.end(), "EMAIL"


def _shrinking(
    pattern: str, valid: Callable[[str], bool], kind: str, flags: int = 0, *, run: int = 0
) -> _Detector:
    """Matches of ``pattern`` that ``valid`` accepts, dropping trailing groups until one does;
    ``run``: see ``_Scope.scan``."""
    compiled = re.compile(pattern, flags)

    def detect(text: str, scope: _Scope) -> Iterator[Span]:
        for m in scope.scan(compiled, text, run):
            start, end = m.start(), m.end()
            while end > start:
                if valid(text[start:end]):
                    yield start, end, kind
                    break
                cut = max(text.rfind(" ", start, end), text.rfind("-", start, end))
                if cut <= start:
                    break
                end = cut

    return detect


def _labelled(
    pattern: str, valid: Callable[[str], bool], label: str, kind: str, *, run: int, vetoed: bool = True
) -> _Detector:
    """Candidates that pass ``valid``; those matching ``label`` need it just before them,
    and none may carry a not-personal label when ``vetoed``; ``run``: see ``_Scope.scan``."""
    compiled = re.compile(pattern)
    needs = re.compile(label)

    def detect(text: str, scope: _Scope) -> Iterator[Span]:
        for m in scope.scan(compiled, text, run):
            value = m.group(0)
            if not valid(value):
                continue
            if vetoed and not_personal_label(text, m.start()):
                continue
            if _COUNTRY_CODE.search(text, max(0, m.start() - 6), m.start()):
                continue  # the rest of an international phone number: +1 415 555 2671
            if m.lastgroup == "bare" and not needs.search(label_before(text, m.start())):
                continue
            yield m.start(), m.end(), kind

    return detect


def _digits(value: str) -> str:
    return re.sub(r"\D", "", value)


def _issuer(d: str) -> bool:
    """A known payment card issuer range with one of its lengths."""
    n, p2, p3, p4 = len(d), int(d[:2]), int(d[:3]), int(d[:4])
    if d[0] == "4":  # Visa (13-digit cards are no longer issued; a 40-44 EAN-13 is not one)
        return n in (16, 19)
    if 51 <= p2 <= 55 or 2221 <= p4 <= 2720:  # Mastercard
        return n == 16
    if p2 in (34, 37):  # American Express
        return n == 15
    if p4 == 6011 or 644 <= p3 <= 649 or p2 == 65:  # Discover
        return 16 <= n <= 19
    if 3528 <= p4 <= 3589:  # JCB
        return 16 <= n <= 19
    if p2 in (36, 38, 39) or 300 <= p3 <= 305:  # Diners Club
        return 14 <= n <= 19
    if p2 == 62:  # UnionPay
        return 16 <= n <= 19
    if p2 == 50 or 56 <= p2 <= 69:  # Maestro
        return 16 <= n <= 19
    return False


def _luhn(digits: str) -> bool:
    total = 0
    for i, c in enumerate(reversed(digits)):
        n = ord(c) - 48
        if i % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def _card(value: str) -> bool:
    d = _digits(value)
    # Our own Luhn first: it rejects nine in ten candidates at a fraction of stdnum's cost, and on
    # ASCII digits it is stdnum's; of the EAN lengths (8, 12, 13, 14) a card can only have 14.
    return (
        14 <= len(d) <= 19
        and _issuer(d)
        and _luhn(d)
        and (d.isascii() or luhn.is_valid(d))
        and not (_may_be(d, 14) and ean.is_valid(d))
    )


def _may_be(digits: str, *lengths: int) -> bool:
    """Whether stdnum could accept ``digits`` as a number of one of ``lengths``: on ASCII digits
    (which its cleaning leaves as they are) only at those lengths."""
    return len(digits) in lengths or not digits.isascii()


def _weighted(digits: str, weights: Iterable[int]) -> int:
    return sum(w * (ord(c) - 48) for w, c in zip(weights, digits, strict=True))


def _nn(digits: str) -> bool:
    """Belgian national number: its mod 97 check (born before or after 2000) before stdnum's."""
    if digits.isascii() and digits.isdigit() and len(digits) == 11:
        base, check = int(digits[:9]), int(digits[9:])
        if 97 - base % 97 != check and 97 - (2_000_000_000 + base) % 97 != check:
            return False
    return nn.is_valid(digits)


def _nhs(digits: str) -> bool:
    """UK NHS number: its mod 11 check before stdnum's."""
    if digits.isascii() and digits.isdigit() and len(digits) == 10:
        if _weighted(digits, range(10, 0, -1)) % 11:
            return False
    return nhs.is_valid(digits)


def _bsn(digits: str) -> bool:
    """Dutch BSN: its eleven-test before stdnum's."""
    if digits.isascii() and digits.isdigit() and len(digits) == 9:
        if (_weighted(digits[:8], range(9, 1, -1)) - (ord(digits[8]) - 48)) % 11:
            return False
    return bsn.is_valid(digits)


_CARD_RUN = re.compile(r"(?<![\w.,-])\d(?:[ -]?\d){13,18}(?![\w]|[.,-]\d)")


def _cards(text: str, scope: _Scope) -> Iterator[Span]:
    for m in scope.scan(_CARD_RUN, text, 14):
        start, end = m.start(), m.end()
        while end > start:
            value = text[start:end]
            if _card(value):
                digits = _digits(value)
                if not not_personal_label(text, m.start()) and not (
                    _may_be(digits, 10, 13) and isbn.is_valid(digits)
                ):
                    yield start, end, "CARD"
                break
            cut = max(text.rfind(" ", start, end), text.rfind("-", start, end))
            if cut <= start:
                break
            end = cut


_IBAN_NOISE = re.compile(r"[ -]")


def _bban_patterns() -> dict[str, re.Pattern[str] | Callable[[str], bool]]:
    """Each IBAN country's BBAN structure from python-stdnum's registry (``4!n4!n12!c``) as one
    pattern, converted the way stdnum converts it; for a country with a national check of its own
    (BE, ES, ME, NO), that module's ``is_valid``, which runs stdnum's generic checks too."""
    own = {
        d.name.rstrip("_").upper(): import_module(f"stdnum.{d.name}.iban").is_valid
        for d in resources.files("stdnum").iterdir()
        if d.joinpath("iban.py").is_file()
    }
    props: dict[str, dict[str, str]] = {}
    for length, low, high, found, _ in numdb.get("iban").prefixes:
        if length != 2 or low != high:
            return {}  # not keyed by country alone: stdnum decides every number
        props.setdefault(low, {}).update(found)
    shape = {"n": "[0-9]", "a": "[A-Z]", "c": "[A-Za-z0-9]"}
    return {
        cc: own[cc]
        if cc in own
        else re.compile(_BBAN_PART.sub(lambda m: f"{shape[m.group(2)]}{{{m.group(1)}}}", p.get("bban", "")))
        for cc, p in props.items()
    }


# A letter as its ISO 13616 number (A = 10 ... Z = 35).
_BASE36 = {ord(c): str(n) for n, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZ", 10)}
_BBAN_PART = re.compile(r"([1-9][0-9]*)!([nac])")
_BBAN = _bban_patterns()


def _iban(value: str) -> bool:
    compact = _IBAN_NOISE.sub("", value).upper()
    if not 15 <= len(compact) <= 34 or not compact.isalnum():
        return False
    # ISO 13616 mod 97, then the country's BBAN structure: python-stdnum's checks, without its
    # per-call registry lookup and pattern building (most of the detector's time).
    rearranged = compact[4:] + compact[:4]
    if int(rearranged.translate(_BASE36)) % 97 != 1:
        return False
    if not _BBAN:
        return iban.is_valid(compact)
    if compact[:2] not in _BBAN:
        return False
    check = _BBAN[compact[:2]]
    if isinstance(check, re.Pattern):
        return check.fullmatch(compact[4:]) is not None
    return check(compact)


def _codice_fiscale(value: str) -> bool:
    return codicefiscale.is_valid(value.upper())


def _nie(value: str) -> bool:
    return nie.is_valid(value.upper())


def _dni(value: str) -> bool:
    return dni.is_valid(value.upper().replace(".", ""))


# UK National Insurance number: two prefix letters (D, F, I, Q, U, V never; O never second;
# BG, GB, KN, NK, NT, TN, ZZ never issued), six digits, suffix A-D.
_NINO = re.compile(
    r"(?<![\w])(?!BG|GB|KN|NK|NT|TN|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D](?!\w)",
    re.IGNORECASE,
)


def _ninos(text: str, scope: _Scope) -> Iterator[Span]:
    for m in scope.scan(_NINO, text):
        value = m.group(0)
        if value.upper() == value or value.lower() == value:  # not an accidental mixed-case word
            yield m.start(), m.end(), "NATIONAL_ID"


def _is_ipv6(value: str) -> bool:
    # What ip_address accepts of a text with colons (never an IPv4 address), without the failing
    # IPv4 attempt.
    try:
        ipaddress.IPv6Address(value)
    except ValueError:
        return False
    return True


_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\.?\w)")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")


def _is_ipv4(value: str) -> bool:
    # What ip_address accepts of a dotted quad, without its failed IPv6 attempt.
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return False
    return True


def _ips(text: str, scope: _Scope) -> Iterator[Span]:
    for m in scope.scan(_IPV4, text, 7):
        if _is_ipv4(m.group(0)) and not not_personal_label(text, m.start()):
            yield m.start(), m.end(), "IP_ADDRESS"
    if ":" in text:
        for m in scope.scan(_IPV6, text):
            if _is_ipv6(m.group(0)) and m.group(0).count(":") >= 2 and any(c.isalnum() for c in m.group(0)):
                yield m.start(), m.end(), "IP_ADDRESS"


_SEP = r"[ .\-/]?"
_EDGE_L = r"(?<![\w.,/-])"
_EDGE_R = r"(?![\w]|[.,/-]\w)"

# Most specific first (after emails): an overlap goes to the earlier detector.
_DETECTORS: tuple[_Detector, ...] = (
    _shrinking(r"\b[A-Za-z]{2}\d{2}(?:[ -]?[A-Za-z0-9]{1,4}){3,8}\b", _iban, "IBAN"),
    _shrinking(
        r"\b[A-Za-z]{6}[0-9LMNP-V]{2}[A-Za-z][0-9LMNP-V]{2}[A-Za-z][0-9LMNP-V]{3}[A-Za-z]\b",
        _codice_fiscale,
        "NATIONAL_ID",
        re.IGNORECASE,
    ),
    _shrinking(r"\b[XYZxyz][ -]?\d{7}[ -]?[A-Za-z]\b", _nie, "NATIONAL_ID"),
    _shrinking(r"(?<![\w.])\d{2}\.?\d{3}\.?\d{3}[ -]?[A-Za-z]\b", _dni, "NATIONAL_ID", run=8),
    _ninos,
    # Belgian national number: YY.MM.DD-SSS.CC and its looser writings.
    _labelled(
        _EDGE_L + r"\d{2}\.?\d{2}\.?\d{2}[ -]?\d{3}[ .-]?\d{2}" + _EDGE_R,
        lambda v: _nn(_digits(v)),
        "",
        "NATIONAL_ID",
        run=11,
    ),
    # French NIR (sécurité sociale), 15 characters with its key.
    _shrinking(r"\b[12] ?\d{2} ?\d{2} ?(?:\d{2}|2[AB]) ?\d{3} ?\d{3} ?\d{2}\b", nir.is_valid, "NATIONAL_ID"),
    # Polish PESEL: eleven digits with a birth date and a check digit.
    _labelled(_EDGE_L + r"\d{11}" + _EDGE_R, lambda v: pesel.is_valid(v), "", "NATIONAL_ID", run=11),
    # German tax id (IdNr).
    _labelled(
        _EDGE_L + r"\d{2} ?\d{3} ?\d{3} ?\d{3}" + _EDGE_R,
        lambda v: idnr.is_valid(_digits(v)),
        "",
        "NATIONAL_ID",
        run=11,
    ),
    # UK NHS number 3-3-4; ten bare digits only after "NHS".
    _labelled(
        _EDGE_L + r"(?:\d{3}[ -]\d{3}[ -]\d{4}|(?P<bare>\d{10}))" + _EDGE_R,
        lambda v: _nhs(_digits(v)),
        r"\bnhs\b",
        "NATIONAL_ID",
        run=10,
    ),
    # Dutch BSN: 4-2-3 or 3-3-3 grouped; nine bare digits only after its label.
    _labelled(
        _EDGE_L
        + r"(?:\d{4}\.\d{2}\.\d{3}|\d{3}[ .]\d{3}[ .]\d{3}|\d{4} \d{2} \d{3}|(?P<bare>\d{9}))"
        + _EDGE_R,
        lambda v: _bsn(_digits(v)),
        r"\b(?:bsn|burgerservice|sofi|citizen service)",
        "NATIONAL_ID",
        run=9,
    ),
    # US SSN: 3-2-4 with dashes or spaces; nine bare digits only after its label.
    _labelled(
        _EDGE_L + r"(?:\d{3}-\d{2}-\d{4}|\d{3} \d{2} \d{4}|(?P<bare>\d{9}))" + _EDGE_R,
        lambda v: ssn.is_valid(_digits(v)),
        r"\b(?:ssn|social security|ss#)",
        "NATIONAL_ID",
        run=9,
    ),
    _cards,
    _shrinking(
        r"\b(?:AT|BE|BG|CY|CZ|DE|DK|EE|EL|ES|FI|FR|HR|HU|IE|IT|LT|LU|LV|MT|NL|PL|PT|RO|SE|SI|SK)"
        r" ?[0-9A-Z]{8,12}\b",
        vat.is_valid,
        "VAT_ID",
    ),
    _ips,
)
# Digits with what may separate them inside one identifier; every detector but email needs one.
_ISLAND = re.compile(r"\d[\d .,:/()\-]*")
# Letters an identifier may have before its first digit (codice fiscale: 6; an IPv6 group: 4)
# and after its last (an IBAN: up to 30 letters and digits; codice fiscale, NINO, DNI: 1).
_BEFORE = 16
_AFTER = 34
_JOIN = 64


def islands(text: str) -> Ranges:
    """Where identifiers with digits can be: digit runs padded and merged, in order."""
    ranges: Ranges = []
    for m in _ISLAND.finditer(text):
        start, end = max(0, m.start() - _BEFORE), min(len(text), m.end() + _AFTER)
        if ranges and start <= ranges[-1][1] + _JOIN:
            ranges[-1] = (ranges[-1][0], end)
        else:
            ranges.append((start, end))
    return ranges


def scan(pattern: re.Pattern[str], text: str, ranges: Ranges) -> list[re.Match[str]]:
    """Matches of ``pattern`` within ``ranges``."""
    # finditer(text, pos, endpos) keeps the text around a range visible to lookbehinds and \\b.
    return [m for start, end in ranges for m in pattern.finditer(text, start, end)]


# A digit with what may stand around it in a number: the characters of every pattern that a
# digit, "+" or "(" leads (a card, a phone number, an IPv4 address, most national ids). Runs
# shorter than a digit and four more characters after their "+(" are left out: the shortest
# such pattern (a phone number) needs six after them.
_RUN = re.compile(r"[+(]*\d[\d \t.,:/()+\-]{4,}")
# What such a pattern reads past a run: a letter (DNI) and a two-character lookahead.
_RUN_PAD = 4


def digit_runs(text: str, ranges: Ranges) -> Runs:
    """The digit runs within ``ranges``, each with room for what a pattern reads after it."""
    return [
        (m.start(), min(m.end() + _RUN_PAD, end), m.end() - m.start())
        for start, end in ranges
        for m in _RUN.finditer(text, start, end)
    ]


def scan_runs(pattern: re.Pattern[str], text: str, runs: Runs, shortest: int) -> list[re.Match[str]]:
    """Matches of a pattern that a digit, "+" or "(" leads, made of run characters and at most
    one letter after them, whose run part is at least ``shortest`` long: the same matches as
    ``scan`` over the ranges the runs came from, in a fraction of the text."""
    found: list[re.Match[str]] = []
    start, end = -1, -1
    for s, e, length in runs:
        if length < shortest:
            continue  # too short for a match: its padding may overlap the next run, unscanned
        if s < end:  # overlapping paddings: one stretch, as in the range
            end = max(end, e)
            continue
        if end > start:
            found.extend(pattern.finditer(text, start, end))
        start, end = s, e
    if end > start:
        found.extend(pattern.finditer(text, start, end))
    return found


class _Scope:
    """Where the detectors still look in one text: ``islands`` for every pattern, and the digit
    runs in them for the patterns a digit leads; cut as detectors claim spans."""

    __slots__ = ("ranges", "runs")

    def __init__(self, text: str, ranges: Ranges) -> None:
        self.ranges = ranges
        self.runs = digit_runs(text, ranges)

    def scan(self, pattern: re.Pattern[str], text: str, run: int = 0) -> list[re.Match[str]]:
        """Matches of ``pattern``; ``run`` > 0 for a pattern a digit leads whose run part is at
        least that long (scanned in the runs only), 0 for any other (scanned in the ranges)."""
        return scan_runs(pattern, text, self.runs, run) if run else scan(pattern, text, self.ranges)

    def cut(self, spans: list[Span]) -> None:
        self.ranges = _without(self.ranges, spans)
        # A cut run keeps its length: an upper bound, so no run that could hold a match is skipped.
        cuts = sorted((s, e) for s, e, _ in spans)
        count = len(cuts)
        runs: Runs = []
        first = 0
        for run in self.runs:
            start, end, length = run
            while first < count and cuts[first][1] <= start:
                first += 1
            if first == count or cuts[first][0] >= end:
                runs.append(run)
                continue
            i = first
            while i < count and cuts[i][0] < end:
                s, e = cuts[i]
                if s > start:
                    runs.append((start, s, length))
                start = max(start, e)
                i += 1
            if start < end:
                runs.append((start, end, length))
        self.runs = runs


def find_identifiers(text: str, ranges: Ranges) -> list[Span]:
    """Non-overlapping spans of every structured type, the most specific detector first;
    ``ranges`` are ``islands(text)``. What one detector claims, later ones do not look at."""
    taken: list[Span] = list(_email(text)) if "@" in text else []
    scope = _Scope(text, _without(ranges, taken))
    for detect in _DETECTORS:
        if not scope.ranges:
            break
        found = [s for s in detect(text, scope) if _clear(s, taken)]
        kept: list[Span] = []
        for span in found:  # a detector's own candidates may overlap too: the first wins
            if all(span[1] <= k[0] or span[0] >= k[1] for k in kept):
                kept.append(span)
        if kept:
            for span in kept:
                insort(taken, span)
            scope.cut(kept)
    return taken


def _clear(span: Span, taken: list[Span]) -> bool:
    """Whether ``span`` overlaps none of ``taken`` (sorted, not overlapping each other)."""
    after = bisect_left(taken, span[1], key=_start)
    return after == 0 or taken[after - 1][1] <= span[0]


def _start(span: Span) -> int:
    return span[0]


def _without(ranges: Ranges, spans: list[Span]) -> Ranges:
    """``ranges`` with ``spans`` cut out."""
    if not spans:
        return ranges
    out: Ranges = []
    cuts = sorted((s, e) for s, e, _ in spans)
    for start, end in ranges:
        for s, e in cuts:
            if e <= start or s >= end:
                continue
            if s > start:
                out.append((start, s))
            start = max(start, e)
        if start < end:
            out.append((start, end))
    return out
