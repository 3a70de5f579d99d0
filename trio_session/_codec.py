"""Application payloads: bytes as they are, or msgspec msgpack for declared ``messages=``."""

from __future__ import annotations

import typing
from typing import Any, final

import msgspec

from ._errors import InvalidMessage

__all__ = ["Codec"]


@final
class Codec:
    """Bytes passthrough, or msgspec msgpack for a declared ``messages=`` type."""

    def __init__(self, messages: Any | None) -> None:
        self.typed = messages is not None
        if messages is not None:
            self._enc = msgspec.msgpack.Encoder()
            self._dec: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(messages)
            members = typing.get_args(messages) or (messages,)
            # Structs (the documented way to declare messages) are checked on
            # send, so a wrong object fails here rather than at the peer.
            self._types: tuple[type, ...] | None = (
                tuple(members)
                if all(isinstance(m, type) and issubclass(m, msgspec.Struct) for m in members)
                else None
            )

    def encode(self, message: Any) -> bytes:
        if not self.typed:
            if type(message) is bytes:
                return message
            if isinstance(message, (bytearray, memoryview)):
                return bytes(message)
            raise TypeError(
                f"without messages= a session sends bytes, not {type(message).__name__}"
            )
        if self._types is not None and not isinstance(message, self._types):
            names = ", ".join(t.__name__ for t in self._types)
            raise TypeError(f"this session sends {names}, not {type(message).__name__}")
        try:
            return self._enc.encode(message)
        except (msgspec.EncodeError, TypeError) as exc:
            raise TypeError(f"cannot encode {type(message).__name__}: {exc}") from exc

    def decode(self, payload: bytes, seq: int) -> Any:
        if not self.typed:
            return payload
        try:
            return self._dec.decode(payload)
        except (msgspec.MsgspecError, ValueError, TypeError, RecursionError) as exc:
            raise InvalidMessage(
                f"message {seq} does not match the schema: {exc}", seq=seq
            ) from exc

    def decode_or_raw(self, payload: bytes) -> Any:
        """Our own sent message back (for reports): decoded where typed, else the bytes."""
        if not self.typed:
            return payload
        try:
            return self._dec.decode(payload)
        except (msgspec.MsgspecError, ValueError, TypeError, RecursionError):
            return payload
