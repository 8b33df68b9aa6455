"""The feed's one way onto the wire: pre-encoded text frames written straight to a socket's transport.

aiohttp's ``send_str`` builds, and with compression deflates, every frame for every socket; the
hub instead encodes an event once (:func:`webgate.feed.frames.text_frame`) and writes the same bytes
to each subscriber, all frames of a stream read in one ``transport.write`` (measured faster: the
feed benchmark's fan-out). That is only correct under conditions :class:`FrameWriter` checks when
it is made, for the socket it is made for:

- **server side**: an aiohttp :class:`~aiohttp.web.WebSocketResponse`, so frames are not masked
  (RFC 6455 5.1: only clients mask);
- **no compression negotiated** (``ws.compress`` is 0): the frames' RSV1 bit is clear and their
  payload is the JSON as is; with permessage-deflate a raw frame would be a protocol error;
- **prepared**, with a live transport;
- **whole text frames only** (FIN set, opcode 1, never fragmented), each written with one
  ``transport.write``, so they never interleave with aiohttp's own frames (its pings, pongs and the
  close), which it also writes whole and synchronously when it does not compress.

When one does not hold (e.g. a client negotiated permessage-deflate on a WebSocketResponse made
with compression), the writer falls back to ``ws.send_str`` for each frame's payload, in order, from
one sending task: slower, still correct. Closing goes through aiohttp too (:meth:`FrameWriter.close`),
with ``WSCloseCode`` for the standard codes and the vocabulary's :class:`~tracker.vocabulary.CloseCode`
for the feed's own (4000-4999).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque
from collections.abc import Iterator

from aiohttp import WSCloseCode, web

from tracker.vocabulary import CloseCode

__all__ = ["FrameWriter", "payloads", "close_code"]

logger = logging.getLogger("webgate.feed.wire")

_FIN_TEXT = 0x81


def payloads(data: bytes) -> Iterator[bytes]:
    """The payloads of the concatenated unmasked text frames in ``data`` (the fallback's input)."""
    view = memoryview(data)
    at, end = 0, len(data)
    while at < end:
        if view[at] != _FIN_TEXT or view[at + 1] & 0x80:
            raise ValueError("not an unmasked, whole text frame")
        n = view[at + 1]
        at += 2
        if n == 126:
            n, at = int.from_bytes(view[at:at + 2]), at + 2
        elif n == 127:
            n, at = int.from_bytes(view[at:at + 8]), at + 8
        yield bytes(view[at:at + n])
        at += n


def close_code(code: int) -> WSCloseCode | CloseCode:
    """``code`` as aiohttp's ``WSCloseCode`` when it is a standard one, else as the feed's ``CloseCode``."""
    if code < 4000:
        return WSCloseCode(int(code))
    return CloseCode(int(code))


class FrameWriter:
    """Writes pre-encoded text frames to one server-side WebSocket; see the module for the preconditions."""

    __slots__ = ("ws", "transport", "raw", "reason", "_queue", "_queued", "_sender")

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.Transport | None) -> None:
        self.ws = ws
        #: Why the raw path is off (None: it is on).
        self.reason = self._precondition_failed(ws, transport)
        self.raw = self.reason is None
        self.transport = transport
        #: The fallback's payloads not yet sent (made on first use: an empty deque is ~760 bytes, and
        #: there is one writer per connection).
        self._queue: deque[bytes] | None = None
        self._queued = 0
        self._sender: asyncio.Task[None] | None = None
        if not self.raw:
            logger.debug("feed: frames go through aiohttp's send_str (%s)", self.reason)

    @staticmethod
    def _precondition_failed(ws: web.WebSocketResponse, transport: asyncio.Transport | None) -> str | None:
        if not isinstance(ws, web.WebSocketResponse):
            return "not a server-side WebSocket"
        if not ws.prepared:
            return "the WebSocket is not prepared"
        if ws.compress:
            return f"permessage-deflate negotiated (wbits {ws.compress})"
        if transport is None or transport.is_closing():
            return "no live transport"
        return None

    # -- writing -----------------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Write whole text frames (:func:`webgate.feed.frames.text_frame`, one or several joined)."""
        if self.raw:
            self.transport.write(data)  # type: ignore[union-attr]  # raw implies a transport
            return
        if self._queue is None:
            self._queue = deque()
        for payload in payloads(data):
            self._queue.append(payload)
            self._queued += len(payload)
        if self._sender is None:
            self._sender = asyncio.ensure_future(self._send())

    async def _send(self) -> None:
        queue = self._queue
        assert queue is not None  # made by write() before it starts the sender
        try:
            while queue:
                payload = queue.popleft()
                self._queued -= len(payload)
                await self.ws.send_str(payload.decode())
        except (ConnectionError, RuntimeError) as exc:  # closed under us: what is left is dropped with it
            logger.debug("feed: send_str stopped: %s", exc)
            queue.clear()
            self._queued = 0
        finally:
            self._sender = None

    def buffered(self) -> int:
        """Bytes written but not yet sent (the transport's buffer, plus the fallback's queue)."""
        transport = self.transport
        size = transport.get_write_buffer_size() if transport is not None else 0
        return size + self._queued

    def is_closing(self) -> bool:
        transport = self.transport
        return transport is None or transport.is_closing() or self.ws.closed

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def set_send_buffer(self, size: int) -> None:
        """SO_SNDBUF of the socket (0: leave the kernel's autotuning)."""
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if size > 0 and sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)

    # -- closing ----------------------------------------------------------------------------------
    async def close(self, code: WSCloseCode | CloseCode, message: str = "", *, drain: bool = True) -> None:
        """Close through aiohttp (after the fallback's queued frames); a peer already gone is no error."""
        if self._sender is not None:
            with contextlib.suppress(Exception):
                await self._sender
        try:
            await self.ws.close(code=close_code(code), message=message.encode(), drain=drain)
        except Exception:  # the peer may already be gone
            pass
