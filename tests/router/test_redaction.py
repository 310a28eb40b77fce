from __future__ import annotations

import json

import pytest

from router.redaction import Redactor, Restorer
from serving.errors import RedactionError
from serving.protocol import ChatMessage, FunctionCall, GenerationRequest, ToolCall

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
]


@pytest.mark.parametrize(("kind", "value"), CASES)
def test_each_type_is_found_and_replaced(kind: str, value: str) -> None:
    text = f"Please use {value} for this."
    spans = Redactor().find(text)
    assert [(text[s:e], k) for s, e, k in spans] == [(value, kind)]


@pytest.mark.parametrize(
    "text",
    [
        "Order 12345 shipped in 2024 at 10:30:00.",
        "Card-like but fails Luhn: 4111 1111 1111 1112.",
        "Version 1.2.3.4.5 and ratio 3:2.",
        "IBAN-like DE00 1234 5678 9012 3456 78 with a bad checksum.",
        "SSN-like 000-12-3456 is not a valid SSN.",
    ],
)
def test_look_alikes_that_fail_validation_are_kept(text: str) -> None:
    assert Redactor().find(text) == []


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
    result = Redactor().redact(request)
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
    mapping = {"[EMAIL_1]": "jane@example.org", "[NATIONAL_ID_12]": "536-90-4399"}
    answer = "Sure [EMAIL_1], your id [NATIONAL_ID_12] is noted [sic] [x]."
    expected = "Sure jane@example.org, your id 536-90-4399 is noted [sic] [x]."
    for cut in range(1, len(answer)):
        restorer = Restorer(mapping)
        out = restorer.feed(answer[:cut]) + restorer.feed(answer[cut:]) + restorer.flush()
        assert out == expected, cut
    restorer = Restorer(mapping)
    assert "".join(restorer.feed(ch) for ch in answer) + restorer.flush() == expected


class _BrokenRedactor(Redactor):
    """A redactor whose detector crashes, standing in for any internal failure."""

    def find(self, text: str) -> list[tuple[int, int, str]]:
        raise UnicodeError("detector crashed")


def test_failure_is_closed_and_typed() -> None:
    request = GenerationRequest(request_id="r", model="m", prompt="hello")
    with pytest.raises(RedactionError) as info:
        _BrokenRedactor().redact(request)
    assert info.value.status_code == 503
    assert info.value.reason == "redaction-failed"
