"""Phone numbers in international and local formats, for the regions a tenant names.

A number written with ``+`` or the ``00`` international prefix is detected
everywhere, whatever the regions. A number written the local way is detected
for each configured region in which ``phonenumbers`` finds it valid; there is
no default region. A local number in a region whose trunk prefix is ``0``
(DE, FR, NL, BE, UK, IE, AT, ...) must start with it. Digit runs shaped like
dates, years with a serial (``2024-943051``), amounts (``168 082,24``) and
numbers labelled as orders, invoices or cases are not phone numbers; NANP
numbers (US, CA) must be grouped 3-3-4.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

import phonenumbers

from router.identifiers import Ranges, Span, digit_runs, not_personal_label, scan_runs

__all__ = ["PhoneDetector"]

# A run of digits with the separators phone numbers are written with, after +, 00 or (.
_RUN = re.compile(r"(?<![\w+.,/-])(?:\+|\(\+?)?\d[\d \t().\-/]{4,24}\d(?![\w]|[.,]\d)")
# The shortest run _RUN matches: a digit, four characters, a digit.
_SHORTEST_RUN = 6
_MIN_DIGITS = 7
_MAX_DIGITS = 15
_GROUPS = re.compile(r"\d+")
_AMOUNT_AFTER = re.compile(r"\s?(?:€|eur\b|euro|usd\b|\$|£|gbp\b|pln\b|zł|chf\b|kr\b)", re.IGNORECASE)
_AMOUNT_BEFORE = re.compile(r"(?:€|eur|usd|\$|£|gbp|pln|chf)\s?$", re.IGNORECASE)
_NANP = {"US", "CA"}
_TOKEN = re.compile(r"\S*\d\S*")
_MAX_TOKENS = 8


def _holds_date(groups: list[str]) -> bool:
    """Day, month and a four-digit year in a row anywhere in the run: 07 03 2026 12."""
    return any(
        len(groups[i]) <= 2
        and len(groups[i + 1]) <= 2
        and len(groups[i + 2]) == 4
        and _date_like(groups[i : i + 3])
        for i in range(len(groups) - 2)
    )


def _date_like(groups: list[str]) -> bool:
    """d-m-y, y-m-d and m/d/y shapes."""
    if len(groups) != 3:
        return False
    a, b, c = (int(g) for g in groups)
    if len(groups[0]) == 4:
        return 1900 <= a <= 2099 and 1 <= b <= 12 and 1 <= c <= 31
    if len(groups[2]) in (2, 4) and len(groups[0]) <= 2 and len(groups[1]) <= 2:
        return (1 <= a <= 31 and 1 <= b <= 12) or (1 <= a <= 12 and 1 <= b <= 31)
    return False


class PhoneDetector:
    """Phone-number spans for a fixed list of regions (ISO 3166 alpha-2, ``GB`` for the UK)."""

    def __init__(self, regions: Sequence[str]) -> None:
        self._regions = tuple(dict.fromkeys(r.upper() for r in regions))
        unknown = [r for r in self._regions if r not in phonenumbers.SUPPORTED_REGIONS]
        if unknown:
            raise ValueError(f"unknown phone regions {unknown}")
        trunk0 = {
            r
            for r in self._regions
            if (md := phonenumbers.PhoneMetadata.metadata_for_region(r)) is not None
            and md.national_prefix == "0"
        }
        self._trunk0 = tuple(r for r in self._regions if r in trunk0)
        self._other = tuple(r for r in self._regions if r not in trunk0)
        # The region's whole numbering plan as one pattern: most digit runs fail it, and it
        # costs a fraction of a full parse.
        self._plan: dict[str, re.Pattern[str]] = {}
        self._code: dict[str, int] = {}
        # Per region with a code: its number types, compiled once (phonenumbers looks each
        # pattern up again on every check).
        self._types: dict[str, tuple[_Desc, tuple[_Desc, ...]]] = {}
        for r in self._regions:
            md = phonenumbers.PhoneMetadata.metadata_for_region(r)
            if md is None:
                continue
            pattern = None if md.general_desc is None else md.general_desc.national_number_pattern
            if pattern:
                self._plan[r] = re.compile(pattern)
            # A plain trunk prefix (or none) lets the number be built without a full parse.
            if md.national_prefix_for_parsing in (None, md.national_prefix) and md.country_code is not None:
                self._code[r] = md.country_code
                self._types[r] = _number_types(md)

    @property
    def regions(self) -> tuple[str, ...]:
        return self._regions

    def find(self, text: str, ranges: Ranges, memo: dict[str, bool] | None = None) -> Iterator[Span]:
        """Phone numbers in ``text`` within ``ranges`` (``islands(text)``); ``memo`` caches
        verdicts by run within one request."""
        memo = {} if memo is None else memo
        for run in scan_runs(_RUN, text, digit_runs(text, ranges), _SHORTEST_RUN):
            value = run.group(0)
            start, end = run.start(), run.end()
            if value.startswith("(") and ")" not in value:
                value, start = value[1:], start + 1
            if self._cached(value, text, start, end, memo):
                yield start, end, "PHONE"
                continue
            # Several numbers, or a number beside a date or a count: try the longest pieces
            # made of whole space-separated tokens, leftmost first.
            tokens = [(m.start() + start, m.end() + start) for m in _TOKEN.finditer(value)]
            if not 2 <= len(tokens) <= _MAX_TOKENS:
                continue
            i = 0
            while i < len(tokens):
                for j in range(len(tokens), i, -1):
                    if (i, j) == (0, len(tokens)):
                        continue
                    s, e = tokens[i][0], tokens[j - 1][1]
                    if self._cached(text[s:e], text, s, e, memo):
                        yield s, e, "PHONE"
                        i = j - 1
                        break
                i += 1

    def _cached(self, value: str, text: str, start: int, end: int, memo: dict[str, bool]) -> bool:
        found = memo.get(value)
        if found is None:
            found = memo[value] = self._valid(value, text, start, end)
        return found

    def _valid(self, value: str, text: str, start: int, end: int) -> bool:
        groups = _GROUPS.findall(value)
        digits = "".join(groups)
        international = value.startswith(("+", "(+")) or digits.startswith("00")
        if international:
            if not value.startswith(("+", "(+")):
                value = "+" + value.lstrip("(")[2:]
            significant = len(digits) - 2 * (digits[:2] == "00")
            return _MIN_DIGITS <= significant <= _MAX_DIGITS and self._international(value)
        if not _MIN_DIGITS <= len(digits) <= _MAX_DIGITS or _date_like(groups) or _holds_date(groups):
            return False
        if any(_date_like(_GROUPS.findall(token)) for token in value.split() if not token.isdigit()):
            return False  # a date, then a time or a count: 06-12-2023 18:15
        if len(groups) > 1 and len(groups[0]) == 4 and groups[0][:2] in ("19", "20"):
            return False  # a year and a serial: 2024-943051
        if _AMOUNT_AFTER.match(text, end) or _AMOUNT_BEFORE.search(text, max(0, start - 5), start):
            return False
        if not_personal_label(text, start):
            return False
        trunk0 = digits.startswith("0")
        for region in (*(self._trunk0 if trunk0 else ()), *self._other):
            national = digits[1:] if trunk0 and region in self._trunk0 else digits
            if region in _NANP:
                if [len(g) for g in groups] not in ([3, 3, 4], [10], [1, 3, 3, 4], [11]):
                    continue
                national = national[1:] if len(national) == 11 and national[0] == "1" else national
            plan = self._plan.get(region)
            if plan is not None and not plan.fullmatch(national):
                continue
            code = self._code.get(region)
            if code is not None and national:
                # The national significant number phonenumbers builds from these digits.
                zeros = len(national) - len(national.lstrip("0"))
                if self._valid_for(region, "0" * zeros + str(int(national))):
                    return True
            elif _is_valid(value, region):
                return True
        return False

    def _international(self, value: str) -> bool:
        """phonenumbers.parse then is_valid_number; a country code of one region that is
        configured is checked against the patterns compiled here."""
        try:
            number = phonenumbers.parse(value, None)
        except phonenumbers.NumberParseException:
            return False
        regions = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(number.country_code or 0, ())
        if len(regions) == 1 and self._code.get(regions[0]) == number.country_code:
            return self._valid_for(regions[0], phonenumbers.national_significant_number(number))
        return bool(phonenumbers.is_valid_number(number))

    def _valid_for(self, region: str, nsn: str) -> bool:
        """phonenumbers.is_valid_number_for_region for a number of ``region``'s own country code:
        the general pattern and one of the number types match."""
        general, types = self._types[region]
        return _matches(general, nsn) and any(_matches(desc, nsn) for desc in types)


# A number type's possible lengths (empty: any) and pattern; None where the type has no pattern.
_Desc = tuple[frozenset[int], re.Pattern[str]] | None


def _desc(desc: phonenumbers.PhoneNumberDesc | None) -> _Desc:
    if desc is None or not desc.national_number_pattern:
        return None
    return frozenset(desc.possible_length), re.compile(desc.national_number_pattern)


def _matches(desc: _Desc, nsn: str) -> bool:
    if desc is None:
        return False
    lengths, pattern = desc
    return (not lengths or len(nsn) in lengths) and pattern.fullmatch(nsn) is not None


def _number_types(md: phonenumbers.PhoneMetadata) -> tuple[_Desc, tuple[_Desc, ...]]:
    """The general description and, in phonenumbers' order, the types that make a number valid;
    mobile only where its pattern is not the fixed line's (phonenumbers does not try it then)."""
    types = [
        md.premium_rate,
        md.toll_free,
        md.shared_cost,
        md.voip,
        md.personal_number,
        md.pager,
        md.uan,
        md.voicemail,
        md.fixed_line,
    ]
    if not md.same_mobile_and_fixed_line_pattern:
        types.append(md.mobile)
    return _desc(md.general_desc), tuple(_desc(t) for t in types)


def _is_valid(value: str, region: str | None) -> bool:
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        return False
    return bool(phonenumbers.is_valid_number(number))
