"""The OpenAI wire schema of ``/v1/embeddings``: the request Struct and the response body.

Decoded strictly, like chat (``node.wire.decode_request``): an unknown or
unsupported field is a 400 naming it, never silently dropped. ``input`` is a
string, a list of strings, one token array or a list of token arrays, as the
OpenAI API takes it. Vectors arrive as little-endian float32 bytes and leave
as JSON floats or, for ``encoding_format: "base64"`` (the ``openai`` client's
default), as those bytes in base64, which is what the client decodes.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import msgspec

from serving.errors import BadRequestError

__all__ = ["MAX_INPUTS", "EmbeddingsRequest", "embeddings_body"]

#: inputs per request, as the OpenAI API allows
MAX_INPUTS = 2048
# bounded to signed 64 bits like every integer a request carries (the audit record's encoder);
# the model's vocabulary is checked by the engine, which knows it
_TokenId = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
_Item = str | _TokenId | list[_TokenId]


class EmbeddingsRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    model: str
    input: str | list[_Item]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)] | None = None
    user: Annotated[str, msgspec.Meta(max_length=256)] | None = None

    def inputs(self) -> tuple[tuple[str, ...] | None, tuple[tuple[int, ...], ...] | None]:
        """``(texts, None)`` or ``(None, token arrays)``; a mixed or empty ``input`` is a 400."""
        value = self.input
        if isinstance(value, str):
            return (value,), None
        if not value:
            raise BadRequestError("`input` is an empty list; send at least one input.", param="input")
        if all(isinstance(v, int) for v in value):  # one token array: as long as the context allows
            return None, (tuple(v for v in value if isinstance(v, int)),)
        if len(value) > MAX_INPUTS:
            raise BadRequestError(f"`input` holds {len(value)} inputs; at most {MAX_INPUTS}.", param="input")
        if all(isinstance(v, str) for v in value):
            return tuple(v for v in value if isinstance(v, str)), None
        if all(isinstance(v, list) for v in value):
            return None, tuple(tuple(v) for v in value if isinstance(v, list))
        raise BadRequestError(
            "`input` must be a string, a list of strings, a list of token ids or a list of token-id "
            "lists, not a mix of them.",
            param="input",
        )


def embeddings_body(
    *, model: str, vectors: Sequence[bytes], prompt_tokens: int, encoding_format: str
) -> dict[str, Any]:
    """The response: one ``embedding`` object per input, in input order, and the usage."""
    data = [
        {"object": "embedding", "index": i, "embedding": _encode(v, encoding_format)}
        for i, v in enumerate(vectors)
    ]
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def _encode(vector: bytes, encoding_format: str) -> str | list[float]:
    if encoding_format == "base64":
        return base64.b64encode(vector).decode("ascii")
    return list(struct.unpack(f"<{len(vector) // 4}f", vector))
