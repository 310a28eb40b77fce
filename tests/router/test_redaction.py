from __future__ import annotations

import json
import random
import re
from typing import Any

import msgspec
import pytest
from stdnum import iban, numdb

from router.config import RedactionConfig
from router.free_text import FreeTextEntity
from router.identifiers import Span
from router.redaction import Redactor, Restorer
from router.redaction_bench import ALL_REGIONS, load, score
from router.redaction_corpus import CORPUS, HELDOUT, generate
from serving.errors import RedactionError
from serving.protocol import ChatMessage, FunctionCall, GenerationRequest, ToolCall


def config(**fields: Any) -> RedactionConfig:
    return msgspec.json.decode(json.dumps(fields).encode(), type=RedactionConfig)


EUROPE_US = Redactor(config(phone_regions=list(ALL_REGIONS)))

CASES = [
    ("EMAIL", "jane.roe+tag@example.org"),
    ("PHONE", "+49 30 901820"),
    ("PHONE", "(415) 555-2671"),
    ("IBAN", "DE89 3704 0044 0532 0130 00"),
    ("IBAN", "GB82WEST12345698765432"),
    ("CARD", "4111 1111 1111 1111"),
    ("CARD", "5500-0000-0000-0004"),
    ("NATIONAL_ID", "536-90-4399"),  # US SSN
    ("NATIONAL_ID", "12345678Z"),  # ES DNI
    ("NATIONAL_ID", "RCCMNL83S18D969H"),  # IT codice fiscale
    ("VAT_ID", "DE136695976"),
    ("IP_ADDRESS", "192.168.10.20"),
    ("IP_ADDRESS", "2001:db8::8a2e:370:7334"),
    # phones written the local way, and with the 00 international prefix
    ("PHONE", "030 901820"),  # DE
    ("PHONE", "06 12 34 56 78"),  # FR
    ("PHONE", "020-1234567"),  # NL
    ("PHONE", "612 34 56 78"),  # ES
    ("PHONE", "0121 234 5678"),  # UK
    ("PHONE", "0049 30 901820"),
    ("PHONE", "+49 (0)30 901820"),
    ("PHONE", "201-555-0123"),  # US
    # IBANs in any case and grouping
    ("IBAN", "de57 1005 0000 0382 2607 99"),
    ("IBAN", "de57100500000382260799"),
    ("IBAN", "DE57-1005-0000-0382-2607-99"),
    # national identifiers
    ("NATIONAL_ID", "X1234567L"),  # ES NIE
    ("NATIONAL_ID", "12.345.678-Z"),  # ES DNI
    ("NATIONAL_ID", "2273.92.280"),  # NL BSN
    ("NATIONAL_ID", "52.02.21-835.29"),  # BE national number
    ("NATIONAL_ID", "44051401359"),  # PL PESEL
    ("NATIONAL_ID", "AB 12 34 56 C"),  # UK National Insurance
    ("NATIONAL_ID", "943 476 5919"),  # UK NHS
    ("NATIONAL_ID", "536 90 4399"),  # US SSN, spaced
    ("NATIONAL_ID", "rccmnl83s18d969h"),  # IT codice fiscale, lower case
    # emails with an apostrophe, accents, an internationalised domain
    ("EMAIL", "siobhan.o'brien@hse.ie"),
    ("EMAIL", "maría.garcía@ejemplo.es"),
    ("EMAIL", "jürgen@bäckerei-müller.de"),
]


@pytest.mark.parametrize(("kind", "value"), CASES)
def test_each_type_is_found_and_replaced(kind: str, value: str) -> None:
    text = f"Please use {value} for this."
    spans = EUROPE_US.find(text)
    assert [(text[s:e], k) for s, e, k in spans] == [(value, kind)]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("SSN 536904399 on file", "536904399"),
        ("BSN: 227392280", "227392280"),
        ("NHS number 9434765919.", "9434765919"),
    ],
)
def test_bare_nine_and_ten_digit_ids_are_found_after_their_label(text: str, value: str) -> None:
    assert [text[s:e] for s, e, _ in EUROPE_US.find(text)] == [value]
    assert EUROPE_US.find(text.replace(text.split()[0], "Ticket")) == []


@pytest.mark.parametrize(
    "text",
    [
        "Order 12345 shipped in 2024 at 10:30:00.",
        "Card-like but fails Luhn: 4111 1111 1111 1112.",
        "Version 1.2.3.4.5 and ratio 3:2.",
        "IBAN-like DE00 1234 5678 9012 3456 78 with a bad checksum.",
        "SSN-like 000-12-3456 is not a valid SSN.",
        # look-alikes that pass a check digit, or a phone plan, where only context decides
        "Order 2024-943051 shipped.",
        "Zaak 2024-943051, vervaldatum 09-10-2024.",
        "Totaal 168 082,24 EUR, bedrag 1.234.567,89 €.",
        "Update auf Version 9.5.4.8 am 9.10.2024 um 10:30.",
        "Transaktions-ID 4539148803436467, Rechnung 512345678.",
        "EAN 4006381333931 x 3, ISBN 978-3-16-148410-0, ISBN 9783161484100.",
        "Am 07 03 2026 12:45 bestellt.",
    ],
)
def test_look_alikes_are_kept(text: str) -> None:
    assert EUROPE_US.find(text) == []


