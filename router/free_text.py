"""Free-text personal data (names, birth dates, addresses, record numbers) found by a local model.

Validators cannot find a name. A tenant may name a model served on this node
(``[tenants.redaction] ner_model``); before a request leaves, that model reads
the request's texts and answers under a JSON schema whose only allowed words are
the texts' own words, so every word it names occurs in the text. What it names
is then redacted like any other value (``Redactor.redact(request, entities)``).

It runs on the node's own engine, never outside it. Fail closed: an engine that
is missing, down, slow past the tenant's timeout, or an answer that is cut off,
does not fit the schema or names a word the text does not hold, raises
``RedactionError`` and the request is not sent out.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Sequence
from typing import Final, Literal

import msgspec

from serving.errors import BastionError, RedactionError
from serving.protocol import ChatMessage, GenerationRequest, Provider, SamplingOptions

__all__ = ["FREE_TEXT_TYPES", "FreeTextDetector", "FreeTextEntity", "answer_schema", "vocabulary"]

FreeTextType = Literal["PERSON", "BIRTH_DATE", "ADDRESS", "RECORD_ID"]
FREE_TEXT_TYPES: Final[tuple[str, ...]] = ("PERSON", "BIRTH_DATE", "ADDRESS", "RECORD_ID")
_MAX_ENTITIES = 32
_MAX_WORDS_PER_ENTITY = 8
# Words as a name, a date or an address part is written: O'Brien, 12.03.1985, 10115, 5a.
_WORD = re.compile(r"\w(?:[\w'\u2019.\-/]*\w)?")

_INSTRUCTIONS = (
    "You find personal data in text for redaction. List every person's name (PERSON), date of birth "
    "(BIRTH_DATE), postal address (ADDRESS) and patient, case-file, customer or account number "
    "(RECORD_ID). For each, give its type and its words exactly as they are written in the text. "
    "Answer with JSON only."
)


class FreeTextEntity(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    type: FreeTextType
    #: the entity's words, each one exactly as it occurs in the text
    words: tuple[str, ...]


class _Answer(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    entities: tuple[FreeTextEntity, ...]


def vocabulary(texts: Sequence[str]) -> list[str]:
    """The distinct words of ``texts``, in order of first appearance."""
    return list(dict.fromkeys(w for t in texts for w in _WORD.findall(t)))


def answer_schema(words: Sequence[str]) -> dict[str, object]:
    """The JSON schema the model answers under: entities whose words come from ``words`` only."""
    return {
        "type": "object",
        "properties": {
            "entities": {
                "type": "array",
                "maxItems": _MAX_ENTITIES,
                "items": {
                    "type": "object",
                    "properties": {
                        "type": {"enum": list(FREE_TEXT_TYPES)},
                        "words": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": _MAX_WORDS_PER_ENTITY,
                            "items": {"enum": list(words)},
                        },
                    },
                    "required": ["type", "words"],
                    "additionalProperties": False,
                },
            }
        },
        "required": ["entities"],
        "additionalProperties": False,
    }


class FreeTextDetector:
    """Asks ``model`` on the local ``provider`` for the personal data in a request's texts."""

    def __init__(
        self, provider: Provider, model: str, *, timeout_s: float, max_tokens: int | None = None
    ) -> None:
        self._provider = provider
        self._model = model
        self._timeout_s = timeout_s
        #: None: what is left of the model's context (the schema bounds the answer anyway)
        self._max_tokens = max_tokens

    async def detect(self, texts: Sequence[str]) -> list[FreeTextEntity]:
        words = vocabulary(texts)
        if not words:
            return []
        request = GenerationRequest(
            request_id=f"redact-{uuid.uuid4().hex[:12]}",
            model=self._model,
            messages=(
                ChatMessage(role="system", content=_INSTRUCTIONS),
                ChatMessage(role="user", content="\n\n".join(texts)),
            ),
            sampling=SamplingOptions(
                max_tokens=self._max_tokens,
                temperature=0.0,
                json_schema=json.dumps(answer_schema(words), ensure_ascii=False),
            ),
        )
        answer, finish = await self._generate(request)
        if finish != "stop":
            raise _invalid(f"the answer was cut off ({finish})")
        try:
            decoded = msgspec.json.decode(answer, type=_Answer)
        except msgspec.DecodeError:
            raise _invalid("the answer does not fit the schema") from None
        known = set(words)
        if any(w not in known for e in decoded.entities for w in e.words):
            raise _invalid("the answer names words the text does not hold")
        return list(decoded.entities)

    async def _generate(self, request: GenerationRequest) -> tuple[str, str | None]:
        parts: list[str] = []
        finish: str | None = None
        stream = self._provider.stream(request)
        try:
            async with asyncio.timeout(self._timeout_s):
                async for delta in stream:
                    parts.append(delta.text)
                    finish = delta.finish_reason or finish
        except TimeoutError:
            raise RedactionError(
                f"the free-text redaction model {self._model!r} did not answer within "
                f"{self._timeout_s:g} s; the request was not sent out",
                reason="free-text-timeout",
                retry_after_s=1.0,
            ) from None
        except BastionError as exc:
            raise RedactionError(
                f"the free-text redaction model {self._model!r} cannot run ({exc.code}); "
                "the request was not sent out",
                reason="free-text-unavailable",
                retry_after_s=exc.retry_after_s or 1.0,
            ) from None
        finally:
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()
        return "".join(parts), finish


def _invalid(why: str) -> RedactionError:
    return RedactionError(
        f"the free-text redaction model gave an unusable answer ({why}); the request was not sent out",
        reason="free-text-invalid",
    )
