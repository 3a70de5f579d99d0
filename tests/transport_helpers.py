"""A ``serve_transport`` server for the transport tests, and the handlers they use."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import trio

from trio_session._errors import SessionError
from trio_session._transport import Transport, TransportLimits, TransportServer, serve_transport

from ._certs import tls_contexts

__all__ = ["echo", "serving", "start_serving"]


async def echo(transport: Transport) -> None:
    """Send every message back until the connection ends."""
    try:
        while True:
            await transport.send(await transport.receive())
    except SessionError:
        pass


async def start_serving(
    nursery: trio.Nursery,
    handler: Callable[[Transport], Awaitable[None]] = echo,
    *,
    limits: TransportLimits | None = None,
    handshake_timeout: float = 5.0,
    tls: bool = False,
    max_message_size: int = 2**20,
) -> TransportServer:
    """Start ``serve_transport`` on 127.0.0.1 in ``nursery``."""
    server: TransportServer = await nursery.start(
        partial(
            serve_transport,
            handler,
            "127.0.0.1",
            0,
            ssl_context=tls_contexts().server if tls else None,
            handshake_timeout=handshake_timeout,
            max_message_size=max_message_size,
            limits=limits,
        )
    )
    return server


@asynccontextmanager
async def serving(
    handler: Callable[[Transport], Awaitable[None]] = echo, **options: Any
) -> AsyncIterator[TransportServer]:
    """:func:`start_serving` for the duration of the block."""
    async with trio.open_nursery() as nursery:
        yield await start_serving(nursery, handler, **options)
        nursery.cancel_scope.cancel()
