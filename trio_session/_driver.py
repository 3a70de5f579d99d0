"""The handshake exchange, the same loop for both roles.

Both sides do the same thing until the handshake completes: write what the
sans-IO connection owes (M1, M2), read one frame, feed it, react to the
events.  The roles differ only in two hooks the venue passes: ``admit`` runs
once, when the peer's first frame arrives and before it is parsed (the cheapest
check, per-address rate limiting, goes first); ``on_hello`` gets the
ClientHello and does the rest of admission and ``accept()``.  Deadlines and
what to do on failure stay with the caller (the participant's deadline also
covers opening the connection; the venue answers with a REJECT).
"""

from __future__ import annotations

from collections.abc import Callable

from ._errors import RemoteProtocolError
from ._transport import Transport
from .protocol import CloseReceived, Connection, HandshakeComplete, HelloReceived

__all__ = ["run_handshake"]


async def run_handshake(
    transport: Transport,
    conn: Connection,
    *,
    admit: Callable[[], None] | None = None,
    on_hello: Callable[[HelloReceived], None] | None = None,
    eager_confirm: bool = True,
) -> HandshakeComplete:
    """Exchange handshake frames over ``transport`` until ``conn`` completes.

    A fresh session is confirmed at once (the participant's ClientFinish, the
    venue's first authenticated frame) to take a scheduling round off the
    connect path; after a resume, the session's writer sends that together
    with the retransmission that must follow it.  With a durable store
    (``eager_confirm=False``) the writer sends it, once the new session is
    stored: a peer must never hold a session we could forget.

    Raises the typed error of a refusal (a received REJECT/CLOSE), of a hook,
    or of an invalid frame.
    """
    first = True
    while True:
        for frame in conn.data_to_send():
            await transport.send(frame)
        frame = await transport.receive()
        if first and admit is not None:
            admit()
        first = False
        for event in conn.receive_data(frame):
            if type(event) is HandshakeComplete:
                if eager_confirm and not event.resumed:
                    for out in conn.data_to_send():
                        await transport.send(out)
                return event
            if type(event) is HelloReceived and on_hello is not None:
                on_hello(event)
            elif type(event) is CloseReceived:
                raise event.to_error()
            else:
                raise RemoteProtocolError(
                    f"unexpected {type(event).__name__} during the handshake", remote=True
                )
