"""The first handshake messages carried in the WebSocket upgrade.

A participant may send its first frame, M1, as the ``Tsess-Hello`` header of the HTTP
upgrade request (base64url, RFC 4648 section 5, without padding) instead of as the
first WebSocket message.  A venue that takes it from there answers in the same way:
its first frame (M2, or a REJECT) is the ``Tsess-Hello`` header of its ``101``
response, and each side handles the decoded bytes exactly as if they had been the
connection's first message.  A venue that does not know the header ignores it and
its 101 carries none; the participant then sends M1 in band, as before.  The frames,
the transcript and every check are the same bytes either way; what changes is that
the first two messages travel with the upgrade, which takes a round trip and two
writes off every connect (docs/protocol.md, "Transport").  Built on trio-websocket's
public ``extra_headers`` (client request, server response),
``WebSocketRequest.headers`` and ``WebSocketConnection.handshake_headers``.

This module is private.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable

__all__ = ["HELLO_HEADER", "hello_header", "hello_in"]

#: The header, in the lower case h11 gives header names.
HELLO_HEADER = b"tsess-hello"

_BASE64URL = re.compile(rb"[A-Za-z0-9_-]*")


def hello_header(frame: bytes) -> list[tuple[bytes, bytes]]:
    """The extra header (request or 101 response) carrying ``frame``."""
    return [(HELLO_HEADER, base64.urlsafe_b64encode(frame).rstrip(b"="))]


def hello_in(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The frame the peer's upgrade request or 101 response carried, or None.

    A malformed header (repeated, not base64url) comes back as ``b""``: the
    connection's first message is then not a frame, which the handshake refuses
    with ``PROTOCOL_ERROR`` like any other malformed first message.  Its size is
    bounded by the HTTP head's (the venue's ``MAX_REQUEST_HEAD``, h11's limit on
    the participant) before this runs, and by ``max_frame_size`` after, as any
    message's.
    """
    values = [value for name, value in headers if name.lower() == HELLO_HEADER]
    if not values:
        return None
    value = values[0].strip()
    if len(values) > 1 or len(value) % 4 == 1 or _BASE64URL.fullmatch(value) is None:
        return b""
    return base64.urlsafe_b64decode(value + b"=" * (-len(value) % 4))