def test_no_phone_region_is_assumed() -> None:
    """Without regions only + and 00 numbers are found; each configured region adds its own."""
    text = "Berlin 030 901820, Madrid 612 34 56 78, NYC 201-555-0123, intl 0049 30 901820"
    found = {text[s:e] for s, e, _ in Redactor().find(text)}
    assert found == {"0049 30 901820"}
    found = {text[s:e] for s, e, _ in Redactor(config(phone_regions=["DE"])).find(text)}
    assert found == {"030 901820", "0049 30 901820"}
    found = {text[s:e] for s, e, _ in Redactor(config(phone_regions=["DE", "ES", "US"])).find(text)}
    assert found == {"030 901820", "612 34 56 78", "201-555-0123", "0049 30 901820"}


def test_keep_patterns_are_never_touched() -> None:
    text = "Customer ACC 0301234567, call 030 901820."
    plain = Redactor(config(phone_regions=["DE"]))
    assert [text[s:e] for s, e, _ in plain.find(text)] == ["0301234567", "030 901820"]
    keeping = Redactor(config(phone_regions=["DE"], keep_patterns=[r"ACC \d{10}"]))
    assert [text[s:e] for s, e, _ in keeping.find(text)] == ["030 901820"]


@pytest.mark.parametrize(
    "fields",
    [
        {"phone_regions": ["XX"]},
        {"phone_regions": ["de"]},
        {"keep_patterns": ["(unclosed"]},
        {"phone_region": "US"},
    ],
)
def test_bad_redaction_settings_are_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(msgspec.ValidationError):
        config(**fields)


def test_no_readable_remainder_and_exact_restoration() -> None:
    values = [v for _, v in CASES]
    text = " | ".join(f"item {v}" for v in values)
    result = EUROPE_US.redact(GenerationRequest(request_id="r", model="m", prompt=text))
    redacted = result.request.prompt or ""
    assert sum(result.counts.values()) == len(values)
    for value in values:
        assert value not in redacted
        for part in value.replace("-", " ").replace(".", " ").replace("@", " ").split():
            if len(part) >= 4:
                assert part not in redacted, (value, part)
    assert Restorer(result.mapping).restore(redacted) == text


def test_every_role_tool_calls_and_tool_results_are_covered() -> None:
    request = GenerationRequest(
        request_id="r",
        model="m",
        messages=(
            ChatMessage(role="system", content="Operator contact: ops@example.com"),
            ChatMessage(role="user", content="Email ops@example.com and call +1 415 555 2671"),
            ChatMessage(
                role="assistant",
                tool_calls=(
                    ToolCall(id="c1", function=FunctionCall(name="lookup", arguments='{"ip": "10.1.2.3"}')),
                ),
            ),
            ChatMessage(role="tool", tool_call_id="c1", content="owner IBAN GB82WEST12345698765432"),
        ),
    )
    result = EUROPE_US.redact(request)
    messages = result.request.messages
    assert messages is not None
    assert messages[0].content == "Operator contact: [EMAIL_1]"
    assert messages[1].content == "Email [EMAIL_1] and call [PHONE_1]"  # same value, same placeholder
    assert messages[2].tool_calls is not None
    assert json.loads(messages[2].tool_calls[0].function.arguments) == {"ip": "[IP_ADDRESS_1]"}
    assert messages[3].content == "owner IBAN [IBAN_1]"
    assert result.counts == {"EMAIL": 2, "PHONE": 1, "IP_ADDRESS": 1, "IBAN": 1}
    flat = json.dumps(result.counts)
    assert "example.com" not in flat and "GB82" not in flat


def test_placeholders_already_in_the_text_are_not_reused() -> None:
    request = GenerationRequest(
        request_id="r", model="m", prompt="Literal [EMAIL_1] stays; a@example.com is replaced"
    )
    result = Redactor().redact(request)
    assert result.request.prompt == "Literal [EMAIL_1] stays; [EMAIL_2] is replaced"
    assert Restorer(result.mapping).restore(result.request.prompt or "") == (
        "Literal [EMAIL_1] stays; a@example.com is replaced"
    )


def test_restoring_across_every_delta_boundary() -> None:
    mapping = {
        "[EMAIL_1]": "jane@example.org",
        "[NATIONAL_ID_12]": "536-90-4399",
        "[BIRTH_DATE_1]": "12.03.1985",
        "[IP_ADDRESS_2]": "10.1.2.3",
    }
    answer = "Sure [EMAIL_1], your id [NATIONAL_ID_12] ([BIRTH_DATE_1], [IP_ADDRESS_2]) is noted [sic] [x]."
    expected = "Sure jane@example.org, your id 536-90-4399 (12.03.1985, 10.1.2.3) is noted [sic] [x]."
    for cut in range(1, len(answer)):
        restorer = Restorer(mapping)
        out = restorer.feed(answer[:cut]) + restorer.feed(answer[cut:]) + restorer.flush()
        assert out == expected, cut
    restorer = Restorer(mapping)
    assert "".join(restorer.feed(ch) for ch in answer) + restorer.flush() == expected


