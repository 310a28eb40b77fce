from __future__ import annotations

import pytest

from router.sse import SseEvent, SseParser

STREAM = (
    b'data: {"t": "a\xe2\x80\xa8b"}\n\n'  # U+2028 inside the data
    b"event: message_delta\r\ndata: line1\r\ndata: line2\r\n\r\n"
    b': a comment\n\ndata: {"t": "nel\xc2\x85here"}\n\n'  # NEL
    b"data: [DONE]\n\n"
)
EXPECTED = [
    SseEvent("", b'{"t": "a\xe2\x80\xa8b"}'),
    SseEvent("message_delta", b"line1\nline2"),
    SseEvent("", b'{"t": "nel\xc2\x85here"}'),
    SseEvent("", b"[DONE]"),
]


def test_events_split_on_blank_lines_only() -> None:
    assert SseParser().feed(STREAM) == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 3, 7, 13])
def test_any_chunking_gives_the_same_events(size: int) -> None:
    parser = SseParser()
    events: list[SseEvent] = []
    for i in range(0, len(STREAM), size):
        events.extend(parser.feed(STREAM[i : i + size]))
    assert events == EXPECTED
    assert not parser.pending


def test_unterminated_event_is_pending_not_emitted() -> None:
    parser = SseParser()
    assert parser.feed(b'data: {"partial": tr') == []
    assert parser.pending
