"""Putting redacted values back into an answer (``router.redaction`` takes them out).

A ``Restorer`` serves one answer: its text (a placeholder may straddle delta
boundaries, so a possible placeholder prefix is held back until the next
delta), each tool call's arguments (the value goes back escaped for the JSON
string the placeholder stands in; each streamed call has its own held-back
prefix) and function names. ``delta`` does all of it for one ``Delta``; the
last delta flushes what was held back and restores the whole tool calls.
"""

from __future__ import annotations

import re

import msgspec

from serving.protocol import Delta, ToolCallDelta, rewrite_tool_calls

__all__ = ["PLACEHOLDER", "Restorer"]

PLACEHOLDER = re.compile(r"\[([A-Z]+(?:_[A-Z]+)*)_(\d+)\]")


def _json_escaped(value: str) -> str:
    """``value`` as it stands inside a JSON string."""
    return msgspec.json.encode(value).decode()[1:-1]


class Restorer:
    """Puts original values back into an answer, also across delta boundaries.

    ``arguments()`` is a fresh one for a tool call's arguments: the values go back escaped for
    the JSON string a placeholder stands in. ``name`` restores a function name."""

    def __init__(
        self, mapping: dict[str, str], names: dict[str, str] | None = None, *, json: bool = False
    ) -> None:
        self._mapping = {p: _json_escaped(v) for p, v in mapping.items()} if json else mapping
        self._plain = mapping
        self._names = names or {}
        self._longest = max((len(p) for p in mapping), default=0)
        self._pending = ""
        #: each streamed tool call's own restorer, by index
        self._calls: dict[int, Restorer] = {}
        self._json: Restorer | None = None

    def fresh(self) -> Restorer:
        """A restorer of the same values with nothing pending (for another choice of the answer)."""
        return Restorer(self._plain, self._names)

    def arguments(self) -> Restorer:
        return Restorer(self._plain, self._names, json=True)

    def name(self, name: str) -> str:
        return self._names.get(name, name)

    def restore(self, text: str) -> str:
        if not self._mapping or "[" not in text:
            return text
        return PLACEHOLDER.sub(lambda m: self._mapping.get(m.group(0), m.group(0)), text)

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

    def delta(self, delta: Delta) -> Delta:
        """``delta`` restored; the last one (``finish_reason`` set) flushes what was held back."""
        if not self._mapping and not self._names:
            return delta
        last = delta.finish_reason is not None
        if not last and not delta.tool_call_deltas and not delta.tool_calls:
            return msgspec.structs.replace(delta, text=self.feed(delta.text)) if delta.text else delta
        text = self.feed(delta.text) if delta.text else ""
        pieces = [self._piece(p) for p in delta.tool_call_deltas or ()]
        if last:
            text += self.flush()
            for index, call in sorted(self._calls.items()):
                if rest := call.flush():
                    pieces.append(ToolCallDelta(index=index, arguments=rest))
        calls = delta.tool_calls
        if calls:
            calls = rewrite_tool_calls(calls, name=self.name, arguments=self._json_restorer().restore)
        return msgspec.structs.replace(
            delta, text=text, tool_call_deltas=tuple(pieces) or None, tool_calls=calls
        )

    def _piece(self, piece: ToolCallDelta) -> ToolCallDelta:
        call = self._calls.get(piece.index)
        if call is None:
            call = self._calls[piece.index] = self.arguments()
        return ToolCallDelta(
            index=piece.index,
            id=piece.id,
            name=None if piece.name is None else self.name(piece.name),
            arguments=call.feed(piece.arguments) if piece.arguments else "",
        )

    def _json_restorer(self) -> Restorer:
        if self._json is None:
            self._json = self.arguments()
        return self._json