def test_invented_or_mangled_placeholders_are_left_as_they_are() -> None:
    mapping = {"[PHONE_1]": "030 901820", "[PERSON_1]": "Anna Schmidt"}
    answer = (
        "Call [PHONE_1], not [PHONE_2], [PHONE_10], [phone_1], [PHONE 1], PHONE_1] or [PERSON_11] [PHONE_1"
    )
    expected = (
        "Call 030 901820, not [PHONE_2], [PHONE_10], [phone_1], [PHONE 1], PHONE_1] or [PERSON_11] [PHONE_1"
    )
    for cut in range(1, len(answer)):
        restorer = Restorer(mapping)
        out = restorer.feed(answer[:cut]) + restorer.feed(answer[cut:]) + restorer.flush()
        assert out == expected, cut


def test_free_text_entities_become_placeholders() -> None:
    text = "Patientin Anna Schmidt, geb. 12.03.1985, Hauptstraße 5, 10115 Berlin; Anna ruft an."
    entities = [
        FreeTextEntity(type="PERSON", words=("Anna", "Schmidt")),
        FreeTextEntity(type="BIRTH_DATE", words=("12.03.1985",)),
        FreeTextEntity(type="ADDRESS", words=("Hauptstraße", "5", "10115", "Berlin")),
    ]
    result = Redactor().redact(GenerationRequest(request_id="r", model="m", prompt=text), entities)
    assert result.request.prompt == (
        "Patientin [PERSON_1], geb. [BIRTH_DATE_1], [ADDRESS_1]; [PERSON_2] ruft an."
    )
    assert Restorer(result.mapping).restore(result.request.prompt or "") == text
    assert result.counts == {"PERSON": 2, "BIRTH_DATE": 1, "ADDRESS": 1}


def test_ibans_are_found_exactly_when_python_stdnum_accepts_them() -> None:
    """The IBAN check reads stdnum's registry once; every country, valid and broken, agrees."""
    rng = random.Random(14)
    shapes = {
        "n": "0123456789",
        "a": "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "c": "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    }
    redactor = Redactor()
    seen = {True: 0, False: 0}
    for _, country, _, props, _ in numdb.get("iban").prefixes:
        parts = [(int(n), shapes[k]) for n, k in re.findall(r"(\d+)!([nac])", props.get("bban", ""))]
        for _ in range(40):
            bban = "".join(rng.choice(chars) for n, chars in parts for _ in range(n))
            if rng.random() < 0.3 and bban:  # a letter where a digit belongs, or the other way
                i = rng.randrange(len(bban))
                bban = bban[:i] + rng.choice("7Q") + bban[i + 1 :]
            if rng.random() < 0.1:
                bban = bban[:-1]
            value = country + iban.calc_check_digits(country + "00" + bban) + bban
            text = f"Bitte auf {value} überweisen."
            found = [(s, e) for s, e, kind in redactor.find(text) if kind == "IBAN"]
            valid = iban.is_valid(value)
            seen[valid] += 1
            assert found == ([(10, 10 + len(value))] if valid else []), value
    assert min(seen.values()) > 200


# -- measured quality on the committed corpus (a quality goal, not a timing test) ----------------------


@pytest.mark.parametrize("path", [CORPUS, HELDOUT], ids=["corpus", "held-out"])
def test_corpus_recall_and_clean_sentences(path: Any) -> None:
    result = score(load(path), EUROPE_US)
    assert sum(result.items.values()) >= 400 and result.clean >= 100
    assert result.recall >= 0.99, result.misses[:10]
    for kind, total in result.items.items():
        assert result.found[kind] / total >= 0.97, kind
    assert result.remainders == []
    assert result.altered_rate <= 0.01, result.altered


def test_the_committed_corpus_is_what_the_generator_makes() -> None:
    rows = generate(14, pii=600, clean=200, heldout=False)
    assert [json.dumps(r, ensure_ascii=False) for r in rows] == CORPUS.read_text(
        encoding="utf-8"
    ).splitlines()
    langs = {r["lang"] for r in rows}
    assert len(langs) >= 6


class _BrokenRedactor(Redactor):
    """A redactor whose detector crashes, standing in for any internal failure."""

    def find(self, text: str, **_: Any) -> list[Span]:
        raise UnicodeError("detector crashed")


def test_failure_is_closed_and_typed() -> None:
    request = GenerationRequest(request_id="r", model="m", prompt="hello")
    with pytest.raises(RedactionError) as info:
        _BrokenRedactor().redact(request)
    assert info.value.status_code == 503
    assert info.value.reason == "redaction-failed"
