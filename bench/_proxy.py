"""A minimal TCP proxy that can reset every connection through it (for the recovery bench).

``trio_session.testing`` has no fault-injecting proxy yet, so the bench carries
this one.  :meth:`ResetProxy.reset_all` aborts both legs of every connection
with a TCP RST (``SO_LINGER`` 0 then close), as a crashed middlebox or a pulled
cable that the kernel notices would: the participant and the venue both see the
connection break at once, and buffered bytes in flight are lost.
"""

from __future__ import annotations

import contextlib
import socket
import struct

import attrs
import trio

_LINGER_RESET = struct.pack("ii", 1, 0)


@attrs.define(eq=False)
class _Pair:
    downstream: trio.SocketStream
    upstream: trio.SocketStream
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)


class ResetProxy:
    """Forward 127.0.0.1:<port> to ``target``; ``reset_all()`` RSTs every connection."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.connections = 0
        self._pairs: set[_Pair] = set()

    async def run(self, *, task_status: trio.TaskStatus[ResetProxy]) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._handle, listeners)
            task_status.started(self)

    def reset_all(self) -> int:
        """Abort every proxied connection with a TCP RST on both legs; returns how many."""
        pairs = list(self._pairs)
        for pair in pairs:
            for stream in (pair.downstream, pair.upstream):
                with contextlib.suppress(OSError):
                    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            pair.scope.cancel()
        return len(pairs)

    async def _handle(self, downstream: trio.SocketStream) -> None:
        try:
            upstream = await trio.open_tcp_stream(*self.target)
        except OSError:
            await downstream.aclose()
            return
        self.connections += 1
        pair = _Pair(downstream, upstream)
        self._pairs.add(pair)
        try:
            with pair.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_pump, downstream, upstream, pair.scope)
                    nursery.start_soon(_pump, upstream, downstream, pair.scope)
        finally:
            self._pairs.discard(pair)
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(downstream)
                await trio.aclose_forcefully(upstream)


async def _pump(src: trio.SocketStream, dst: trio.SocketStream, scope: trio.CancelScope) -> None:
    try:
        while True:
            data = await src.receive_some(65536)
            if not data:
                break
            await dst.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    scope.cancel()  # one leg ended: end the other (the close propagates as FIN)
