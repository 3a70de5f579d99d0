"""The in-memory :class:`~trio_session._transport.Transport`: a connected pair on
Trio memory channels, for deterministic tests (no I/O, works with ``MockClock``).

This module is private; ``trio_session._transport`` re-exports it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import final

import attrs
import trio

from ._errors import ConnectionLost

__all__ = ["MemoryTransport", "memory_transport_pair"]


@attrs.define(eq=False)
class _MemoryLink:
    """State shared by the two ends of a memory pair."""

    broken: bool = False
    ends: list[MemoryTransport] = attrs.Factory(list)


@final
class MemoryTransport(trio.abc.AsyncResource):
    """One end of :func:`memory_transport_pair`: a :class:`Transport` on memory channels.

    Deterministic (no I/O, works with ``MockClock``).  Closing one end is a
    clean close: the peer receives what was already sent, then
    :class:`ConnectionLost` with the close code.  :meth:`break_` simulates an
    abrupt loss (a reset): undelivered messages are dropped and both ends
    raise :class:`ConnectionLost`.
    """

    __slots__ = (
        "_close_code",
        "_close_reason",
        "_closed",
        "_link",
        "_name",
        "_opened_at",
        "_receive_channel",
        "_send_channel",
    )

    def __init__(
        self,
        link: _MemoryLink,
        name: str,
        send_channel: trio.MemorySendChannel[bytes],
        receive_channel: trio.MemoryReceiveChannel[bytes],
    ) -> None:
        self._link = link
        self._name = name
        self._send_channel = send_channel
        self._receive_channel = receive_channel
        self._closed = False
        self._close_code: int | None = None
        self._close_reason = ""
        self._opened_at = trio.current_time()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<MemoryTransport {self._name} {state}>"

    @property
    def opened_at(self) -> float:
        return self._opened_at

    @property
    def remote_address(self) -> str:
        return "memory:" + ("b" if self._name == "a" else "a")

    @property
    def closed(self) -> bool:
        return self._closed or self._link.broken or self._peer()._closed

    def _peer(self) -> MemoryTransport:
        a, b = self._link.ends
        return b if a is self else a

    def _lost(self) -> ConnectionLost:
        if self._link.broken:
            return ConnectionLost("connection lost: link broken", remote=True)
        if self._closed:
            return ConnectionLost("transport closed locally")
        peer = self._peer()
        text = f"connection closed: code {peer._close_code}"
        if peer._close_reason:
            text += f" {peer._close_reason}"
        return ConnectionLost(text, remote=True)

    async def send(self, data: bytes) -> None:
        if self._closed or self._link.broken:
            await trio.lowlevel.checkpoint()
            raise self._lost()
        try:
            await self._send_channel.send(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise self._lost() from exc

    async def receive(self) -> bytes:
        try:
            return await self._receive_channel.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError) as exc:
            raise self._lost() from exc

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Close this end; the peer drains what was sent, then sees the close."""
        if not self._closed:
            self._closed = True
            self._close_code = code
            self._close_reason = reason
            self._send_channel.close()
            self._receive_channel.close()
        await trio.lowlevel.checkpoint()

    async def fail(self, code: int, reason: str = "") -> None:
        """Like :meth:`aclose`: a memory pair has no close handshake to skip."""
        await self.aclose(code, reason)

    def handshake_deadline(self, timeout: float) -> AbstractContextManager[object]:
        """``trio.fail_at(opened_at + timeout)``."""
        return trio.fail_at(self._opened_at + timeout)

    def mark_authenticated(self) -> None:
        """Nothing to release: a memory pair has no pre-authentication limits."""

    def break_(self) -> None:
        """Simulate an abrupt connection loss on both ends (synchronous)."""
        self._link.broken = True
        for end in self._link.ends:
            end._send_channel.close()
            end._receive_channel.close()

    abort = break_


def memory_transport_pair(*, capacity: int = 64) -> tuple[MemoryTransport, MemoryTransport]:
    """Return two connected :class:`MemoryTransport` ends.

    Args:
        capacity: messages buffered per direction before ``send`` blocks.
    """
    a_to_b_send, a_to_b_receive = trio.open_memory_channel[bytes](capacity)
    b_to_a_send, b_to_a_receive = trio.open_memory_channel[bytes](capacity)
    link = _MemoryLink()
    a = MemoryTransport(link, "a", a_to_b_send, b_to_a_receive)
    b = MemoryTransport(link, "b", b_to_a_send, a_to_b_receive)
    link.ends.extend((a, b))
    return a, b
